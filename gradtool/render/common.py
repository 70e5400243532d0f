"""What every table shares: number and cosine formats, conflict marks, names shown inert, the
console, and the choice of a layout that fits the console's width.

Layout rules, for every command's output:
- no cell is cut: a table that is wider than the console is rebuilt in a narrower layout
  (`first_fitting`, `column_blocks`), and as a last resort its cells fold onto more lines;
- no line ends in spaces (`show` trims what rich pads);
- every user-provided name (losses, parameters, modules, files) goes through `inert`, and verdict
  lines through `printable`, so no escape sequence in a name reaches the terminal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from rich import box
from rich.console import (
    Console,
    ConsoleOptions,
    Group,
    JustifyMethod,
    RenderableType,
    RenderResult,
)
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from gradtool.results.report import inert, printable

EMPTY = "--"
PIPED_WIDTH = 200
UNLIMITED = 100_000  # a width no table reaches: measuring with it gives the natural width
CONFLICT_STYLE = "bold red"
ZERO_LABELS = ("+0.00", "-0.00")

T = TypeVar("T")


def fmt(x: float | None, digits: int = 4) -> str:
    """Return `x` in a compact fixed or scientific form; '--' for undefined."""
    if x is None:
        return EMPTY
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{max(digits - 2, 1)}e}"
    return f"{x:.{digits}g}"


def cos_label(c: float | None) -> str:
    """Return a cosine as printed: signed, two decimals ('--' for undefined)."""
    return EMPTY if c is None else f"{c:+.2f}"


def cos_text(c: float | None, conflict: bool = False) -> Text:
    """Return a cosine as text: red with a '!' (so it shows without colour) where the analysis
    flagged a `conflict`, green where it prints positive, plain otherwise.

    A value that prints as +0.00 or -0.00 is never red, whatever the flag: what is shown must
    not look like a conflict of size zero.
    """
    label = cos_label(c)
    if c is None:
        return Text(label, style="dim")
    if conflict and label not in ZERO_LABELS:
        return Text(label + "!", style=CONFLICT_STYLE)
    return Text(label, style="green" if label[0] == "+" and label not in ZERO_LABELS else "")


def trend_style(conflict: bool) -> str:
    """Return the style of one sparkline bin: red where the analysis flagged the bin."""
    return CONFLICT_STYLE if conflict else "cyan"


def name_text(name: str, style: str = "") -> Text:
    """Return a user-provided name as inert text (escaped, quoted where it could mislead)."""
    return Text(inert(name), style=style)


def make_console(*, stderr: bool = False) -> Console:
    """Return a console for the tables: no markup and no emoji codes (names are shown as
    written), and piped output (without COLUMNS) as wide as the tables need, up to PIPED_WIDTH,
    not squeezed to 80."""
    console = Console(stderr=stderr, highlight=False, markup=False, emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ and console.width < PIPED_WIDTH:
        console = Console(
            stderr=stderr, highlight=False, markup=False, emoji=False, width=PIPED_WIDTH
        )
    return console


class Trimmed:
    """A renderable shown line by line without trailing whitespace (rich pads table cells and
    titles to the column widths; a terminal or a diff shows such padding as noise)."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in console.render_lines(self.renderable, options, pad=False):
            yield from _rstrip(line)
            yield Segment.line()


def _rstrip(line: list[Segment]) -> list[Segment]:
    """Return the segments of one line with the trailing whitespace removed."""
    out = list(line)
    while out and not out[-1].control:
        last = out[-1]
        text = last.text.rstrip()
        if text:
            out[-1] = Segment(text, last.style, last.control)
            break
        out.pop()
    return out


def show(console: Console, *renderables: RenderableType) -> None:
    """Print each renderable, trimmed of trailing whitespace."""
    for renderable in renderables:
        console.print(Trimmed(renderable))


def width_of(console: Console, renderable: RenderableType) -> int:
    """Return the width `renderable` needs to show every cell on one line (measured without the
    console's limit, which would clamp the answer to it)."""
    return Measurement.get(console, console.options.update_width(UNLIMITED), renderable).maximum


def fits(console: Console, renderable: RenderableType) -> bool:
    """Return whether `renderable` shows within the console's width without cutting or folding."""
    return width_of(console, renderable) <= console.width


def first_fitting(
    console: Console, layouts: Iterable[Callable[[], RenderableType]]
) -> RenderableType:
    """Return the first layout (built lazily, in order of preference) that fits the console's
    width, or the last one (the most compact) if none does."""
    chosen: RenderableType = Text("")
    for build in layouts:
        chosen = build()
        if fits(console, chosen):
            return chosen
    return chosen


def column_blocks(
    console: Console, groups: Sequence[T], build: Callable[[Sequence[T]], Table]
) -> list[Table]:
    """Return tables that together show every group of columns, each table as many consecutive
    groups as fit the console's width (a group alone when even two do not fit).

    `build(groups)` returns the table with the key columns (repeated in every block) and the
    columns of those groups.
    """
    tables: list[Table] = []
    start = 0
    while start < len(groups):
        end = len(groups)
        table = build(groups[start:end])
        while end - start > 1 and not fits(console, table):
            end -= 1
            table = build(groups[start:end])
        tables.append(table)
        start = end
    return tables


@dataclass
class Column:
    """One column of a table built by `table_of`: header, a cell per row, an optional footer."""

    header: str
    cells: Sequence[RenderableType]
    footer: RenderableType = ""
    justify: JustifyMethod = "right"
    style: str = ""


def table_of(
    columns: Sequence[Column],
    *,
    footer: bool = False,
    section_after: int | None = None,
    compact: bool = False,
) -> Table:
    """Return a table in gradtool's look (a rule under the header, no padding at the outer edges)
    holding `columns`, rows in the order of their cells, a rule after row `section_after` if
    given; `compact` puts one space between columns instead of two (for grids of numbers).
    String cells become plain `Text`, so no markup or emoji code in them is interpreted; a cell
    wider than the console folds onto more lines rather than being cut."""
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_footer=footer,
        padding=(0, 1, 0, 0) if compact else (0, 1),
    )
    for col in columns:
        table.add_column(
            col.header,
            footer=_text(col.footer),
            justify=col.justify,
            style=col.style,
            overflow="fold",
        )
    rows = max((len(col.cells) for col in columns), default=0)
    for r in range(rows):
        table.add_row(
            *[_text(col.cells[r]) if r < len(col.cells) else "" for col in columns],
            end_section=r == section_after,
        )
    return table


def titled(title: str, renderable: RenderableType) -> Group:
    """Return `renderable` under its title, on a line of its own (a table's own title would wrap
    to the table's width, breaking a phrase)."""
    return Group(Text(title, style="italic"), renderable)


def blocks_of(
    console: Console,
    title: str,
    keys: Sequence[Column],
    groups: Sequence[Sequence[Column]],
    *,
    footer: bool = False,
    section_after: int | None = None,
    compact: bool = False,
) -> list[RenderableType]:
    """Return `table_of(keys + groups)`, titled, split into `column_blocks` that fit the console:
    the key columns repeat in each block, a group of columns stays together unless it does not
    fit alone, and blocks after the first are titled '... (continued)'."""

    def build(chosen: Sequence[Sequence[Column]]) -> Table:
        columns = [*keys, *(col for group in chosen for col in group)]
        return table_of(columns, footer=footer, section_after=section_after, compact=compact)

    atoms: list[Sequence[Column]] = []
    for group in groups:
        if len(group) > 1 and not fits(console, build([group])):
            atoms += [[col] for col in group]
        else:
            atoms.append(group)
    tables = column_blocks(console, atoms, build)
    return [
        titled(title if k == 0 else f"{title} (continued)", table) for k, table in enumerate(tables)
    ]


def _text(cell: RenderableType) -> RenderableType:
    return Text(cell) if isinstance(cell, str) else cell


def pack(parts: Sequence[str], width: int, sep: str = " · ") -> list[str]:
    """Return `parts` joined by `sep` into lines of at most `width` characters where possible,
    never splitting a part (a part longer than the width gets a line of its own)."""
    lines: list[str] = []
    current = ""
    for part in parts:
        candidate = f"{current}{sep}{part}" if current else part
        if current and len(candidate) > width:
            lines.append(current)
            current = part
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def notes(console: Console, *lines: str) -> Text:
    """Return dim note lines under a table, then a blank line; each line's clauses (split at
    '; ') are packed to the console's width so a wrap falls between clauses, not inside one."""
    out: list[str] = []
    for line in lines:
        out += pack(line.split("; "), console.width, sep="; ")
    return Text("\n".join(out) + "\n", style="dim")


def yes_no(flag: bool) -> Text:
    return Text("yes", style="green") if flag else Text("no", style="bold red")


def percent(x: float | None) -> str:
    """Return a fraction as a signed percentage with 3 significant digits ('--' if undefined)."""
    return EMPTY if x is None else f"{100 * x:+.3g}%"


def plural(n: int, word: str, suffix: str = "s") -> str:
    """Return '1 loss', '3 losses': `n` and `word`, with `suffix` unless n == 1."""
    return f"{n} {word}" + (suffix if n != 1 else "")


def header(console: Console, command: str, source: str, parts: Sequence[str]) -> Text:
    """Return the header: `gradtool COMMAND SOURCE`, then `parts` joined by ' · ' and packed to
    the console's width (a line breaks between parts, never inside one)."""
    text = Text(f"gradtool {command} ", style="bold")
    text.append(inert(source), style="cyan")
    for line in pack(parts, console.width):
        text.append("\n" + line, style="dim")
    return text


def problem_parts(n_losses: int, parameters: dict[str, int], num_batches: int) -> list[str]:
    """Return the header's description of a problem: losses, parameter tensors, batches."""
    return [
        plural(n_losses, "loss", "es"),
        f"{plural(parameters['count'], 'parameter tensor')} ({parameters['numel']:,} values)",
        plural(num_batches, "batch", "es"),
    ]


def selection_parts(meta: dict[str, object]) -> list[str]:
    """Return the header's notes on the parameters: tied ones (analysed once, under their first
    name) and frozen ones (requires_grad=False, not analysed), from the report's meta."""
    parts: list[str] = []
    tied = meta.get("tied_parameters") or []
    if isinstance(tied, list) and tied:
        shown = [f"{inert(kept)} = {' = '.join(inert(o) for o in others)}" for kept, others in tied]
        parts.append(
            "tied: "
            + ", ".join(shown[:3])
            + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
        )
    frozen = meta.get("frozen_parameters")
    if isinstance(frozen, dict) and frozen.get("count"):
        parts.append(
            f"{plural(int(frozen['count']), 'frozen parameter')} "
            f"({int(frozen.get('numel', 0)):,} values) not analysed"
        )
    return parts


def legend(names: Sequence[str], width: int) -> Text:
    """Return '[0] a  [1] b ...' (names inert), packed to `width`, for index-labelled columns."""
    parts = [f"[{k}] {inert(name)}" for k, name in enumerate(names)]
    return Text("\n".join(pack(parts, width, sep="  ")), style="dim")


def print_verdict(console: Console, verdict: Sequence[str]) -> None:
    """Print each verdict line after a '»', wrapped lines indented under the first; every
    non-printable character is shown escaped, whoever built the line."""
    if not verdict:
        return
    grid = Table.grid(padding=(0, 1, 0, 0))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for line in verdict:
        grid.add_row(Text("»", style="bold"), Text(printable(line)))
    show(console, grid)


MAX_MEMBERS_LISTED = 6  # the losses named per loss group under its table


def membership_lines(
    members: Mapping[str, Sequence[str]], ungrouped: Sequence[str], total: int
) -> list[str]:
    """Return the notes under a loss-group table: each group's losses (the first few, then a
    count), and the losses in no group."""

    def listed(names: Sequence[str]) -> str:
        shown = ", ".join(inert(x) for x in names[:MAX_MEMBERS_LISTED])
        more = len(names) - MAX_MEMBERS_LISTED
        return shown + (f" and {more} more" if more > 0 else "")

    lines = [f"{inert(name)}: {listed(names)}" for name, names in members.items()]
    if ungrouped:
        lines.append(f"in no group: {len(ungrouped)} of {total} losses ({listed(ungrouped)})")
    else:
        lines.append(f"every one of the {total} losses is in a group")
    return lines
