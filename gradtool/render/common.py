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
