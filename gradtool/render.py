"""Renders a `Report` as rich tables. It formats; it never computes a statistic.

Conflicts (cos < 0) are red, agreement green; the pairwise matrix is a compact heat grid. Colour
follows rich's detection (NO_COLOR, non-TTY); conflicts are also marked in text for plain output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from gradtool.report import AffinityReport, LayerStats, Report

EMPTY = "--"
MAX_PAIR_COLUMNS = 6
MAX_UNUSED_LISTED = 8
PIPED_WIDTH = 200
MAX_LOSSES_ACROSS = 4  # beyond this many losses, per-loss columns become rows


def fmt(x: float | None, digits: int = 4) -> str:
    """Return `x` in a compact fixed or scientific form; '--' for undefined."""
    if x is None:
        return EMPTY
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{max(digits - 2, 1)}e}"
    return f"{x:.{digits}g}"


def cos_style(c: float | None) -> str:
    """Return a heat colour for a cosine: deeper red towards -1, deeper green towards +1."""
    if c is None:
        return "dim"
    if c < 0:
        level = min(255, int(120 + 135 * min(1.0, -c)))
        return f"bold rgb({level},40,40)" if c < -0.1 else f"rgb({level},90,90)"
    level = min(255, int(110 + 145 * min(1.0, c)))
    return f"rgb(40,{level},70)"


def cos_text(c: float | None, mark: bool = True) -> Text:
    """Return a cosine as coloured text, with '!' after a conflict so it shows without colour."""
    label = EMPTY if c is None else f"{c:+.2f}"
    if mark and c is not None and c < 0:
        label += "!"
    return Text(label, style=cos_style(c))


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
    for line in report.verdict:
        console.print(Text("» ", style="bold") + Text(line))


def _header(report: Report, verbose: bool) -> Text:
    p = report.parameters
    meta = report.meta
    batches = f"{report.num_batches} batch" + ("es" if report.num_batches != 1 else "")
    parts = [
        f"{len(report.losses)} loss" + ("es" if len(report.losses) != 1 else ""),
        f"{p['count']} parameter tensors ({p['numel']:,} values)",
        batches,
        f"device {meta.get('device', 'cpu')}",
    ]
    text = Text(f"gradtool {report.command} ", style="bold")
    text.append(str(meta.get("gradfile", "")), style="cyan")
    text.append("\n" + " · ".join(parts), style="dim")
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


def make_console(*, stderr: bool = False) -> Console:
    """Return a console for the tables: no markup (loss names are shown as written), and piped
    output (without COLUMNS) as wide as the tables need, up to PIPED_WIDTH, not squeezed to 80."""
    console = Console(stderr=stderr, highlight=False, markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ and console.width < PIPED_WIDTH:
        console = Console(stderr=stderr, highlight=False, markup=False, width=PIPED_WIDTH)
    return console


# --- weighting methods side by side (`pareto --method/--compare`) and `affinity` ---------------


def methods_shown(report: Report) -> bool:
    """Return whether the report lists methods beyond the default MGDA (its own table)."""
    return report.methods is not None and [r.method for r in report.methods] != ["mgda"]


def _rate_text(x: float | None) -> Text:
    """Return a decrease rate (G w)_i, red when negative (the loss increases)."""
    if x is None:
        return Text(EMPTY, style="dim")
    return Text(fmt(x, 3), style="bold red" if x < 0 else "")


def _yes_no(flag: bool) -> Text:
    return Text("yes", style="green") if flag else Text("no", style="bold red")


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
        row.append(_yes_no(r.decreases_all))
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
            table.add_column(r.method, justify="right", footer=_yes_no(r.decreases_all))
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


def render_affinity(report: AffinityReport, console: Console, *, verbose: bool = False) -> None:
    """Print the affinity report: header, the m x m affinity grid, the method steps, verdict."""
    console.print(_affinity_header(report, verbose))
    console.print(_affinity_grid(report))
    if report.methods_step:
        console.print(_method_steps_table(report))
    for line in report.verdict:
        console.print(Text("» ", style="bold") + Text(line))


def _affinity_header(report: AffinityReport, verbose: bool) -> Text:
    p = report.parameters
    meta = report.meta
    batches = f"{report.num_batches} batch" + ("es" if report.num_batches != 1 else "")
    where = "evaluated on the next batch (holdout)" if report.holdout else "same batch"
    parts = [
        f"{len(report.losses)} loss" + ("es" if len(report.losses) != 1 else ""),
        f"{p['count']} parameter tensors ({p['numel']:,} values)",
        batches,
        f"lr {report.lr:g}",
        where,
        f"device {meta.get('device', 'cpu')}",
    ]
    text = Text(f"gradtool {report.command} ", style="bold")
    text.append(str(meta.get("gradfile", "")), style="cyan")
    text.append("\n" + " · ".join(parts), style="dim")
    if verbose:
        text.append(f"\nseed {meta.get('seed')}", style="dim")
    return text


def percent(x: float | None) -> str:
    """Return a fraction as a signed percentage with 3 significant digits ('--' if undefined)."""
    return EMPTY if x is None else f"{100 * x:+.3g}%"


def _signed_fmt(x: float) -> str:
    return ("+" if x > 0 else "") + fmt(x, 3)


def _affinity_cell(
    z: float | None,
    z1: float | None,
    change: float | None,
    change1: float | None,
    sep: str = " ",
) -> Text:
    """Return "measured% (first-order%)", the measured value coloured by its sign.

    Where the ratio is undefined (L_j <= 0) show the absolute decrease L_j(theta) - L_j(after)
    instead, marked "abs", with the same sign convention (positive: the step lowers L_j).
    `sep` goes between the two ("\n" stacks them).
    """
    if z is None and change is not None:
        drop = -change
        first = EMPTY if change1 is None else _signed_fmt(-change1)
        label = f"{_signed_fmt(drop)} abs" + ("!" if drop < 0 else "")
        style = "bold red" if drop < 0 else "green" if drop > 0 else ""
        return Text(label, style=style) + Text(f"{sep}({first})", style="dim")
    label = percent(z) + ("!" if z is not None and z < 0 else "")
    style = "dim" if z is None else "bold red" if z < 0 else "green" if z > 0 else ""
    return Text(label, style=style) + Text(f"{sep}({percent(z1)})", style="dim")


def _affinity_grid(report: AffinityReport) -> Group:
    names = report.losses
    table = Table(
        title=Text("Lookahead affinity Z[i->j], % of L_j"),
        box=box.SIMPLE,
        title_justify="left",
        padding=(0, 1),
    )
    table.add_column("step on", style="bold")
    for j, name in enumerate(names):
        table.add_column(f"[{j}] {name}", justify="right")
    for i, name in enumerate(names):
        cells = [
            _affinity_cell(
                report.affinity[i][j],
                report.affinity_first_order[i][j],
                report.loss_change[i][j],
                report.loss_change_first_order[i][j],
            )
            for j in range(len(names))
        ]
        table.add_row(f"[{i}] {name}", *cells)
    values = Text("L(theta): ", style="dim")
    values.append("  ".join(f"{name} {fmt(report.loss_values[name])}" for name in names))
    lines = [
        "Z[i->j] = 1 - L_j(theta - lr g_i) / L_j(theta); in parentheses its first order "
        "lr G_ij / L_j",
        "row i: one SGD step on loss i alone; column j: its effect on loss j "
        "(+ lowers it, - raises it)",
    ]
    if any(v is None for row in report.affinity for v in row):
        lines.append("abs: L_j <= 0, so the absolute decrease L_j(theta) - L_j(theta - lr g_i)")
    note = Text("\n".join(lines), style="dim")
    return Group(table, values, note, Text(""))


def _method_steps_table(report: AffinityReport) -> Group:
    names = report.losses
    table = Table(
        title="One step along each method's direction d, % of L_j",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("method", style="bold", no_wrap=True)
    table.add_column("weights", justify="right")
    for j, name in enumerate(names):
        table.add_column(f"[{j}] {name}", justify="right")
    table.add_column("lowers all", justify="left", no_wrap=True)
    for step in report.methods_step:
        weights = " ".join(fmt(step.weights[name], 3) for name in names)
        row: list[str | Text] = [step.method, weights]
        row += [
            _affinity_cell(
                step.affinity[name],
                step.affinity_first_order[name],
                step.loss_change[name],
                step.loss_change_first_order[name],
                sep="\n",
            )
            for name in names
        ]
        row.append(_yes_no(step.lowers_every_loss))
        table.add_row(*row)
    note = Text(
        "1 - L_j(theta - lr d) / L_j(theta), first order lr (G w)_j / L_j in parentheses;\n"
        "d = sum_k w_k g_k with w from each batch's Gramian (the mean w is shown)",
        style="dim",
    )
    return Group(table, note, Text(""))
