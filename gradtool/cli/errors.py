"""Errors for the command line: each `GradtoolError` worded with the CLI's flags, one `Error:`
line and a `Hint:` on stderr, and its exit code; an earlier run's `-o` document is removed when a
run fails, so it cannot pass for this run's."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from gradtool.cli.output import escape, stderr_console
from gradtool.errors import GradtoolError, UsageError, UserCodeError

F = TypeVar("F", bound=Callable[..., Any])

# The library's keyword -> the command line's flag, where they differ beyond '_' -> '-'.
FLAGS: dict[str, str] = {
    "max_batches": "--batches",
    "eval_mode": "--eval",
    "methods": "--method",
    "output": "-o",
}


def cli_option(name: str, value: str | None) -> str:
    """Word an option reference as its flag: `--strategy loop`, or `--strategy` alone."""
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    return flag if value is None else f"{flag} {value}"


def handle_errors(fn: F) -> F:
    """Map `GradtoolError` to 'Error:' / 'Hint:' lines on stderr and its exit code; on any
    failure, remove an earlier run's document at `-o PATH` (it would pass for this run's)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        output = kwargs.get("output")
        gradfile = kwargs.get("gradfile")
        if isinstance(output, Path) and isinstance(gradfile, Path) and _same_path(output, gradfile):
            report_error(UsageError(f"-o {output} is the gradfile itself", "give another file"))
            raise typer.Exit(2)
        try:
            return fn(*args, **kwargs)
        except GradtoolError as exc:
            if os.environ.get("GRADTOOL_DEBUG"):
                raise
            report_error(exc)
            _remove_stale(output)
            raise typer.Exit(exc.exit_code) from None
        except typer.Exit as exc:
            if exc.exit_code:
                _remove_stale(output)
            raise
        except BaseException:
            _remove_stale(output)
            raise

    return wrapper  # type: ignore[return-value]


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


def _remove_stale(output: object) -> None:
    if isinstance(output, Path) and output.is_file():
        output.unlink()
        note = f"removed the earlier {escape(str(output))}: this run failed"
        stderr_console().print(f"[dim]{note}[/]")


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
