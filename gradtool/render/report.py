"""Renders a `Report` as rich tables. It formats; it never computes a statistic.

A cosine is red and marked '!' only where the analysis flagged a conflict (`Report.conflict` and
the like), and never when it prints as 0.00. Colour follows rich's detection (NO_COLOR, non-TTY);
the '!' shows conflicts in plain output too. Every layout is chosen from the console's width:
index headers with a legend, tables split into blocks of columns, so that no cell is cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.text import Text

from gradtool.render.common import (
    EMPTY,
    Column,
    blocks_of,
    cos_text,
    fits,
    fmt,
    header,
    inert,
    legend,
    membership_lines,
    name_text,
    notes,
    pack,
    print_verdict,
    problem_parts,
    selection_parts,
    show,
    table_of,
    titled,
    yes_no,
)
from gradtool.results.report import LayerStats, MethodResult, Report, TopPair, conflict_line

MAX_UNUSED_LISTED = 8
MAX_LOSSES_ACROSS = 4  # beyond this many losses, per-loss columns become rows
MAX_NAMED_HEADERS = 4  # up to this many losses, the cosine grid's headers carry the names
MAX_LABEL_SHARE = 3  # row labels may take up to 1/3 of the width before they become indices
MANY_LOSSES = 8  # beyond this many losses, the most conflicting pairs replace the pair table
MAX_GRID_LOSSES = 12  # beyond this many losses, the m x m cosine grid is left to --json / --plot


def render_report(
    report: Report, console: Console, *, verbose: bool = False, top: bool | None = None
) -> None:
    """Print the report's tables to `console`: header, losses, pairs, layers, unused, Pareto.

    A Pareto report shows the losses, the cosine grid and the Pareto table only (the JSON
    document still holds everything). The most conflicting pairs (`report.top_pairs`) replace
    the table of every pair where `top` is True, or, by default (None), beyond MANY_LOSSES
    losses; `pareto` shows them too. Beyond MAX_GRID_LOSSES losses the cosine grid is left out.
    """
    show(console, _header(report, console, verbose), _losses_table(report))
    full = report.pareto is None  # `pareto` shows its own table; layers and unused are inspect's
    m = len(report.losses)
    ranked = (m > MANY_LOSSES if top is None else top) and bool(report.top_pairs)
    if m >= 2:
        show(console, _cosine_grid(report, console))
        if ranked:
            show(console, _top_pairs_table(report, console))
        elif full:
            show(console, *_pairs_tables(report, console))
    if full:
        show(console, _layers_tables(report, console))
    if report.groups is not None:  # asked for by name: shown by `pareto` too
        show(console, _groups_tables(report, console))
    if report.loss_groups is not None:
        show(console, _loss_groups_table(report, console))
    if full:
        unused = _unused_table(report)
        if unused is not None:
            show(console, unused)
    if report.pareto is not None:
        show(console, _pareto_table(report, console))
    if methods_shown(report):
        show(console, methods_table(report, console))
    print_verdict(console, report.verdict)


def _header(report: Report, console: Console, verbose: bool) -> Text:
    meta = report.meta
    parts = problem_parts(len(report.losses), report.parameters, report.num_batches)
    parts.append(f"device {meta.get('device', 'cpu')}")
    spread = meta.get("distributed")
    if isinstance(spread, Mapping):
        parts.append(f"{spread.get('world')} ranks ({spread.get('backend')})")
    parts += selection_parts(meta)
    text = header(console, report.command, str(meta.get("gradfile", "")), parts)
    if verbose:
        text.append(f"\nstrategy {meta.get('strategy')}", style="dim")
        if meta.get("fallback_reason"):
            text.append(f" ({meta['fallback_reason']})", style="dim")
        for line in structured_lines(meta):
            text.append(f"\n{line}", style="dim")
    return text


def structured_lines(meta: Mapping[str, Any]) -> list[str]:
    """Return the structured engine's per-layer-class account from a document's meta."""
    info = meta.get("structured")
    if not isinstance(info, Mapping):
        return []
    parts, others = [], 0
    for kind, counts in info.get("paths", {}).items():
        rows, grads = counts.get("structured", 0), counts.get("gradient", 0)
        if kind == "other":
            others = rows + grads
        else:
            parts.append(f"{kind} {rows} of {rows + grads}")
    lines = [
        "Gramians from layer rows (no gradient formed), weights of: "
        + (", ".join(parts) or "no linear, convolution or embedding layer")
        + (f"; {others} other parameter tensors (biases, norms, ...) by their gradients")
    ]
    missed = info.get("not_covered") or {}
    if missed:
        shown = [f"{inert(name)} ({why})" for name, why in list(missed.items())[:4]]
        more = len(missed) - len(shown)
        tail = f"; and {more} more" if more else ""
        lines.append("weights by their gradients: " + "; ".join(shown) + tail)
    return lines


def _losses_table(report: Report) -> RenderableType:
    names = report.losses
    count = report.parameters["count"]
    grads = [report.gradients[name] for name in names]
    unused = [len(report.unused[name]) for name in names]
    table = table_of(
        [
            Column("loss", [name_text(n) for n in names], justify="left", style="bold"),
            Column("value", [fmt(report.loss_values[n]) for n in names]),
            Column("|g|", [fmt(g.norm) for g in grads]),
            *(
                [Column("max |g_k|", [fmt(g.max_abs) for g in grads])]
                # the structured engine forms no entries of the blocks it takes from layer rows
                if any(g.max_abs is not None or g.nonfinite for g in grads)
                else []
            ),
            Column("unused params", [f"{u}/{count}" if u else EMPTY for u in unused]),
        ]
    )
    if any(g.max_abs is None and not g.nonfinite for g in grads):
        note = Text(
            "max |g_k|: not formed where Gramians come from layer rows (the structured engine); "
            "--strategy loop forms it",
            style="dim",
        )
        return Group(titled("Losses", table), note)
    return titled("Losses", table)


def _threshold_note(report: Report) -> str:
    return f"! and red: a conflict, cos < {conflict_line(report.conflict_threshold)}"


def _cosine_grid(report: Report, console: Console) -> RenderableType:
    """Return the m x m cosine grid: names in the headers for a few losses where that fits, else
    index headers (the row labels give the names, or a legend where they would take more than a
    third of the width), split into blocks of columns where the grid does not fit."""
    names = report.losses
    m = len(names)
    title = "Gradient cosine"
    if m > MAX_GRID_LOSSES:
        return notes(
            console,
            f"the {m} x {m} cosine matrix: cosine in --json; --plot FILE.png draws it",
        )
    note = notes(console, _threshold_note(report))
    indexed = [f"[{k}]" for k in range(m)]
    named = [f"[{k}] {inert(name)}" for k, name in enumerate(names)]

    def labels(texts: Sequence[str]) -> Column:
        return Column("", [Text(x, style="bold") for x in texts], justify="left")

    def column(j: int, headers: Sequence[str]) -> Column:
        cells = [cos_text(report.cosine[i][j], report.conflict[i][j]) for i in range(m)]
        return Column(headers[j], cells)

    if m <= MAX_NAMED_HEADERS:
        table = table_of([labels(named), *(column(j, named) for j in range(m))])
        if fits(console, table):
            return Group(titled(title, table), note)
    long_labels = max(cell_len(x) for x in named) > console.width // MAX_LABEL_SHARE
    blocks = blocks_of(
        console,
        title,
        [labels(indexed if long_labels else named)],
        [[column(j, indexed)] for j in range(m)],
    )
    extra = [legend(names, console.width)] if long_labels else []
    return Group(*blocks, *extra, note)


def _pairs_tables(report: Report, console: Console) -> list[RenderableType]:
    """Return the pairs table: cosine, angle, dot, magnitude similarity and, with several
    batches, the per-batch cosine (mean ± standard error, std, batches below -tau of those
    where the cosine is defined); split into blocks of columns if it does not fit."""
    names = report.losses
    m = len(names)
    stats = report.batch_stats
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    label = Column(
        "pair",
        [Text(f"{inert(names[i])} ~ {inert(names[j])}") for i, j in pairs],
        justify="left",
    )
    groups: list[list[Column]] = [
        [
            Column("cos", [cos_text(report.cosine[i][j], report.conflict[i][j]) for i, j in pairs]),
            Column("angle", [_angle(report.angle_deg[i][j]) for i, j in pairs]),
        ],
        [
            Column("dot", [fmt(report.dot[i][j]) for i, j in pairs]),
            Column("magnitude sim.", [_unit(report.magnitude_similarity[i][j]) for i, j in pairs]),
        ],
    ]
    lines = []
    if stats is not None:
        tau = report.conflict_threshold
        groups.append(
            [
                Column(
                    "batch cos ± s.e.",
                    [
                        _mean_stderr(
                            stats.cosine_mean[i][j],
                            stats.cosine_stderr[i][j],
                            stats.conflict[i][j],
                        )
                        for i, j in pairs
                    ],
                ),
                Column("std", [fmt(stats.cosine_std[i][j], 2) for i, j in pairs]),
            ]
        )
        groups.append(
            [
                Column(
                    f"cos < {conflict_line(tau)}",
                    [f"{stats.below_threshold[i][j]}/{stats.defined[i][j]}" for i, j in pairs],
                )
            ]
        )
        lines.append(
            "batch cos: mean per-batch cosine ± its standard error (s / sqrt(n), s the sample "
            f"standard deviation); ! where mean + s.e. < {conflict_line(tau)}; "
            f"cos < {conflict_line(tau)}: batches below, of the n where the cosine is defined"
        )
    tables = blocks_of(console, "Pairs", [label], groups)
    return [Group(*tables, notes(console, *lines)) if lines else Group(*tables)]


def _top_pairs_table(report: Report, console: Console) -> RenderableType:
    """Return the most conflicting pairs, lowest whole-model cosine first: cosine, angle and,
    with several batches, the per-batch cosine (mean ± standard error) and the batches below
    -tau of those where it is defined."""
    top = report.top_pairs
    m = len(report.losses)
    tau = report.conflict_threshold
    total = m * (m - 1) // 2
    label = Column("pair", [Text(f"{inert(p.a)} ~ {inert(p.b)}") for p in top], justify="left")
    groups: list[list[Column]] = [
        [
            Column("cos", [cos_text(p.cosine, p.conflict) for p in top]),
            Column("angle", [_angle(p.angle_deg) for p in top]),
        ]
    ]
    lines = []
    if report.batch_stats is not None:
        groups.append(
            [
                Column(
                    "batch cos ± s.e.",
                    [
                        _mean_stderr(p.batch_cos_mean, p.batch_cos_stderr, bool(p.batch_conflict))
                        for p in top
                    ],
                ),
                Column(f"cos < {conflict_line(tau)}", [_batch_share(p) for p in top]),
            ]
        )
        lines.append(
            "batch cos: mean per-batch cosine ± its standard error; "
            f"cos < {conflict_line(tau)}: batches below, of those where the cosine is defined"
        )
    conflicts = sum(report.conflict[i][j] for i in range(m) for j in range(i + 1, m))
    lines.insert(
        0,
        f"{conflicts} of the {total} pairs {'conflicts' if conflicts == 1 else 'conflict'} "
        f"(cos < {conflict_line(tau)}); "
        "every pair: cosine in --json; --top K lists K",
    )
    title = f"Most conflicting pairs ({len(top)} of {total}, lowest cosine first)"
    tables = blocks_of(console, title, [label], groups)
    return Group(*tables, notes(console, *lines))


def _batch_share(pair: TopPair) -> str:
    """Return 'below/defined (percent)' of a pair's batches, '--' where none is defined."""
    if not pair.batches_defined or pair.batches_below is None:
        return EMPTY
    share = pair.batches_below / pair.batches_defined
    return f"{pair.batches_below}/{pair.batches_defined} ({share:.0%})"


def _loss_groups_table(report: Report, console: Console) -> RenderableType:
    """Return the loss-group table: per group its losses, summed value, |g_A| of the summed
    gradient g_A = sum_{i in A} g_i, and its cosine with each group's; notes list the members
    and the losses in no group."""
    groups = report.loss_groups
    assert groups is not None
    labels = groups.names
    q = len(labels)
    keys = [
        Column(
            "group",
            [Text(f"[{x}] {inert(n)}", style="bold") for x, n in enumerate(labels)],
            justify="left",
        ),
        Column("losses", [str(len(groups.members[n])) for n in labels]),
        Column("value", [fmt(groups.loss_values[n]) for n in labels]),
        Column("|g_A|", [fmt(groups.norms[n]) for n in labels]),
    ]
    columns = [
        [
            Column(
                f"cos [{y}]",
                [cos_text(groups.cosine[x][y], groups.conflict[x][y]) for x in range(q)],
            )
        ]
        for y in range(q)
    ]
    lines = [
        "g_A = the sum of the gradients of group A's losses (the gradient of their summed "
        "value); cos [k]: its cosine with group k's",
        _threshold_note(report),
    ]
    members = {name: groups.members[name] for name in labels}
    *listed, last = membership_lines(members, groups.ungrouped, len(report.losses))
    lines += listed
    seen: set[str] = set()
    shared = False
    for name in labels:
        shared = shared or not seen.isdisjoint(groups.members[name])
        seen.update(groups.members[name])
    if shared:
        lines.append("groups share losses, so their rows overlap")
    lines.append(last)
    tables = blocks_of(console, "Loss groups: the summed gradient of each group", keys, columns)
    return Group(*tables, notes(console, *lines))


def _angle(x: float | None) -> str:
    return EMPTY if x is None else f"{x:.1f}°"


def _unit(x: float | None) -> str:
    return EMPTY if x is None else f"{x:.3f}"


def _mean_stderr(mean: float | None, stderr: float | None, conflict: bool) -> Text:
    if mean is None:
        return Text(EMPTY, style="dim")
    return cos_text(mean, conflict) + Text(f" ± {fmt(stderr, 2)}")


def _pair_columns(m: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(m) for j in range(i + 1, m)]


def _layers_tables(report: Report, console: Console) -> RenderableType:
    """Return the layer table: module, parameters, each loss's |g| there (up to four losses) and
    each pair's cosine there (up to six pairs; else the lowest pair), with a total row; split
    into blocks of columns when it does not fit."""
    layers = report.layers
    depth = report.depth
    title = "Layers" + (f" (depth {depth})" if depth is not None else "")
    keys = [
        Column(
            "module", [name_text(x.name, "bold") for x in layers], footer="total", justify="left"
        ),
        Column(
            "params", [f"{x.numel:,}" for x in layers], footer=f"{report.parameters['numel']:,}"
        ),
    ]
    return _shares_tables(report, console, layers, title, keys, [])


def _groups_tables(report: Report, console: Console) -> RenderableType:
    """Return the parameter-group table, laid out as the layer table: group, parameter tensors
    and elements, |g| and cosines there; the last row is every selected parameter. A note
    counts the parameters in no group (and says when groups share parameters)."""
    groups = report.groups or []
    keys = [
        Column("group", [name_text(x.name, "bold") for x in groups], footer="all", justify="left"),
        Column(
            "tensors",
            [str(len(x.parameters)) for x in groups],
            footer=str(report.parameters["count"]),
        ),
        Column(
            "params", [f"{x.numel:,}" for x in groups], footer=f"{report.parameters['numel']:,}"
        ),
    ]
    lines = ["all: every selected parameter"]
    seen: set[str] = set()
    shared = False
    for x in groups:
        shared = shared or not seen.isdisjoint(x.parameters)
        seen.update(x.parameters)
    if shared:
        lines[0] += "; groups share parameters, so their rows overlap"
    left = report.ungrouped or []
    count = report.parameters["count"]
    if left:
        lines.append(
            f"in no group: {len(left)} of {count} parameter tensors "
            f"({_folded(left, report.layers)})"
        )
    else:
        lines.append(f"every one of the {count} parameter tensors is in a group")
    return _shares_tables(report, console, groups, "Parameter groups", keys, lines)


def _shares_tables(
    report: Report,
    console: Console,
    layers: Sequence[LayerStats],
    title: str,
    keys: list[Column],
    extra: list[str],
) -> RenderableType:
    """Return a table of shares of the model (layers or parameter groups): the `keys` columns,
    each loss's |g| there (up to four losses) and each pair's cosine there (up to six pairs;
    else the lowest pair), the footer the whole selection's; then the `extra` notes."""
    names = report.losses
    m = len(names)
    pairs = _pair_columns(m)
    groups: list[list[Column]] = []
    lines: list[str] = []
    if m <= MAX_LOSSES_ACROSS:
        norms = []
        for k, name in enumerate(names):
            heading = f"|g| {inert(name)}" if m <= 2 else f"|g| [{k}]"
            cells = [fmt(x.norms[name]) if x.reached.get(name, True) else EMPTY for x in layers]
            norms.append(Column(heading, cells, footer=fmt(report.gradients[name].norm)))
        groups.append(norms)
    else:
        lines.append("norms per loss and layer: see --json")
    if len(pairs) <= 6:
        cosines = []
        for i, j in pairs:
            cells = [cos_text(x.cosine[i][j], _flag(x, i, j)) for x in layers]
            footer = cos_text(report.cosine[i][j], report.conflict[i][j])
            cosines.append(Column(f"cos {i}~{j}", cells, footer=footer))
        groups.append(cosines)
    elif pairs:
        groups.append([Column("lowest cos (pair)", [_lowest_pair(x) for x in layers])])
    if m > 2:
        lines.insert(0, "; ".join(f"[{k}] {inert(name)}" for k, name in enumerate(names)))
    lines += extra
    tables = blocks_of(console, title, keys, groups, footer=True)
    return Group(*tables, notes(console, *lines)) if lines else Group(*tables)


def _flag(layer: LayerStats, i: int, j: int) -> bool:
    return bool(layer.conflict) and layer.conflict[i][j]


def _lowest_pair(layer: LayerStats) -> Text:
    if layer.lowest_pair is None:
        return Text(EMPTY, style="dim")
    i, j = layer.lowest_pair
    return cos_text(layer.cosine[i][j], _flag(layer, i, j)) + Text(f" ({i}~{j})", style="dim")


def _unused_table(report: Report) -> RenderableType | None:
    rows = [(name, params) for name, params in report.unused.items() if params]
    if not rows:
        return None
    labels: list[RenderableType] = [name_text(name, "bold") for name, _ in rows]
    counts = [str(len(params)) for _, params in rows]
    listed = [_folded(params, report.layers) for _, params in rows]
    if report.unreached:
        labels.append(Text("(every loss)", style="yellow"))
        counts.append(str(len(report.unreached)))
        listed.append(_folded(report.unreached, report.layers))
    table = table_of(
        [
            Column("loss", labels, justify="left"),
            Column("count", counts),
            Column("parameters", listed, justify="left"),
        ]
    )
    return titled("Unused parameters (no autograd path from the loss)", table)


def _folded(params: Sequence[str], layers: Sequence[LayerStats]) -> str:
    """Return the names (inert) joined, a whole module shown as 'module.*', at most a few."""
    wanted = set(params)
    labels: list[str] = []
    covered: set[str] = set()
    for layer in layers:
        if len(layer.parameters) > 1 and set(layer.parameters) <= wanted:
            labels.append(f"{inert(layer.name)}.*")
            covered.update(layer.parameters)
    labels += [inert(p) for p in params if p not in covered]
    shown = ", ".join(labels[:MAX_UNUSED_LISTED])
    if len(labels) > MAX_UNUSED_LISTED:
        shown += f" and {len(labels) - MAX_UNUSED_LISTED} more (see --json)"
    return shown


def _pareto_table(report: Report, console: Console) -> Group:
    p = report.pareto
    assert p is not None
    names = report.losses
    normalized = p.normalize != "none"
    title = f"Pareto: {p.method.upper()} min-norm weights"
    rates = [p.directional_derivatives[name] for name in names]
    columns = [
        Column("loss", [name_text(n, "bold") for n in names], justify="left"),
        Column("weight", [fmt(p.weights[n]) for n in names]),
    ]
    if normalized:
        columns.append(Column("raw weight", [fmt(p.loss_weights[n]) for n in names]))
    columns += [
        Column("(G w)_i", [fmt(rate) for rate in rates]),
        Column("along -d", [_effect(rate) for rate in rates], justify="left"),
    ]
    lines = ["(G w)_i = <g_i, d>: the first-order decrease rate of loss i along -d"]
    if normalized:
        lines.insert(
            0,
            f"weights of the gradients normalised by {p.normalize}, g_i / s_i; "
            "raw weight: w_i / s_i, on the raw losses",
        )
    relative = "|d| / max_i |g_i|" if not normalized else "normalised |d| / max_i |g_i / s_i|"
    if p.relative_min_norm is None:
        why = "every gradient is 0"
    else:
        compared = "<=" if p.stationary else ">"
        why = f"{relative} = {fmt(p.relative_min_norm, 3)} {compared} tol {p.tol:g}"
    parts = [
        f"min-norm |d| = {fmt(p.min_norm)}",
        f"Pareto-stationary {'yes' if p.stationary else 'no'} ({why})",
        f"unique {'yes' if p.unique else 'no'}",
        # below 1e-12 it is round-off, whose digits vary with the engine's summation order
        "KKT residual " + (f"{p.kkt_residual:.1e}" if p.kkt_residual >= 1e-12 else "< 1e-12"),
    ]
    summary = Text("\n".join(pack(parts, console.width, sep="   ")))
    return Group(titled(title, table_of(columns)), notes(console, *lines), summary, Text(""))


def _effect(rate: float) -> Text:
    if rate > 0:
        return Text("decreases", style="green")
    if rate == 0:
        return Text("flat", style="yellow")
    return Text("increases", style="bold red")


# --- weighting methods side by side (`pareto --method/--compare`) ---------------------------------


def methods_shown(report: Report) -> bool:
    """Return whether the report lists methods beyond the default MGDA (its own table)."""
    return report.methods is not None and [r.method for r in report.methods] != ["mgda"]


def _rate_text(x: float | None) -> Text:
    """Return a decrease rate (G w)_i, red when negative (the loss increases along -d; rates
    within round-off of 0 are exactly 0 in the analysis)."""
    if x is None:
        return Text(EMPTY, style="dim")
    return Text(fmt(x, 3), style="bold red" if x < 0 else "")


def _method_cos(r: MethodResult, name: str) -> Text:
    """Return cos(d, g_i), red where d raises loss i to first order ((G w)_i < 0)."""
    return cos_text(r.cosine[name], r.directional_derivatives[name] < 0)


def methods_table(report: Report, console: Console) -> Group:
    """Return the weighting methods side by side: weights, |d|, cos(d, g_i), (G w)_i, verdict."""
    results = report.methods or []
    names = report.losses
    m = len(names)
    normalize = results[0].normalize if results else "none"
    title = "Weighting methods: d = sum_i w_i g_i"
    if m > MAX_LOSSES_ACROSS:
        return _methods_by_loss(report, console, title, normalize)
    keys = [
        Column("method", [Text(r.method, style="bold") for r in results], justify="left"),
        Column("lowers\nall", [_lowers_all(r) for r in results], justify="left"),
        Column("resid.", [_certificate(r) for r in results]),
    ]
    groups = [
        [Column(f"w{j}", [fmt(r.weights[n], 3) for r in results]) for j, n in enumerate(names)]
        + [Column("|d|", [fmt(r.norm, 3) for r in results])],
        [Column(f"cos{j}", [_method_cos(r, n) for r in results]) for j, n in enumerate(names)],
        [
            Column(f"Gw{j}", [_rate_text(r.directional_derivatives[n]) for r in results])
            for j, n in enumerate(names)
        ],
    ]
    tables = blocks_of(console, title, keys, groups, compact=True)
    lines = ["; ".join(f"[{j}] {inert(name)}" for j, name in enumerate(names))]
    lines += _method_notes(results, normalize)
    lines += [
        "cos_i = cos(d, g_i); Gw_i = (G w)_i = <g_i, d>, the first-order decrease rate of loss i "
        "along -d",
        "lowers all: every Gw_i >= 0, so a small step along -d raises no loss",
        _CERTIFICATE_NOTE,
    ]
    return Group(*tables, notes(console, *lines))


_CERTIFICATE_NOTE = (
    "resid.: each method's certificate, the relative residual of its defining conditions at w; "
    "above 1e-8 (red, lowers all '?') the weights are not taken as fact"
)


def _certificate(r: MethodResult) -> Text:
    """Return the residual, dim when the method certifies, red (and marked) when it does not."""
    if r.residual is None:
        return Text(EMPTY, style="dim")
    label = "<1e-16" if r.residual < 1e-16 else f"{r.residual:.0e}"
    return Text(label, style="dim") if r.certified else Text(label + "!", style="bold red")


def _lowers_all(r: MethodResult) -> Text:
    """Return yes / no, or '?' where the method did not certify (no conclusion is drawn)."""
    return yes_no(bool(r.decreases_all)) if r.certified else Text("?", style="bold yellow")


def _method_notes(results: Sequence[MethodResult], normalize: str) -> list[str]:
    lines = []
    if normalize != "none":
        lines.append(f"gradients normalised by {normalize}; d uses w_i / s_i")
    named = [f"{r.method} = {r.name}" for r in results if "(" in r.name]
    if named:
        lines.append("; ".join(named))
    with_pref = [r for r in results if r.preference is not None]
    if with_pref:
        pref = ", ".join(f"{v:g}" for v in with_pref[0].preference.values())  # type: ignore[union-attr]
        users = ", ".join(r.method for r in with_pref)
        lines.append(f"preference ({pref}) for {users}")
    return lines


def _methods_by_loss(report: Report, console: Console, title: str, normalize: str) -> Group:
    """Return the methods table transposed (a row per loss, a column per method), for many
    losses: the weights w_i, then the decrease rates (G w)_i; cosines stay in the JSON."""
    results = report.methods or []
    names = report.losses
    labels: list[RenderableType] = [name_text(n, "bold") for n in names]
    weights = blocks_of(
        console,
        f"{title}: w_i",
        [Column("loss", [*labels, Text("|d|", style="dim")], justify="left")],
        [
            [Column(r.method, [*(fmt(r.weights[n], 3) for n in names), fmt(r.norm, 3)])]
            for r in results
        ],
    )
    rates = blocks_of(
        console,
        "Decrease rates (G w)_i = <g_i, d>",
        [Column("loss", labels, footer="lowers all", justify="left")],
        [
            [
                Column(
                    r.method,
                    [_rate_text(r.directional_derivatives[n]) for n in names],
                    footer=_lowers_all(r),
                )
            ]
            for r in results
        ],
        footer=True,
    )
    lines = [
        *_method_notes(results, normalize),
        "(G w)_i: the first-order decrease rate of loss i along -d; lowers all: every (G w)_i >= 0",
        "residuals: " + ", ".join(f"{r.method} {_certificate(r).plain}" for r in results),
        _CERTIFICATE_NOTE,
    ]
    return Group(*weights, *rates, notes(console, *lines))
