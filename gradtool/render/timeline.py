"""Renders a `TimelineReport` (`gradtool report RUN.jsonl`) as rich tables, in the look of
`gradtool.render`. It formats; every number comes from `gradtool.timeline`.

Trends are sparklines of the report's downsampled series, scaled to each row's own range (the
min / max columns give the numbers); a cosine bin below 0 is drawn red and marked in the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradtool.render.common import EMPTY, cos_style, cos_text, fmt, header, print_verdict
from gradtool.results.timeline import LayerTimeline, TimelineReport

BARS = "▁▂▃▄▅▆▇█"


def render_timeline(report: TimelineReport, console: Console) -> None:
    """Print the timeline's tables to `console`: header, pairs, norms, MGDA weights, layers."""
    console.print(_header(report))
    if report.pairs:
        console.print(_pairs_table(report))
    console.print(_norms_table(report))
    if report.mgda_rows and len(report.losses) >= 2:
        console.print(_mgda_table(report))
    layers = _layers_table(report)
    if layers is not None:
        console.print(layers)
    print_verdict(console, report.verdict)


def sparkline(values: Sequence[float | None], *, log: bool = False, signed: bool = False) -> Text:
    """Return `values` as block characters scaled to their own min..max (log10 scale if `log`);
    with `signed`, negative values are drawn in the conflict colour."""
    shown = [_scale(v, log) for v in values]
    finite = [v for v in shown if v is not None]
    text = Text()
    if not finite:
        return Text(EMPTY, style="dim")
    low, high = min(finite), max(finite)
    for raw, v in zip(values, shown, strict=True):
        if v is None:
            text.append(" ")
            continue
        level = 0 if high == low else round((v - low) / (high - low) * (len(BARS) - 1))
        style = cos_style(raw) if signed else "cyan"
        text.append(BARS[level], style=style)
    return text


def _scale(v: float | None, log: bool) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    if log:
        return math.log10(v) if v > 0 else None
    return v


def _header(report: TimelineReport) -> Text:
    meta = report.meta
    parts = [
        f"{len(report.losses)} losses",
        f"{report.num_records} records",
        f"steps {report.first_step} to {report.last_step}",
    ]
    if meta.get("every"):
        parts.append(f"every {meta['every']}")
    if meta.get("sessions", 0) > 1:
        parts.append(f"{meta['sessions']} sessions (resumed)")
    text = header("report", report.source, parts)
    extra = meta.get("metadata") or {}
    if extra:
        text.append("\n" + " · ".join(f"{k} {v}" for k, v in extra.items()), style="dim")
    return text


def _pairs_table(report: TimelineReport) -> Table:
    table = Table(
        title="Gradient cosine over training (conflict: records with cos < 0; first: the first "
        "such step)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("pair", no_wrap=True)
    for col in ("start", "min", "at", "max", "end", "conflict", "first"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("trend", justify="left", no_wrap=True)
    for p in report.pairs:
        frac = p.conflict_fraction
        table.add_row(
            f"{p.a} ~ {p.b}",
            cos_text(p.cos_start),
            cos_text(p.cos_min),
            Text(EMPTY if p.step_min is None else str(p.step_min), style="dim"),
            cos_text(p.cos_max),
            cos_text(p.cos_end),
            EMPTY if frac is None else Text(f"{frac:.0%}", style="bold red" if frac else ""),
            EMPTY if p.first_conflict_step is None else str(p.first_conflict_step),
            sparkline(p.trend, signed=True),
        )
    return table


def _norms_table(report: TimelineReport) -> Table:
    table = Table(
        title="Gradient norms over training (value: loss first -> last; ratio: |g| end / start; "
        "trend: log)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("loss", style="bold", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    for col in ("|g| start", "|g| end", "|g| min", "|g| max", "ratio"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("trend", justify="left", no_wrap=True)
    for t in report.loss_trends:
        table.add_row(
            t.name,
            f"{fmt(t.value_start, 3)} -> {fmt(t.value_end, 3)}",
            fmt(t.norm_start, 3),
            fmt(t.norm_end, 3),
            fmt(t.norm_min, 3),
            fmt(t.norm_max, 3),
            EMPTY if t.norm_ratio is None else f"x{fmt(t.norm_ratio, 3)}",
            sparkline(t.trend, log=True),
        )
    return table


def _mgda_table(report: TimelineReport) -> Table:
    names = report.losses
    table = Table(
        title="MGDA min-norm weights over training", box=box.SIMPLE_HEAD, title_justify="left"
    )
    table.add_column("step", justify="right", style="bold")
    for name in names:
        table.add_column(f"w {name}", justify="right")
    table.add_column("min-norm |d|", justify="right")
    table.add_column("stationary", justify="right")
    for row in report.mgda_rows:
        table.add_row(
            str(row.step),
            *[_weight(row.weights[name]) for name in names],
            fmt(row.min_norm),
            Text("yes", style="bold yellow") if row.stationary else Text("no"),
        )
    by_name = {w.name: w for w in report.mgda}
    table.add_section()
    table.add_row(Text("mean", style="dim"), *[_weight(by_name[n].mean) for n in names], "", "")
    table.add_row(
        Text("range", style="dim"),
        *[f"{_weight(by_name[n].min)} to {_weight(by_name[n].max)}" for n in names],
        "",
        "",
    )
    return table


def _weight(w: float | None) -> str:
    return EMPTY if w is None else f"{w:.3f}"


def _worst_pair(layer: LayerTimeline) -> Text | str:
    if layer.worst_pair is None:
        return EMPTY
    text = Text(layer.worst_pair.replace("~", " ~ ") + " ")
    text += cos_text(layer.worst_pair_mean_cos)
    text += Text(f" {layer.worst_pair_fraction or 0.0:.0%}", style="dim")
    return text


def _layers_table(report: TimelineReport) -> Table | None:
    if not report.layers or len(report.losses) < 2:
        return None
    table = Table(
        title="Layers: where conflict concentrates (conflict: records where some pair has cos < 0)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("module", style="bold", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("conflict", justify="right", no_wrap=True)
    table.add_column("mean low cos", justify="right", no_wrap=True)
    table.add_column("first", justify="right", no_wrap=True)
    table.add_column("worst pair: mean cos, conflict", justify="left", no_wrap=True)
    for layer in report.layers:
        if layer.records == 0:
            table.add_row(
                layer.name,
                f"{layer.numel:,}",
                Text("1 loss", style="dim"),
                EMPTY,
                EMPTY,
                EMPTY,
            )
            continue
        frac = layer.conflict_fraction or 0.0
        table.add_row(
            layer.name,
            f"{layer.numel:,}",
            Text(f"{frac:.0%}", style="bold red" if frac else ""),
            cos_text(layer.mean_lowest_cos),
            EMPTY if layer.first_conflict_step is None else str(layer.first_conflict_step),
            _worst_pair(layer),
        )
    return table
