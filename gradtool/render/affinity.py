"""The `affinity` command's tables: the lookahead affinity grid and each method's step.

Layouts follow the console's width: a cell's first-order estimate goes under the measured value,
and the loss columns are split into blocks, where one line per cell does not fit.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.text import Text

from gradtool.render.common import (
    EMPTY,
    Column,
    blocks_of,
    fmt,
    header,
    inert,
    notes,
    pack,
    percent,
    print_verdict,
    problem_parts,
    show,
    yes_no,
)
from gradtool.results.affinity import AffinityReport

WEIGHTS_WIDTH = 13  # the weights of a method step wrap at this width (two per line, as a rule)


def render_affinity(report: AffinityReport, console: Console, *, verbose: bool = False) -> None:
    """Print the affinity report: header, the m x m affinity grid, the method steps, verdict."""
    show(console, _affinity_header(report, console, verbose), _affinity_grid(report, console))
    if report.methods_step:
        show(console, _method_steps_table(report, console))
    print_verdict(console, report.verdict)


def _affinity_header(report: AffinityReport, console: Console, verbose: bool) -> Text:
    meta = report.meta
    where = "evaluated on the next batch (holdout)" if report.holdout else "same batch"
    parts = problem_parts(len(report.losses), report.parameters, report.num_batches)
    parts += [f"lr {report.lr:g}", where, f"device {meta.get('device', 'cpu')}"]
    text = header(console, report.command, str(meta.get("gradfile", "")), parts)
    if verbose:
        text.append(f"\nseed {meta.get('seed')}; strategy {meta.get('strategy')}", style="dim")
        if meta.get("fallback_reason"):
            text.append(f" ({meta['fallback_reason']})", style="dim")
    return text


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


def _affinity_grid(report: AffinityReport, console: Console) -> Group:
    names = report.losses
    m = len(names)
    labels = [Text(f"[{i}] {inert(name)}", style="bold") for i, name in enumerate(names)]

    def grid(sep: str) -> list[RenderableType]:
        groups = [
            [
                Column(
                    f"[{j}] {inert(name)}",
                    [
                        _affinity_cell(
                            report.affinity[i][j],
                            report.affinity_first_order[i][j],
                            report.loss_change[i][j],
                            report.loss_change_first_order[i][j],
                            sep,
                        )
                        for i in range(m)
                    ],
                )
            ]
            for j, name in enumerate(names)
        ]
        return blocks_of(
            console,
            "Lookahead affinity Z[i->j], % of L_j",
            [Column("step on", labels, justify="left")],
            groups,
        )

    tables = grid(" ")
    if len(tables) > 1:  # the first-order estimates go under the measured values first
        tables = grid("\n")
    values = [f"{inert(name)} {fmt(report.loss_values[name])}" for name in names]
    lines = [
        "L(theta): " + "; ".join(values),
        "Z[i->j] = 1 - L_j(theta - lr g_i) / L_j(theta); in parentheses its first order "
        "lr G_ij / L_j",
        "row i: one SGD step on loss i alone; column j: its effect on loss j "
        "(+ lowers it, - raises it)",
    ]
    shows_abs = any(
        z is None and change is not None
        for zs, changes in zip(report.affinity, report.loss_change, strict=True)
        for z, change in zip(zs, changes, strict=True)
    )
    if shows_abs:
        lines.append("abs: L_j <= 0, so the absolute decrease L_j(theta) - L_j(theta - lr g_i)")
    return Group(*tables, notes(console, *lines))


def _method_steps_table(report: AffinityReport, console: Console) -> Group:
    names = report.losses
    steps = report.methods_step
    keys = [
        Column("method", [Text(step.method, style="bold") for step in steps], justify="left"),
        Column("weights", [_weights(step.weights, names) for step in steps]),
    ]
    groups = [
        [
            Column(
                f"[{j}] {inert(name)}",
                [
                    _affinity_cell(
                        step.affinity[name],
                        step.affinity_first_order[name],
                        step.loss_change[name],
                        step.loss_change_first_order[name],
                        sep="\n",
                    )
                    for step in steps
                ],
            )
        ]
        for j, name in enumerate(names)
    ]
    title = "One step along each method's direction d, % of L_j"
    lowers = [
        Text("?", style="bold yellow")
        if step.lowers_every_loss is None
        else yes_no(step.lowers_every_loss)
        for step in steps
    ]
    # the verdict's header on two lines where that keeps the table in one block
    for heading in ("lowers all", "lowers\nall"):
        tables = blocks_of(
            console, title, keys, [*groups, [Column(heading, lowers, justify="left")]]
        )
        if len(tables) == 1:
            break
    note = notes(
        console,
        "1 - L_j(theta - lr d) / L_j(theta), first order lr (G w)_j / L_j in parentheses",
        "d = sum_k w_k g_k with w from each batch's Gramian (the mean w is shown)",
    )
    return Group(*tables, note)


def _weights(weights: dict[str, float], names: Sequence[str]) -> str:
    return "\n".join(pack([fmt(weights[name], 3) for name in names], WEIGHTS_WIDTH, sep=" "))
