"""What every table shares: number and cosine formats, heat colours, the console."""

from __future__ import annotations

import os

from rich.console import Console
from rich.text import Text

EMPTY = "--"
PIPED_WIDTH = 200


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


def make_console(*, stderr: bool = False) -> Console:
    """Return a console for the tables: no markup (loss names are shown as written), and piped
    output (without COLUMNS) as wide as the tables need, up to PIPED_WIDTH, not squeezed to 80."""
    console = Console(stderr=stderr, highlight=False, markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ and console.width < PIPED_WIDTH:
        console = Console(stderr=stderr, highlight=False, markup=False, width=PIPED_WIDTH)
    return console


def yes_no(flag: bool) -> Text:
    return Text("yes", style="green") if flag else Text("no", style="bold red")


def percent(x: float | None) -> str:
    """Return a fraction as a signed percentage with 3 significant digits ('--' if undefined)."""
    return EMPTY if x is None else f"{100 * x:+.3g}%"


def plural(n: int, word: str, suffix: str = "s") -> str:
    """Return '1 loss', '3 losses': `n` and `word`, with `suffix` unless n == 1."""
    return f"{n} {word}" + (suffix if n != 1 else "")


def header(command: str, source: str, parts: list[str]) -> Text:
    """Return the two header lines: `gradtool COMMAND SOURCE`, then `parts` joined by ' · '."""
    text = Text(f"gradtool {command} ", style="bold")
    text.append(source, style="cyan")
    text.append("\n" + " · ".join(parts), style="dim")
    return text


def problem_parts(n_losses: int, parameters: dict[str, int], num_batches: int) -> list[str]:
    """Return the header's description of a problem: losses, parameter tensors, batches."""
    return [
        plural(n_losses, "loss", "es"),
        f"{parameters['count']} parameter tensors ({parameters['numel']:,} values)",
        plural(num_batches, "batch", "es"),
    ]


def print_verdict(console: Console, verdict: list[str]) -> None:
    """Print each verdict line after a '»'."""
    for line in verdict:
        console.print(Text("» ", style="bold") + Text(line))
