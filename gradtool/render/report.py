"""Renders a `Report` as rich tables. It formats; it never computes a statistic.

Conflicts (cos < 0) are red, agreement green; the pairwise matrix is a compact heat grid. Colour
follows rich's detection (NO_COLOR, non-TTY); conflicts are also marked in text for plain output.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from gradtool.render.common import (
    EMPTY,
    cos_text,
    fmt,
    header,
    print_verdict,
    problem_parts,
    yes_no,
)
from gradtool.results.report import LayerStats, Report

MAX_PAIR_COLUMNS = 6
MAX_UNUSED_LISTED = 8
MAX_LOSSES_ACROSS = 4  # beyond this many losses, per-loss columns become rows


def render_report(report: Report, console: Console, *, verbose: bool = False) -> None:
    """Print the report's tables to `console`: header, losses, pairs, layers, unused, Pareto.

    A Pareto report shows the losses, the cosine grid and the Pareto table only (the JSON
    document still holds everything).
    """
    console.print(_header(report, verbose))
    console.print(_losses_table(report))
    full = report.pareto is None  # `pareto` shows its own table; layers and unused are inspect's
    if len(report.losses) >= 2:
        console.print(_cosine_grid(report))
        if full:
            console.print(_pairs_table(report))
    if full:
        console.print(_layers_table(report))
        unused = _unused_table(report)
        if unused is not None:
            console.print(unused)
    if report.pareto is not None:
        console.print(_pareto_table(report))
    if methods_shown(report):
        console.print(methods_table(report))
    print_verdict(console, report.verdict)


def _header(report: Report, verbose: bool) -> Text:
    meta = report.meta
    parts = problem_parts(len(report.losses), report.parameters, report.num_batches)
    parts.append(f"device {meta.get('device', 'cpu')}")
    text = header(report.command, str(meta.get("gradfile", "")), parts)
    if verbose:
        text.append(f"\nstrategy {meta.get('strategy')}", style="dim")
        if meta.get("fallback_reason"):
            text.append(f" ({meta['fallback_reason']})", style="dim")
    return text


def _losses_table(report: Report) -> Table:
    table = Table(title="Losses", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("loss", style="bold")
    table.add_column("value", justify="right")
    table.add_column("|g|", justify="right")
    table.add_column("max |g_k|", justify="right")
    table.add_column("unused params", justify="right")
    count = report.parameters["count"]
    for name in report.losses:
        g = report.gradients[name]
        unused = len(report.unused[name])
        table.add_row(
            name,
            fmt(report.loss_values[name]),
            fmt(g.norm),
            fmt(g.max_abs),
            f"{unused}/{count}" if unused else EMPTY,
        )
    return table


def _cosine_grid(report: Report) -> Table:
    names = report.losses
    table = Table(
        title="Gradient cosine (red: conflict)",
        box=box.SIMPLE,
        title_justify="left",
        padding=(0, 1),
    )
    table.add_column("", style="bold")
    for j, name in enumerate(names):
        table.add_column(f"[{j}] {name}" if len(names) <= 4 else f"[{j}]", justify="right")
    for i, name in enumerate(names):
        cells = [cos_text(report.cosine[i][j], mark=i != j) for j in range(len(names))]
        table.add_row(f"[{i}] {name}", *cells)
    return table


def _pairs_table(report: Report) -> Table:
    names = report.losses
    m = len(names)
    stats = report.batch_stats
    table = Table(title="Pairs", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("pair", "cos", "angle", "dot", "magnitude sim."):
        table.add_column(col, justify="left" if col == "pair" else "right")
    if stats is not None:
        table.add_column("cos over batches", justify="right")
        table.add_column("batches in conflict", justify="right")
    for i in range(m):
        for j in range(i + 1, m):
            c = report.cosine[i][j]
            angle = report.angle_deg[i][j]
            row: list[str | Text] = [
                f"{names[i]} ~ {names[j]}",
                cos_text(c),
                EMPTY if angle is None else f"{angle:.1f}°",
                fmt(report.dot[i][j]),
                _unit(report.magnitude_similarity[i][j]),
            ]
            if stats is not None:
                mean, std = stats.cosine_mean[i][j], stats.cosine_std[i][j]
                frac = stats.conflict_fraction[i][j]
                row.append(EMPTY if mean is None else f"{mean:+.2f} ± {fmt(std, 2)}")
                row.append(EMPTY if frac is None else f"{frac:.0%}")
            table.add_row(*row)
    return table


def _unit(x: float | None) -> str:
    return EMPTY if x is None else f"{x:.3f}"


def _pair_columns(names: Sequence[str]) -> list[tuple[int, int]]:
    m = len(names)
    return [(i, j) for i in range(m) for j in range(i + 1, m)]


def _layers_table(report: Report) -> Table:
    names = report.losses
    pairs = _pair_columns(names)
    depth = report.depth
    title = "Layers" + (f" (depth {depth})" if depth is not None else "")
    norm_columns = len(names) <= MAX_LOSSES_ACROSS
    if not norm_columns:
        title += ", norms per loss in --json"
    elif len(names) > 2:
        title += ": " + ", ".join(f"[{k}] {name}" for k, name in enumerate(names))
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_footer=True)
    table.add_column("module", footer="total", style="bold", no_wrap=True)
    table.add_column("params", justify="right", footer=f"{report.parameters['numel']:,}")
    totals = {name: report.gradients[name].norm for name in names}
    for k, name in enumerate(names if norm_columns else []):
        label = f"|g| {name}" if len(names) <= 2 else f"|g| [{k}]"
        table.add_column(label, justify="right", footer=fmt(totals[name]))
    few = len(pairs) <= MAX_PAIR_COLUMNS
    if few:
        for i, j in pairs:
            table.add_column(
                f"cos {i}~{j}", justify="right", footer=_footer_cos(report.cosine[i][j])
            )
    elif pairs:
        table.add_column("lowest cos (pair)", justify="right")
    for layer in report.layers:
        row: list[str | Text] = [layer.name, f"{layer.numel:,}"]
        row += [
            fmt(layer.norms[name]) if layer.reached.get(name, True) else EMPTY
            for name in (names if norm_columns else [])
        ]
        if few:
            row += [cos_text(layer.cosine[i][j]) for i, j in pairs]
        elif pairs:
            row.append(_lowest_pair(layer))
        table.add_row(*row)
    return table


def _footer_cos(c: float | None) -> str:
    return EMPTY if c is None else f"{c:+.2f}"


def _lowest_pair(layer: LayerStats) -> Text:
    if layer.lowest_pair is None:
        return Text(EMPTY, style="dim")
    i, j = layer.lowest_pair
    return cos_text(layer.cosine[i][j]) + Text(f" ({i}~{j})", style="dim")


def _unused_table(report: Report) -> Table | None:
    rows = [(name, params) for name, params in report.unused.items() if params]
    if not rows:
        return None
    table = Table(
        title="Unused parameters (no autograd path from the loss)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("loss", style="bold")
    table.add_column("count", justify="right")
    table.add_column("parameters")
    for name, params in rows:
        table.add_row(name, str(len(params)), _folded(params, report.layers))
    if report.unreached:
        table.add_row(
            Text("(every loss)", style="yellow"),
            str(len(report.unreached)),
            _folded(report.unreached, report.layers),
        )
    return table


def _folded(params: Sequence[str], layers: Sequence[LayerStats]) -> str:
    """Return the names joined, a whole module shown as 'module.*', at most a few listed."""
    wanted = set(params)
    labels: list[str] = []
    covered: set[str] = set()
    for layer in layers:
        if len(layer.parameters) > 1 and set(layer.parameters) <= wanted:
            labels.append(f"{layer.name}.*")
            covered.update(layer.parameters)
    labels += [p for p in params if p not in covered]
    shown = ", ".join(labels[:MAX_UNUSED_LISTED])
    if len(labels) > MAX_UNUSED_LISTED:
        shown += f", … and {len(labels) - MAX_UNUSED_LISTED} more (see --json)"
    return shown


def _pareto_table(report: Report) -> Group:
    p = report.pareto
    assert p is not None
    normalized = p.normalize != "none"
    title = f"Pareto: {p.method.upper()} min-norm weights"
    if normalized:
        title += f" (gradients normalised by {p.normalize})"
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("loss", style="bold")
    table.add_column("weight", justify="right")
    if normalized:
        table.add_column("weight on raw loss", justify="right")
    table.add_column("(G w)_i  decrease rate", justify="right")
    table.add_column("along d", justify="left")
    for name in report.losses:
        rate = p.directional_derivatives[name]
        effect = (
            Text("decreases", style="green")
            if rate > 0
            else Text("flat", style="yellow")
            if rate == 0
            else Text("increases", style="bold red")
        )
        row: list[str | Text] = [name, fmt(p.weights[name])]
        if normalized:
            row.append(fmt(p.loss_weights[name]))
        row += [fmt(rate), effect]
        table.add_row(*row)
    summary = Text()
    summary.append("min-norm |d| = ", style="dim")
    summary.append(fmt(p.min_norm))
    summary.append("   KKT residual ", style="dim")
    # below 1e-12 it is round-off, whose digits vary with the engine's summation order
    summary.append(f"{p.kkt_residual:.1e}" if p.kkt_residual >= 1e-12 else "< 1e-12")
    summary.append("   Pareto-stationary ", style="dim")
    summary.append("yes" if p.stationary else "no", style="bold yellow" if p.stationary else "")
    summary.append("   unique ", style="dim")
    summary.append("yes" if p.unique else "no", style="" if p.unique else "bold yellow")
    return Group(table, summary, Text(""))


# --- weighting methods side by side (`pareto --method/--compare`) ---------------------------------


def methods_shown(report: Report) -> bool:
    """Return whether the report lists methods beyond the default MGDA (its own table)."""
    return report.methods is not None and [r.method for r in report.methods] != ["mgda"]


def _rate_text(x: float | None) -> Text:
    """Return a decrease rate (G w)_i, red when negative (the loss increases)."""
    if x is None:
        return Text(EMPTY, style="dim")
    return Text(fmt(x, 3), style="bold red" if x < 0 else "")


def _legend(names: Sequence[str]) -> Text:
    return Text("  ".join(f"[{j}] {name}" for j, name in enumerate(names)), style="dim")


def methods_table(report: Report) -> Group:
    """Return the weighting methods side by side: weights, |d|, cos(d, g_i), (G w)_i, verdict."""
    results = report.methods or []
    names = report.losses
    m = len(names)
    normalize = results[0].normalize if results else "none"
    title = "Weighting methods: d = sum_i w_i g_i"
    if normalize != "none":
        title += f" (gradients normalised by {normalize}: d uses w_i / s_i)"
    if m > MAX_LOSSES_ACROSS:
        return _methods_by_loss(report, title)
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    table.add_column("method", style="bold", no_wrap=True)
    for j in range(m):
        table.add_column(f"w{j}", justify="right")
    table.add_column("|d|", justify="right")
    for j in range(m):
        table.add_column(f"cos{j}", justify="right")
    for j in range(m):
        table.add_column(f"Gw{j}", justify="right")
    table.add_column("lowers\nall", justify="left", no_wrap=True)
    for r in results:
        row: list[str | Text] = [r.method]
        row += [fmt(r.weights[name], 3) for name in names]
        row.append(fmt(r.norm, 3))
        row += [cos_text(r.cosine[name]) for name in names]
        row += [_rate_text(r.directional_derivatives[name]) for name in names]
        row.append(yes_no(r.decreases_all))
        table.add_row(*row)
    notes = [_legend(names)]
    notes.append(
        Text(
            "cos_i = cos(d, g_i) · Gw_i = (G w)_i = <g_i, d>: the first-order decrease rate of "
            "loss i along -d\nlowers all: every Gw_i >= 0, so a small step along -d raises no loss",
            style="dim",
        )
    )
    named = [f"{r.method} = {r.name}" for r in results if "(" in r.name]
    if named:
        notes.append(Text("; ".join(named), style="dim"))
    with_pref = [r for r in results if r.preference is not None]
    if with_pref:
        pref = ", ".join(f"{v:g}" for v in with_pref[0].preference.values())  # type: ignore[union-attr]
        users = ", ".join(r.method for r in with_pref)
        notes.append(Text(f"preference ({pref}) for {users}", style="dim"))
    return Group(table, *notes, Text(""))


def _methods_by_loss(report: Report, title: str) -> Group:
    """Return the methods table transposed (a row per loss, a column per method), for many
    losses: the weights w_i, then the decrease rates (G w)_i; cosines stay in the JSON."""
    results = report.methods or []
    tables = []
    for label, cell in (
        ("w_i", lambda r, name: fmt(r.weights[name], 3)),
        ("(G w)_i", lambda r, name: _rate_text(r.directional_derivatives[name])),
    ):
        table = Table(
            title=f"{title}: {label}" if label == "w_i" else f"decrease rates {label} = <g_i, d>",
            box=box.SIMPLE_HEAD,
            title_justify="left",
            show_footer=label != "w_i",
        )
        table.add_column("loss", style="bold", no_wrap=True, footer="lowers all")
        for r in results:
            table.add_column(r.method, justify="right", footer=yes_no(r.decreases_all))
        for name in report.losses:
            table.add_row(name, *[cell(r, name) for r in results])
        if label == "w_i":
            table.add_row(Text("|d|", style="dim"), *[fmt(r.norm, 3) for r in results])
        tables.append(table)
    note = Text(
        "(G w)_i: the first-order decrease rate of loss i along -d; lowers all: every (G w)_i >= 0",
        style="dim",
    )
    return Group(*tables, note, Text(""))
