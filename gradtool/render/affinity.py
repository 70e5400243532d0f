"""The `affinity` command's tables: the lookahead affinity grid and each method's step."""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from gradtool.render.common import (
    EMPTY,
    fmt,
    header,
    percent,
    print_verdict,
    problem_parts,
    yes_no,
)
from gradtool.results.affinity import AffinityReport


def render_affinity(report: AffinityReport, console: Console, *, verbose: bool = False) -> None:
    """Print the affinity report: header, the m x m affinity grid, the method steps, verdict."""
    console.print(_affinity_header(report, verbose))
    console.print(_affinity_grid(report))
    if report.methods_step:
        console.print(_method_steps_table(report))
    print_verdict(console, report.verdict)


def _affinity_header(report: AffinityReport, verbose: bool) -> Text:
    meta = report.meta
    where = "evaluated on the next batch (holdout)" if report.holdout else "same batch"
    parts = problem_parts(len(report.losses), report.parameters, report.num_batches)
    parts += [f"lr {report.lr:g}", where, f"device {meta.get('device', 'cpu')}"]
    text = header(report.command, str(meta.get("gradfile", "")), parts)
    if verbose:
        text.append(f"\nseed {meta.get('seed')}", style="dim")
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
        row.append(yes_no(step.lowers_every_loss))
        table.add_row(*row)
    note = Text(
        "1 - L_j(theta - lr d) / L_j(theta), first order lr (G w)_j / L_j in parentheses;\n"
        "d = sum_k w_k g_k with w from each batch's Gramian (the mean w is shown)",
        style="dim",
    )
    return Group(table, note, Text(""))
