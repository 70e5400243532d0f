"""Renders a `TimelineReport` (`gradtool report RUN.jsonl`) as rich tables, in the look of
`gradtool.render`. It formats; every number and every conflict flag comes from
`gradtool.analysis.timeline`.

Trends are sparklines of the report's downsampled series, scaled to each row's own range (the
min / max columns give the numbers); a cosine bin the analysis flagged as a conflict is red.
A run recorded under DDP gets a gradient-noise table (its numbers from the analysis too).
Tables are split into blocks of columns where they do not fit the console's width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.text import Text

from gradtool.render.common import (
    CONFLICT_STYLE,
    EMPTY,
    Column,
    blocks_of,
    cos_text,
    fmt,
    header,
    inert,
    membership_lines,
    name_text,
    notes,
    print_verdict,
    printable,
    show,
    trend_style,
)
from gradtool.results.report import conflict_line
from gradtool.results.timeline import (
    LayerTimeline,
    LossTimeline,
    NoiseTimeline,
    PairTimeline,
    TimelineReport,
)

BARS = "▁▂▃▄▅▆▇█"
MANY_LOSSES = 8  # beyond this many losses, the pairs most in conflict replace the pair table
MAX_WEIGHT_COLUMNS = 7  # beyond MANY_LOSSES losses, the MGDA table shows the heaviest losses


def render_timeline(report: TimelineReport, console: Console, *, top: bool | None = None) -> None:
    """Print the timeline's tables to `console`: header, pairs, norms, MGDA weights, loss groups,
    layers, gradient noise (DDP runs).

    The pairs most often in conflict (`report.top_pairs`) replace the table of every pair where
    `top` is True, or, by default (None), beyond MANY_LOSSES losses.
    """
    show(console, _header(report, console))
    m = len(report.losses)
    ranked = (m > MANY_LOSSES if top is None else top) and bool(report.top_pairs)
    if ranked:
        show(console, _top_pairs_table(report, console))
    elif report.pairs:
        show(console, _pairs_table(report, report.pairs, console))
    show(console, _norms_table(report, report.loss_trends, console))
    if report.mgda_rows and len(report.losses) >= 2:
        show(console, _mgda_table(report, console))
    if report.loss_groups is not None:
        show(console, _loss_groups_tables(report, console))
    layers = _layers_table(report, console)
    if layers is not None:
        show(console, layers)
    if report.noise is not None:
        show(console, _noise_table(report.noise, report.num_records, console))
    print_verdict(console, report.verdict)


def sparkline(
    values: Sequence[float | None],
    *,
    log: bool = False,
    conflict: Sequence[bool] | None = None,
) -> Text:
    """Return `values` as block characters scaled to their own min..max (log10 scale if `log`);
    bins flagged in `conflict` are drawn in the conflict colour."""
    shown = [_scale(v, log) for v in values]
    finite = [v for v in shown if v is not None]
    text = Text()
    if not finite:
        return Text(EMPTY, style="dim")
    low, high = min(finite), max(finite)
    for k, v in enumerate(shown):
        if v is None:
            text.append(" ")
            continue
        level = 0 if high == low else round((v - low) / (high - low) * (len(BARS) - 1))
        text.append(BARS[level], style=trend_style(bool(conflict and conflict[k])))
    return text


def _scale(v: float | None, log: bool) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    if log:
        return math.log10(v) if v > 0 else None
    return v


def _header(report: TimelineReport, console: Console) -> Text:
    meta = report.meta
    parts = [
        f"{len(report.losses)} losses",
        f"{report.num_records} records",
        f"steps {report.first_step} to {report.last_step}",
    ]
    if meta.get("every"):
        parts.append(f"every {printable(str(meta['every']))}")
    if meta.get("sessions", 0) > 1:
        parts.append(f"{meta['sessions']} sessions (resumed)")
    extra = meta.get("metadata") or {}
    parts += [f"{inert(str(k))} {printable(str(v))}" for k, v in extra.items()]
    smooth = report.series_ema
    if smooth is not None:
        parts.append(f"EMA {smooth.alpha:g} (half-life {smooth.half_life:.3g} records)")
    return header(console, "report", report.source, parts)


def _ema_note(report: TimelineReport, what: str, then: str = "") -> list[str]:
    """Return the note saying that `what` ('cosines', 'norms') are smoothed, then `then`; none
    without an EMA."""
    smooth = report.series_ema
    if smooth is None:
        return []
    line = (
        f"{what}: EMA {smooth.alpha:g} over the records (half-life {smooth.half_life:.3g} "
        "records); raw series: --json"
    )
    return [f"{line}; {then}" if then else line]


def _pairs_table(
    report: TimelineReport,
    pairs: Sequence[PairTimeline],
    console: Console,
    title: str = "Gradient cosine over training",
) -> RenderableType:
    tau = report.conflict_threshold
    label = Column("pair", [Text(f"{inert(p.a)} ~ {inert(p.b)}") for p in pairs], justify="left")
    groups = [
        [
            Column("start", [cos_text(p.cos_start, p.start_conflict) for p in pairs]),
            Column("min", [cos_text(p.cos_min, p.min_conflict) for p in pairs]),
            Column("at", [Text(_step(p.step_min), style="dim") for p in pairs]),
            Column("max", [cos_text(p.cos_max, p.max_conflict) for p in pairs]),
            Column("end", [cos_text(p.cos_end, p.end_conflict) for p in pairs]),
        ],
        [
            Column("conflict", [_share(p.conflict_records, p.defined_records) for p in pairs]),
            Column("first", [_step(p.first_conflict_step) for p in pairs]),
        ],
        [
            Column(
                "trend",
                [sparkline(p.trend, conflict=p.trend_conflict) for p in pairs],
                justify="left",
            )
        ],
    ]
    tables = blocks_of(console, title, [label], groups)
    note = notes(
        console,
        f"conflict: records with cos < {conflict_line(tau)}, of those where the cosine is defined; "
        "first: the first such step; !: a cosine below the threshold",
        *_ema_note(report, "cosines", "conflicts judged on the smoothed cosine"),
    )
    return Group(*tables, note)


def _top_pairs_table(report: TimelineReport, console: Console) -> RenderableType:
    """Return the pairs most often in conflict (then of lowest mean cosine): the records in
    conflict, the mean, lowest and last cosine, the trend."""
    pairs = report.top_pairs
    tau = report.conflict_threshold
    total = len(report.pairs)
    label = Column("pair", [Text(f"{inert(p.a)} ~ {inert(p.b)}") for p in pairs], justify="left")
    groups = [
        [
            Column("conflict", [_share(p.conflict_records, p.defined_records) for p in pairs]),
            Column("first", [_step(p.first_conflict_step) for p in pairs]),
        ],
        [
            Column("mean", [cos_text(p.cos_mean, p.mean_conflict) for p in pairs]),
            Column("min", [cos_text(p.cos_min, p.min_conflict) for p in pairs]),
            Column("at", [Text(_step(p.step_min), style="dim") for p in pairs]),
            Column("end", [cos_text(p.cos_end, p.end_conflict) for p in pairs]),
        ],
        [
            Column(
                "trend",
                [sparkline(p.trend, conflict=p.trend_conflict) for p in pairs],
                justify="left",
            )
        ],
    ]
    title = f"Pairs most often in conflict ({len(pairs)} of {total})"
    tables = blocks_of(console, title, [label], groups)
    in_conflict = sum(1 for p in report.pairs if p.conflict_records)
    note = notes(
        console,
        f"{in_conflict} of the {total} pairs {'conflicts' if in_conflict == 1 else 'conflict'} "
        "in some record; every pair: pairs in --json; "
        "--top K lists K",
        f"conflict: records with cos < {conflict_line(tau)}, of those where the cosine is defined; "
        "first: the first such step; mean: the mean cosine over those records; ranked by "
        "conflict, then by mean",
        *_ema_note(report, "cosines", "conflicts judged on the smoothed cosine"),
    )
    return Group(*tables, note)


def _share(count: int, total: int) -> Text | str:
    """Return 'count/total (percent)', red when some record conflicts (`count` counts the
    records the analysis flagged)."""
    if total == 0:
        return EMPTY
    return Text(f"{count}/{total} ({count / total:.0%})", style=CONFLICT_STYLE if count else "")


def _step(step: int | None) -> str:
    return EMPTY if step is None else str(step)


def _norms_table(
    report: TimelineReport,
    trends: Sequence[LossTimeline],
    console: Console,
    title: str = "Gradient norms over training",
    what: str = "loss",
) -> RenderableType:
    label = Column(what, [name_text(t.name, "bold") for t in trends], justify="left")
    groups = [
        [
            Column(
                "value",
                [f"{fmt(t.value_start, 3)} -> {fmt(t.value_end, 3)}" for t in trends],
            )
        ],
        [
            Column("|g| start", [fmt(t.norm_start, 3) for t in trends]),
            Column("|g| end", [fmt(t.norm_end, 3) for t in trends]),
        ],
        [
            Column("|g| min", [fmt(t.norm_min, 3) for t in trends]),
            Column("|g| max", [fmt(t.norm_max, 3) for t in trends]),
            Column(
                "ratio",
                [EMPTY if t.norm_ratio is None else f"x{fmt(t.norm_ratio, 3)}" for t in trends],
            ),
        ],
        [Column("trend", [sparkline(t.trend, log=True) for t in trends], justify="left")],
    ]
    tables = blocks_of(console, title, [label], groups)
    note = notes(
        console,
        "value: the loss, first -> last record; ratio: |g| end / start; trend: log scale",
        *_ema_note(report, "norms"),
    )
    return Group(*tables, note)


def _mgda_table(report: TimelineReport, console: Console) -> RenderableType:
    """Return the MGDA weights at the sampled records, with their mean, min and max; beyond
    MANY_LOSSES losses, of the MAX_WEIGHT_COLUMNS losses of largest mean weight only."""
    names = report.losses
    rows = report.mgda_rows
    by_name = {w.name: w for w in report.mgda}
    lines = []
    if len(names) > MANY_LOSSES:
        heaviest = sorted(names, key=lambda n: -(by_name[n].mean or 0.0))[:MAX_WEIGHT_COLUMNS]
        names = [n for n in names if n in heaviest]
        lines.append(
            f"the {len(names)} of {len(report.losses)} losses of largest mean weight; every "
            "weight: mgda and series.mgda_weights in --json"
        )
    steps = [str(row.step) for row in rows]
    summary = ["mean", "min", "max"]
    label = Column(
        "step", [*steps, *(Text(s, style="dim") for s in summary)], justify="right", style="bold"
    )
    groups = [
        [
            Column(
                f"w {inert(name)}",
                [
                    *(_weight(row.weights[name]) for row in rows),
                    _weight(by_name[name].mean),
                    _weight(by_name[name].min),
                    _weight(by_name[name].max),
                ],
            )
        ]
        for name in names
    ]
    groups.append(
        [
            Column("min-norm |d|", [fmt(row.min_norm) for row in rows]),
            Column(
                "stationary",
                [Text("yes", style="bold yellow") if r.stationary else Text("no") for r in rows],
            ),
        ]
    )
    tables = blocks_of(
        console, "MGDA min-norm weights over training", [label], groups, section_after=len(rows) - 1
    )
    lines += _ema_note(report, "weights", "min-norm and stationary: each record's own")
    return Group(*tables, notes(console, *lines)) if lines else Group(*tables)


def _loss_groups_tables(report: TimelineReport, console: Console) -> RenderableType:
    """Return the loss groups over training: the cosine between the groups' summed gradients
    g_A = sum_{i in A} g_i (as the pairs table), their norms (as the norms table), and notes
    naming each group's losses and the losses in no group."""
    groups = report.loss_groups
    assert groups is not None
    parts: list[RenderableType] = []
    if groups.pairs:
        parts.append(
            _pairs_table(
                report, groups.pairs, console, "Loss groups: cosine of the summed gradients"
            )
        )
    parts.append(
        _norms_table(
            report, groups.trends, console, "Loss groups: norm of the summed gradients", "group"
        )
    )
    lines = ["g_A = the sum of the gradients of group A's losses; value: the sum of their values"]
    members = {name: groups.members[name] for name in groups.names}
    lines += membership_lines(members, groups.ungrouped, len(report.losses))
    parts.append(notes(console, *lines))
    return Group(*parts)


def _weight(w: float | None) -> str:
    return EMPTY if w is None else f"{w:.3f}"


def _worst_pair(report: TimelineReport, layer: LayerTimeline) -> Text | str:
    if layer.worst_pair_indices is None:
        return EMPTY
    i, j = layer.worst_pair_indices
    return Text(f"{inert(report.losses[i])} ~ {inert(report.losses[j])}")


def _layers_table(report: TimelineReport, console: Console) -> RenderableType | None:
    layers = report.layers
    if not layers or len(report.losses) < 2:
        return None
    tau = report.conflict_threshold
    keys = [
        Column("module", [name_text(x.name, "bold") for x in layers], justify="left"),
        Column("params", [f"{x.numel:,}" for x in layers]),
    ]
    groups = [
        [
            Column("conflict", [_layer_share(x) for x in layers]),
            Column(
                "mean low cos",
                [cos_text(x.mean_lowest_cos, x.mean_lowest_conflict) for x in layers],
            ),
            Column("first", [_step(x.first_conflict_step) for x in layers]),
        ],
        [
            Column("worst pair", [_worst_pair(report, x) for x in layers], justify="left"),
            Column(
                "mean cos",
                [
                    EMPTY
                    if x.worst_pair_mean_cos is None
                    else cos_text(x.worst_pair_mean_cos, x.worst_pair_conflict)
                    for x in layers
                ],
            ),
            Column(
                "its conflict",
                [
                    EMPTY if x.worst_pair_fraction is None else f"{x.worst_pair_fraction:.0%}"
                    for x in layers
                ],
            ),
        ],
    ]
    tables = blocks_of(console, "Layers: where conflict concentrates", keys, groups)
    note = notes(
        console,
        f"conflict: records where some pair has cos < {conflict_line(tau)}, of those where it is "
        "defined; mean low cos: mean of the lowest pairwise cosine; worst pair: the lowest mean "
        "cosine",
    )
    return Group(*tables, note)


def _layer_share(layer: LayerTimeline) -> Text | str:
    if layer.records == 0:  # fewer than two losses have a gradient here: no cosine
        return Text("no pair", style="dim")
    return _share(layer.conflict_records, layer.records)


def _noise_table(noise: NoiseTimeline, total: int, console: Console) -> RenderableType:
    """Return the gradient-noise table of a DDP run: per loss the mean signal |g|^2, the noise of
    one rank's batch, its share, the noise scale N/S (x one rank's batch), the last record's;
    `total`: the run's records."""
    rows = noise.rows
    label = Column("loss", [name_text(r.name, "bold") for r in rows], justify="left")
    groups = [
        [
            Column("signal |g|^2", [fmt(r.signal, 3) for r in rows]),
            Column("noise (1 rank)", [fmt(r.noise, 3) for r in rows]),
            Column("share", [_percent(r.noise_share) for r in rows]),
        ],
        [
            Column("noise scale", [_times(r.noise_scale) for r in rows]),
            Column(f"at step {noise.last_step}", [_times(r.noise_scale_end) for r in rows]),
        ],
    ]
    ranks = f"{noise.world} rank" + ("" if noise.world == 1 else "s")
    tables = blocks_of(console, f"Gradient noise (DDP, {ranks})", [label], groups)
    shown = f"{noise.records}" if noise.records == total else f"{noise.records} of {total}"
    note = notes(
        console,
        f"mean over the {shown} records with a rank-local Gramian; R ranks; "
        "G / L: |g|^2 of the global / one rank's batch",
        "signal: (R G - L)/(R - 1); noise: R (L - G)/(R - 1) = tr(Sigma)/b, one rank's batch b; "
        "share: noise / (noise + signal)",
        "noise scale: noise / signal = B_simple / b (McCandlish et al. 2018); "
        f"above {noise.world}: the global batch is below it; --: signal <= 0 (noise dominates)",
    )
    return Group(*tables, note)


def _times(x: float | None) -> str:
    return EMPTY if x is None else f"{fmt(x, 3)}x"


def _percent(x: float | None) -> str:
    return EMPTY if x is None else f"{x:.0%}"
