"""The `gradtool` command line: parses options into requests and hands them to the library.

Only typer and gradtool's torch-free modules are imported at start-up, so `--help` and
`--version` answer without importing torch. Expected failures (`GradtoolError`) become one
`Error:` line and a `Hint:` on stderr with their exit code (`gradtool.cli.errors`), worded with
the command line's flags; set GRADTOOL_DEBUG=1 to see the full traceback instead.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from gradtool._version import __version__
from gradtool.cli import affinity, report, snapshot
from gradtool.cli.output import escape, stderr_console


def _click_class(name: str) -> type[Exception]:
    """Return click's exception class `name` (typer may vendor its own click)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_CLICK_USAGE = _click_class("UsageError")
_CLICK_ERROR = _click_class("ClickException")


class _Group(TyperGroup):
    """The app's group: usage errors (a bad option value, a missing argument, an unknown option)
    are one `Error:` line and a `Hint:` naming the command's help, exit 2, like gradtool's own."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _CLICK_USAGE as exc:
            argv = kwargs.get("args") or (args[0] if args else None) or sys.argv[1:]
            command = next((a for a in argv if a in self.commands), None)
            code = _usage_error(exc, command)
        except _CLICK_ERROR as exc:
            stderr_console().print(f"[bold red]Error:[/] {escape(exc.format_message())}")  # type: ignore[attr-defined]
            code = getattr(exc, "exit_code", 1)
        except typer.Abort:
            stderr_console().print("[bold red]Error:[/] aborted")
            code = 1
        code = code if isinstance(code, int) else 0
        if standalone:
            sys.exit(code)
        return code


def _usage_error(exc: Exception, command: str | None = None) -> int:
    """Print a click usage error as `Error:` + `Hint:` (or the help it carries); return 2.

    The hint names the help of `command` (the subcommand on the command line) where the error's
    own context is the group's (an option missing its value is reported there)."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        typer.echo(ctx.get_help())
        return 2
    path = ctx.command_path if ctx is not None else "gradtool"
    if command is not None and path == "gradtool":
        path = f"gradtool {command}"
    err = stderr_console()
    err.print(f"[bold red]Error:[/] {escape(exc.format_message())}")  # type: ignore[attr-defined]
    err.print(f"[bold]Hint:[/] {escape(f'{path} --help')} lists the options and their ranges")
    return 2


app = typer.Typer(
    cls=_Group,
    name="gradtool",
    help="How the gradients of several losses of one PyTorch model relate: norms, conflicts, "
    "unused parameters, and Pareto (MGDA) weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"gradtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """gradtool: compare the gradients of a model's losses."""


app.command()(snapshot.inspect)
app.command()(snapshot.pareto)
app.command()(affinity.affinity)
app.command("report")(report.report_command)


def main() -> None:
    """Console-script entry point."""
    app()
