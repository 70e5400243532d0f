"""Errors for the command line: each `GradtoolError` worded with the CLI's flags, one `Error:`
line and a `Hint:` on stderr, and its exit code.

Around every command, before any work: output paths are made absolute (a gradfile that changes
the working folder moves nothing) and an output that is one of the run's inputs is refused. After
a failure, an earlier run's document at `-o` (or table at `--csv`) is removed (it would pass for
this run's); a document this run wrote, and anything that is not a regular file, is kept.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer

from gradtool.cli.output import command_paths, escape, secondary_rank, shown, stderr_console
from gradtool.errors import GradtoolError, OptionValue, UsageError, UserCodeError

F = TypeVar("F", bound=Callable[..., Any])

# The library's keyword -> the command line's flag, where they differ beyond '_' -> '-'.
FLAGS: dict[str, str] = {
    "max_batches": "--batches",
    "eval_mode": "--eval",
    "methods": "--method",
    "groups": "--group",
    "loss_groups": "--loss-group",
    "output": "-o",
}

# The commands' keyword arguments that name a file the run reads, and what each is called.
INPUTS: dict[str, str] = {
    "gradfile": "the gradfile",
    "checkpoint": "the checkpoint",
    "run": "the run log",
}

# The keyword arguments that name a document the run writes whole (`-o`, `--csv`): an earlier
# run's document there is removed when this run fails.
DOCUMENTS = ("output", "csv")

# Path arguments kept as typed: each is read before any of the user's code runs, and is shown
# back (table headers, the document's `gradfile`), so a relative path stays relative there.
READ_FIRST = ("gradfile", "run")


def cli_option(name: str, value: OptionValue) -> str:
    """Word an option reference as its flag: `--strategy loop`, `--method mgda,upgrad`, or
    `--strategy` alone."""
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    if isinstance(value, tuple):
        value = ",".join(value)
    return flag if value is None else f"{flag} {value}"


def handle_errors(fn: F) -> F:
    """Run the command `fn` with its output paths absolute and checked against its inputs; map
    `GradtoolError` to 'Error:' / 'Hint:' lines on stderr and its exit code; on any failure,
    remove an earlier run's document at `-o PATH` (it would pass for this run's)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        typed = dict(kwargs)
        kwargs = absolute_paths(kwargs)
        documents = [kwargs.get(key) for key in DOCUMENTS]
        try:
            check_targets(kwargs, typed)
        except UsageError as exc:
            if os.environ.get("GRADTOOL_DEBUG"):
                raise
            report_error(exc)
            raise typer.Exit(exc.exit_code) from None
        made_absolute = {
            kwargs[key]: typed[key]
            for key in kwargs
            if isinstance(typed[key], Path) and kwargs[key] != typed[key]
        }
        with command_paths(made_absolute) as written:
            try:
                return fn(*args, **kwargs)
            except GradtoolError as exc:
                if _quiet_rank(exc):
                    raise typer.Exit(exc.exit_code) from None
                _remove_stale(documents, written)
                if os.environ.get("GRADTOOL_DEBUG"):
                    raise
                report_error(exc)
                raise typer.Exit(exc.exit_code) from None
            except typer.Exit as exc:
                if exc.exit_code:
                    _remove_stale(documents, written)
                raise
            except BaseException as exc:
                if _quiet_rank(exc):
                    raise typer.Exit(1) from None
                _remove_stale(documents, written)
                raise

    return wrapper  # type: ignore[return-value]


def _quiet_rank(exc: BaseException) -> bool:
    """Return whether `exc` is a failure every torchrun rank shares and this is not rank 0, which
    words it once for all (see gradtool.engine.distributed.agree)."""
    return secondary_rank() and bool(getattr(exc, "gradtool_relayed", False))


def report_error(exc: GradtoolError) -> None:
    """Print `exc` for the command line: the user's traceback if any, `Error:` and `Hint:`."""
    err = stderr_console()
    if isinstance(exc, UserCodeError) and exc.traceback:
        sys.stderr.write(exc.traceback)
        if not exc.traceback.endswith("\n"):
            sys.stderr.write("\n")
    message, hint = exc.worded(cli_option)
    err.print(f"[bold red]Error:[/] {escape(message)}")
    if hint:
        err.print(f"[bold]Hint:[/] {escape(hint)}")


def absolute_paths(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return `kwargs` with every `Path` absolute (`Path.absolute`: symbolic links are kept, so
    `-o link` still writes through the link), except the READ_FIRST inputs.

    The gradfile may change the working folder (`os.chdir`) when imported or in `losses`; a
    relative `-o`, `--plot` or `--checkpoint` used after that would point somewhere else.
    """
    return {
        key: value.absolute() if isinstance(value, Path) and key not in READ_FIRST else value
        for key, value in kwargs.items()
    }


def check_targets(kwargs: dict[str, Any], typed: dict[str, Any]) -> None:
    """Raise a `UsageError` if `-o`, `--csv` or a file `--plot` writes is one of the run's
    inputs, or if two of them name the same file; `typed` holds the paths as the user wrote them.

    Two paths are the same file when they resolve to the same path (symbolic links followed) or,
    both existing, share device and inode (hard links, bind mounts).
    """
    inputs = [
        (role, kwargs[key], typed[key])
        for key, role in INPUTS.items()
        if isinstance(kwargs.get(key), Path)
    ]
    output, csv, plot = kwargs.get("output"), kwargs.get("csv"), kwargs.get("plot")
    targets: list[tuple[str, Path]] = []
    if isinstance(output, Path):
        targets.append((f"-o {typed['output']}", output))
    if isinstance(csv, Path):
        csv_flag = f"--csv {typed['csv']}"
        if isinstance(output, Path) and _same_file(output, csv):
            raise UsageError(
                f"-o {typed['output']} and {csv_flag} name the same file",
                hint="give the JSON document and the CSV table a path each",
                option="csv",
                reason="output_is_csv",
            )
        targets.append((csv_flag, csv))
    if isinstance(plot, Path):
        figures = [(f"--plot {typed['plot']}{note}", path) for note, path in _plot_files(plot)]
        for flag, path in [(f"--plot {typed['plot']}", plot), *figures]:
            if isinstance(output, Path) and _same_file(output, path):
                raise UsageError(
                    f"-o {typed['output']} and {flag} name the same file",
                    hint="give the JSON document and the figures a path each",
                    option="output",
                    reason="output_is_plot",
                )
            if isinstance(csv, Path) and _same_file(csv, path):
                raise UsageError(
                    f"--csv {typed['csv']} and {flag} name the same file",
                    hint="give the CSV table and the figures a path each",
                    option="csv",
                    reason="output_is_plot",
                )
        targets += figures
    for flag, target in targets:
        for role, source, as_typed in inputs:
            if _same_file(target, source) or _inside_folder(target, source):
                raise UsageError(
                    f"{flag} would overwrite {role} {as_typed}, an input of this run",
                    hint="write to a new file: an input is never replaced",
                    option=_option_of(flag),
                    reason="output_is_input",
                )


def _option_of(flag: str) -> str:
    """Return the keyword of the option a target's flag text names ('-o x' -> 'output')."""
    if flag.startswith("-o"):
        return "output"
    return "csv" if flag.startswith("--csv") else "plot"


def _inside_folder(target: Path, source: Path) -> bool:
    """Return whether `source` is a folder (a save_pretrained checkpoint) holding `target`: every
    file in it may be read (weights, shards, their index), so none may be written."""
    try:
        return source.is_dir() and target.resolve().is_relative_to(source.resolve())
    except OSError:
        return False


def _plot_files(plot: Path) -> Iterator[tuple[str, Path]]:
    """Yield (note, path) for each file `--plot` writes: the image itself (`inspect`), or, where
    `--plot` names a folder (`report`), each timeline figure inside it."""
    from gradtool.render.plots import SNAPSHOT_SUFFIXES, TIMELINE_FIGURES

    if plot.suffix.lower() in SNAPSHOT_SUFFIXES and not plot.is_dir():
        yield "", plot
        return
    for name in TIMELINE_FIGURES:
        yield f" (its {name})", plot / name


def _same_file(a: Path, b: Path) -> bool:
    """Return True if `a` and `b` are one file: the same resolved path, or the same inode."""
    with contextlib.suppress(OSError, RuntimeError):
        if a.resolve() == b.resolve():
            return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _remove_stale(documents: list[object], written: set[Path]) -> None:
    """Remove the document an earlier run left at each of `documents` (`-o`, `--csv`), unless
    this run wrote it (see `_remove_one`)."""
    for output in documents:
        _remove_one(output, written)


def _remove_one(output: object, written: set[Path]) -> None:
    """Remove the document an earlier run left at `output`, unless this run wrote it.

    Only a regular file is unlinked. A symbolic link is never followed to remove its target
    (nor removed: it is the user's), a device or FIFO is never touched; where an earlier
    document may remain, or cannot be removed (a read-only folder), a warning says so.
    """
    if not isinstance(output, Path) or output in written:
        return
    try:
        mode = os.lstat(output).st_mode
    except OSError:
        return  # nothing there
    err = stderr_console()
    name = escape(shown(output))
    if stat.S_ISLNK(mode):
        if output.is_file():
            err.print(
                f"[bold yellow]Warning:[/] {name} links to an earlier run's document, kept "
                "(a link is not followed to remove its target): this run failed"
            )
        return
    if not stat.S_ISREG(mode):
        return
    try:
        output.unlink()
    except OSError as exc:
        reason = escape(exc.strerror or str(exc))
        err.print(
            f"[bold yellow]Warning:[/] could not remove the earlier {name} ({reason}): "
            "it is not this run's document"
        )
        return
    err.print(f"[dim]removed the earlier {name}: this run failed[/]")
