"""What the commands write: tables or JSON on stdout, notes on stderr, the `-o` document, and the
checks on output paths made before any work."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gradtool.errors import UsageError


def emit(report: Any, json_out: bool, output: Path | None, render: Callable[[], None]) -> None:
    """Print `report`'s warnings (stderr), then its JSON or tables; write `output` atomically."""
    from gradtool.results import write_atomic

    err = stderr_console()
    for warning in report.warnings:
        err.print(f"[bold yellow]Warning:[/] {escape(warning)}")
    text = report.to_json()
    if json_out:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        render()
    if output is not None:
        try:
            write_atomic(output, text + "\n")
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
        if not json_out:
            err.print(f"[dim]wrote {escape(str(output))}[/]")


def check_plot_path(plot: Path) -> None:
    """Raise a `UsageError` unless `--plot` names an image file in an existing folder."""
    from gradtool.render.plots import SNAPSHOT_SUFFIXES, require_matplotlib

    if plot.suffix.lower() not in SNAPSHOT_SUFFIXES:
        raise UsageError(
            f"--plot {plot}: the image should end in one of {', '.join(SNAPSHOT_SUFFIXES)}",
            hint="e.g. --plot cosine.png",
        )
    parent = plot.parent if str(plot.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(
            f"--plot {plot}: the folder {parent} does not exist", hint="create it first"
        )
    require_matplotlib()


def user_prints_to_stderr() -> contextlib.AbstractContextManager[object]:
    """Send what the gradfile prints to stderr: stdout carries gradtool's tables or JSON only."""
    return contextlib.redirect_stdout(sys.stderr)


@contextlib.contextmanager
def batch_progress() -> Iterator[Callable[[int], None] | None]:
    """Yield a callback showing batches done on stderr (transient), or None off a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("differentiating: {task.completed} batches"),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task("batches", total=None)
        yield lambda done: bar.update(task, completed=done)


def check_output_path(output: Path) -> None:
    """Raise a `UsageError` unless `-o` names a file in an existing folder."""
    parent = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise UsageError(
            f"-o {output} is a directory", hint="give a file path, e.g. -o report.json"
        )
    if not parent.is_dir():
        raise UsageError(f"-o {output}: the folder {parent} does not exist", hint="create it first")


def stderr_console() -> Any:
    """Return a console on stderr for errors, warnings and notes (markup on, no wrapping)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def escape(text: str) -> str:
    """Return `text` with rich markup escaped, so it prints as written."""
    from rich.markup import escape

    return escape(text)
