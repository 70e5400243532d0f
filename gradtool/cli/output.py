"""What the commands write: tables or JSON on stdout, notes on stderr, the `-o` document, and the
checks on output paths made before any work.

While the gradfile runs, file descriptor 1 itself points at stderr (`user_prints_to_stderr`), so
whatever the user's code prints, from Python, a thread, `os.write(1, ...)` or C, cannot mix into
the tables or the one JSON document that gradtool prints afterwards.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from gradtool.errors import UsageError
from gradtool.results.report import printable

# The `-o` paths this command run has written (None outside `command_paths`): `handle_errors`
# removes a document left at `-o` by an earlier run, never one this run wrote.
_WRITTEN: ContextVar[set[Path] | None] = ContextVar("gradtool_written", default=None)
# Absolute path -> the path as the user typed it, for this command run (see `shown`).
_TYPED: ContextVar[Mapping[Path, Path] | None] = ContextVar("gradtool_typed", default=None)


def emit(
    report: Any,
    json_out: bool,
    output: Path | None,
    render: Callable[[], None],
    files: Mapping[Path, Callable[[], str]] | None = None,
) -> None:
    """Write `output` (and `files`: path -> text) atomically, then print `report`'s warnings
    (stderr) and its JSON or tables.

    The files come first, so a reader that closes stdout early (`| head`) loses none of them;
    a closed stdout ends the printing quietly.
    """
    err = stderr_console()
    text = report.to_json()
    if output is not None:
        write_text(output, text + "\n", note=not json_out)
    for path, make in (files or {}).items():
        write_text(path, make())
    for warning in report.warnings:
        err.print(f"[bold yellow]Warning:[/] {escape(printable(warning))}")
    try:
        if json_out:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        else:
            render()
            sys.stdout.flush()
    except BrokenPipeError:  # the reader left: nothing more goes to stdout, and nothing is lost
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def secondary_rank() -> bool:
    """Return whether this process is a torchrun rank other than 0: it prints nothing on stdout
    and writes no file (read from torchrun's environment, without importing torch)."""
    env = os.environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")):
        return False
    return env["RANK"] != "0" and env["WORLD_SIZE"] not in ("0", "1")


def check_plot_path(plot: Path) -> None:
    """Raise a `UsageError` unless `--plot` names an image file in an existing folder."""
    from gradtool.render.plots import SNAPSHOT_SUFFIXES, require_matplotlib

    if plot.suffix.lower() not in SNAPSHOT_SUFFIXES:
        raise UsageError(
            f"--plot {shown(plot)}: the image should end in one of {', '.join(SNAPSHOT_SUFFIXES)}",
            hint="e.g. --plot cosine.png",
        )
    parent = plot.parent if str(plot.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(
            f"--plot {shown(plot)}: the folder {Path(shown(plot)).parent} does not exist",
            hint="create it first",
        )
    require_matplotlib()


@contextlib.contextmanager
def command_paths(typed: Mapping[Path, Path]) -> Iterator[set[Path]]:
    """For one command run: remember how the user typed each path made absolute (`typed`:
    absolute -> as typed, for `shown`), and yield the set of `-o` paths `emit` writes."""
    written: set[Path] = set()
    token_written, token_typed = _WRITTEN.set(written), _TYPED.set(dict(typed))
    try:
        yield written
    finally:
        _TYPED.reset(token_typed)
        _WRITTEN.reset(token_written)


def shown(path: Path) -> str:
    """Return `path` as the user typed it on the command line: the typed form of a path the
    command made absolute, or of a path inside one (a figure in `--plot DIR`); else `path`."""
    typed = _TYPED.get() or {}
    if path in typed:
        return str(typed[path])
    for absolute, as_typed in typed.items():
        with contextlib.suppress(ValueError):
            return str(as_typed / path.relative_to(absolute))
    return str(path)


@contextlib.contextmanager
def user_prints_to_stderr() -> Iterator[None]:
    """Send everything the gradfile prints to stderr while the block runs: stdout carries
    gradtool's tables or JSON only, printed after the block.

    `sys.stdout` is pointed at `sys.stderr`, and, where both are real files, so is file
    descriptor 1 (`dup2`), which also catches `os.write(1, ...)`, C `printf` and child processes.
    Python's and C's stdout buffers are flushed before descriptor 1 is put back, so nothing the
    user printed reaches the real stdout late. Where stdout is not a file descriptor (a test
    runner's buffer), only `sys.stdout` is redirected.
    """
    out_fd = _fileno(sys.stdout)
    err_fd = _fileno(sys.stderr)
    if out_fd is None or err_fd is None or out_fd == err_fd:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()  # gradtool's own earlier output goes out first, to the real stdout
    saved = os.dup(out_fd)
    try:
        _flush_c_stdio()
        os.dup2(err_fd, out_fd)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        _flush_c_stdio()
        os.dup2(saved, out_fd)
        os.close(saved)


def _fileno(stream: Any) -> int | None:
    """Return the file descriptor under `stream`, or None if it has none (or is closed)."""
    try:
        fd = stream.fileno()
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return None
    return int(fd)


def _flush_c_stdio() -> None:
    """Flush every C stdio stream (`fflush(NULL)`): what the user's C code printed with `printf`
    and left buffered goes where descriptor 1 points now, not wherever it points at exit."""
    with contextlib.suppress(Exception):  # no C library to reach (not POSIX): nothing to flush
        import ctypes

        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def batch_progress() -> Iterator[Callable[[int], None] | None]:
    """Yield a callback showing batches done on stderr (transient), or None off a terminal (and
    on torchrun ranks other than 0)."""
    if not sys.stderr.isatty() or secondary_rank():
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("differentiating: batch {task.completed}"),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task("batches", total=None)
        yield lambda done: bar.update(task, completed=done)


def check_output_path(output: Path, flag: str = "-o", example: str = "report.json") -> None:
    """Raise a `UsageError` unless `-o` (or another `flag` that writes a file) names a file in
    an existing folder."""
    parent = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise UsageError(
            f"{flag} {shown(output)} is a directory",
            hint=f"give a file path, e.g. {flag} {example}",
        )
    if not parent.is_dir():
        raise UsageError(
            f"{flag} {shown(output)}: the folder {Path(shown(output)).parent} does not exist",
            hint="create it first",
        )


def write_text(path: Path, text: str, *, note: bool = True) -> None:
    """Write `text` to `path` atomically (`write_atomic`), remember it as written by this run
    (never removed as an earlier run's), and say so on stderr when `note`."""
    from gradtool.results import write_atomic

    try:
        write_atomic(path, text)
    except OSError as exc:
        raise UsageError(f"cannot write {shown(path)}: {exc.strerror or exc}") from None
    written = _WRITTEN.get()
    if written is not None:
        written.add(path)
    if note:
        stderr_console().print(f"[dim]wrote {escape(shown(path))}[/]")


def stderr_console() -> Any:
    """Return a console on stderr for errors, warnings and notes (markup on, no wrapping)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def escape(text: str) -> str:
    """Return `text` with rich markup escaped, so it prints as written."""
    from rich.markup import escape

    return escape(text)
