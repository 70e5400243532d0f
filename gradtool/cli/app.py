"""The `gradtool` command line: parses options into requests and hands them to the library.

Only typer and gradtool's torch-free modules are imported at start-up, so `--help` and
`--version` answer without importing torch. Expected failures (`GradtoolError`) become one
`Error:` line and a `Hint:` on stderr with their exit code (`gradtool.cli.errors`), worded with
the command line's flags; set GRADTOOL_DEBUG=1 to see the full traceback instead.
"""

from __future__ import annotations

from typing import Annotated

import typer

from gradtool._version import __version__
from gradtool.cli import affinity, report, snapshot

app = typer.Typer(
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
