"""The `gradtool` command line: parses options into requests and hands them to the library.

Only typer and gradtool's torch-free modules are imported at start-up, so `--help` and
`--version` answer without importing torch. Expected failures (`GradtoolError`) become one
`Error:` line and a `Hint:` on stderr with their exit code, here and nowhere else; set
GRADTOOL_DEBUG=1 to see the full traceback instead.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from gradtool._version import __version__
from gradtool.errors import GradtoolError, UsageError, UserCodeError

if TYPE_CHECKING:
    from gradtool.api import InspectRequest

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="gradtool",
    help="How the gradients of several losses of one PyTorch model relate: norms, conflicts, "
    "unused parameters, and Pareto (MGDA) weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class StrategyChoice(str, Enum):
    auto = "auto"
    batched = "batched"
    loop = "loop"
    backward = "backward"


class NormalizeChoice(str, Enum):
    none = "none"
    l2 = "l2"
    loss = "loss"
    loss_plus = "loss+"


GradfileArg = Annotated[
    Path,
    typer.Argument(
        help="The gradfile: a .py defining `model` and `losses` (it is run).", show_default=False
    ),
]
ParamsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--params", help="Glob on dotted parameter names; repeatable (union).", show_default=False
    ),
]
BatchesOpt = Annotated[
    int | None, typer.Option("--batches", min=1, help="Take at most N batches.", show_default=False)
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed torch/random before the file runs.")]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint", help="Load this state dict into the model first.", show_default=False
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")]
EvalOpt = Annotated[
    bool, typer.Option("--eval", help="Run the model in eval mode (default: train).")
]
DepthOpt = Annotated[
    int, typer.Option("--depth", min=1, help="Group the layer table by module path to this depth.")
]
StrategyOpt = Annotated[
    StrategyChoice,
    typer.Option(
        "--strategy", help="Engine strategy (auto: batched, or the loop where faster or needed)."
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print the JSON document (schema_version 1) and nothing else."),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        help="Also write the JSON document to this file (atomically).",
        show_default=False,
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show engine details.")]
LowMemoryOpt = Annotated[
    bool,
    typer.Option(
        "--low-memory",
        help="Take each parameter block's Gramian as its gradients arrive: extra memory "
        "O(losses x largest block), not O(losses x all parameters) (one batch; see README).",
    ),
]
PlotFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="Also draw the cosine matrix and per-layer cosines to this image (.png, .svg, .pdf; "
        "needs matplotlib).",
        show_default=False,
    ),
]
MethodsOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="Weighting method(s), comma-separated: mgda (exact min-norm), mean, sum, upgrad, "
        "dualproj, pcgrad, imtl_g, aligned_mtl, cagrad, nash_mtl, fairgrad.",
    ),
]
PreferenceOpt = Annotated[
    str | None,
    typer.Option(
        "--preference",
        help="Comma-separated positive weights, one per loss, for the methods that take a "
        "preference (upgrad, dualproj, aligned_mtl).",
        show_default=False,
    ),
]


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


def handle_errors(fn: F) -> F:
    """Map `GradtoolError` to 'Error:' / 'Hint:' lines on stderr and its exit code; on any
    failure, remove an earlier run's document at `-o PATH` (it would pass for this run's)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        output = kwargs.get("output")
        gradfile = kwargs.get("gradfile")
        if isinstance(output, Path) and isinstance(gradfile, Path) and _same_path(output, gradfile):
            _report(UsageError(f"-o {output} is the gradfile itself", "give another file"))
            raise typer.Exit(2)
        try:
            return fn(*args, **kwargs)
        except GradtoolError as exc:
            if os.environ.get("GRADTOOL_DEBUG"):
                raise
            _report(exc)
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


def _report(exc: GradtoolError) -> None:
    err = _stderr_console()
    if isinstance(exc, UserCodeError) and exc.traceback:
        sys.stderr.write(exc.traceback)
        if not exc.traceback.endswith("\n"):
            sys.stderr.write("\n")
    err.print(f"[bold red]Error:[/] {_escape(exc.message)}")
    if exc.hint:
        err.print(f"[bold]Hint:[/] {_escape(exc.hint)}")


def _remove_stale(output: object) -> None:
    if isinstance(output, Path) and output.is_file():
        output.unlink()
        _stderr_console().print(
            f"[dim]removed the earlier {_escape(str(output))}: this run failed[/]"
        )


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


@app.command()
@handle_errors
def inspect(
    gradfile: GradfileArg,
    params: ParamsOpt = None,
    batches: BatchesOpt = None,
    seed: SeedOpt = 0,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "cpu",
    eval_mode: EvalOpt = False,
    depth: DepthOpt = 3,
    strategy: StrategyOpt = StrategyChoice.auto,
    low_memory: LowMemoryOpt = False,
    json_out: JsonOpt = False,
    output: OutputOpt = None,
    verbose: VerboseOpt = False,
    plot: PlotFileOpt = None,
) -> None:
    """Per-loss gradient norms, pairwise cosines and conflicts, layers, unused parameters."""
    request = _request(
        "inspect",
        gradfile,
        params,
        batches,
        seed,
        checkpoint,
        device,
        eval_mode,
        depth,
        strategy,
        low_memory=low_memory,
    )
    _execute(request, json_out, output, verbose, plot=plot)


@app.command()
@handle_errors
def pareto(
    gradfile: GradfileArg,
    method: MethodsOpt = "mgda",
    compare: Annotated[
        bool,
        typer.Option("--compare", help="Compare every available weighting method in one table."),
    ] = False,
    preference: PreferenceOpt = None,
    normalize: Annotated[
        NormalizeChoice,
        typer.Option(
            "--normalize", help="Normalise gradients first (MGDA-UB): by norm, loss, or both."
        ),
    ] = NormalizeChoice.none,
    params: ParamsOpt = None,
    batches: BatchesOpt = None,
    seed: SeedOpt = 0,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "cpu",
    eval_mode: EvalOpt = False,
    depth: DepthOpt = 3,
    strategy: StrategyOpt = StrategyChoice.auto,
    low_memory: LowMemoryOpt = False,
    json_out: JsonOpt = False,
    output: OutputOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Exact min-norm (MGDA) Pareto weights, each loss's decrease rate, Pareto-stationarity."""
    from gradtool.analysis import ParetoOptions

    methods = _methods_option(method)
    pref = _preference_option(preference, methods, compare)
    request = _request(
        "pareto",
        gradfile,
        params,
        batches,
        seed,
        checkpoint,
        device,
        eval_mode,
        depth,
        strategy,
        low_memory=low_memory,
    )
    from dataclasses import replace

    options = ParetoOptions(
        normalize=normalize.value, methods=methods, compare=compare, preference=pref
    )
    request = replace(request, pareto=options)
    _execute(request, json_out, output, verbose)


def _request(
    command: str,
    gradfile: Path,
    params: list[str] | None,
    batches: int | None,
    seed: int,
    checkpoint: Path | None,
    device: str,
    eval_mode: bool,
    depth: int,
    strategy: StrategyChoice,
    low_memory: bool = False,
) -> InspectRequest:
    from gradtool.api import InspectRequest
    from gradtool.loader import LoadOptions

    load = LoadOptions(
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        eval_mode=eval_mode,
        params=tuple(params or ()),
        max_batches=batches,
    )
    return InspectRequest(
        gradfile=gradfile,
        command=command,
        load=load,
        depth=depth,
        strategy=strategy.value,
        low_memory=low_memory,
    )


def _execute(
    request: InspectRequest,
    json_out: bool,
    output: Path | None,
    verbose: bool,
    *,
    plot: Path | None = None,
) -> None:
    """Run `request`, then print tables or JSON and write `output`; nothing is written on error."""
    if output is not None:
        _check_output_path(output)
    if plot is not None:
        _check_plot_path(plot)
    from gradtool.api import run_gradfile
    from gradtool.render import make_console, render_report

    with batch_progress() as advance, _user_prints_to_stderr():
        report = run_gradfile(request, progress=advance)
    _emit(report, json_out, output, lambda: render_report(report, make_console(), verbose=verbose))
    if plot is not None:
        from gradtool.plots import plot_snapshot

        path = plot_snapshot(report, plot)
        _stderr_console().print(f"[dim]wrote {_escape(str(path))}[/]")


def _emit(report: Any, json_out: bool, output: Path | None, render: Callable[[], None]) -> None:
    """Print `report`'s warnings (stderr), then its JSON or tables; write `output` atomically."""
    from gradtool.report import write_atomic

    err = _stderr_console()
    for warning in report.warnings:
        err.print(f"[bold yellow]Warning:[/] {_escape(warning)}")
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
            err.print(f"[dim]wrote {_escape(str(output))}[/]")


@app.command("report")
@handle_errors
def report_command(
    run: Annotated[
        Path,
        typer.Argument(help="The run log (.jsonl) a gradtool.Monitor wrote.", show_default=False),
    ],
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also write PNG figures to this folder (created): cosine_pairs, grad_norms, "
            "mgda_weights, layer_conflict (needs matplotlib).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Gradients over training, from a Monitor's run log: conflicts per pair over time, norm
    trends, MGDA weights, the layers where conflict concentrates."""
    if output is not None:
        _check_output_path(output)
    if plot is not None:
        from gradtool.plots import require_matplotlib

        if plot.exists() and not plot.is_dir():
            raise UsageError(f"--plot {plot} is a file", hint="give a folder, e.g. --plot figures")
        require_matplotlib()
    from gradtool.render import make_console
    from gradtool.render_timeline import render_timeline
    from gradtool.runlog import read_run
    from gradtool.timeline import build_timeline

    timeline = build_timeline(read_run(run))
    _emit(timeline, json_out, output, lambda: render_timeline(timeline, make_console()))
    if plot is not None:
        from gradtool.plots import plot_timeline

        for path in plot_timeline(timeline, plot):
            _stderr_console().print(f"[dim]wrote {_escape(str(path))}[/]")


def _check_plot_path(plot: Path) -> None:
    from gradtool.plots import SNAPSHOT_SUFFIXES, require_matplotlib

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


def _user_prints_to_stderr() -> contextlib.AbstractContextManager[object]:
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
        console=_stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task("batches", total=None)
        yield lambda done: bar.update(task, completed=done)


def _check_output_path(output: Path) -> None:
    parent = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise UsageError(
            f"-o {output} is a directory", hint="give a file path, e.g. -o report.json"
        )
    if not parent.is_dir():
        raise UsageError(f"-o {output}: the folder {parent} does not exist", hint="create it first")


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def main() -> None:
    """Console-script entry point."""
    app()


def _methods_option(text: str) -> tuple[str, ...]:
    """Return the registry names in `--method` (comma-separated); exit 2 on an unknown one."""
    from gradtool.weightings import parse_methods

    try:
        return parse_methods(text)
    except ValueError as exc:
        raise UsageError(f"--method: {exc}") from None


def _preference_option(
    text: str | None, methods: tuple[str, ...], compare: bool
) -> tuple[float, ...] | None:
    """Return the `--preference` floats (positive, finite); exit 2 if malformed or unused."""
    import math

    from gradtool.weightings import preference_methods

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(
            f"--preference {text!r} should be comma-separated numbers",
            hint="e.g. --preference 1,1,2 (one positive weight per loss)",
        ) from None
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise UsageError(
            f"--preference values should be positive and finite; found {bad[0]:g}",
            hint="e.g. --preference 1,1,2 (one positive weight per loss)",
        )
    takers = preference_methods()
    if not compare and not any(name in takers for name in methods):
        raise UsageError(
            f"--preference applies to {', '.join(takers)}; none of --method {','.join(methods)} "
            "takes one",
            hint=f"e.g. --method {methods[0]},{takers[0]} --preference {text}",
        )
    return values


@app.command()
@handle_errors
def affinity(
    gradfile: GradfileArg,
    lr: Annotated[
        float,
        typer.Option("--lr", help="Step size of the one SGD lookahead step.", show_default=False),
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="Also step along these methods' combined directions (comma-separated; "
            "see `gradtool pareto --help`).",
        ),
    ] = "mgda,mean",
    holdout: Annotated[
        bool,
        typer.Option(
            "--holdout", help="Evaluate each batch's step on the next batch (default: same one)."
        ),
    ] = False,
    params: ParamsOpt = None,
    batches: BatchesOpt = None,
    seed: SeedOpt = 0,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "cpu",
    eval_mode: EvalOpt = False,
    strategy: StrategyOpt = StrategyChoice.auto,
    json_out: JsonOpt = False,
    output: OutputOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Lookahead affinity: how one SGD step on each loss, or each method's direction, changes
    every loss, measured and to first order."""
    from gradtool.affinity import AffinityRequest, check_lr
    from gradtool.loader import LoadOptions

    check_lr(lr)  # before the gradfile runs
    methods = _methods_option(method)
    load = LoadOptions(
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        eval_mode=eval_mode,
        params=tuple(params or ()),
        max_batches=batches,
    )
    request = AffinityRequest(
        gradfile=gradfile,
        lr=lr,
        load=load,
        methods=methods,
        holdout=holdout,
        strategy=strategy.value,
    )
    if output is not None:
        _check_output_path(output)
    from gradtool.affinity import run_affinity
    from gradtool.render import make_console, render_affinity

    with batch_progress() as advance, _user_prints_to_stderr():
        report = run_affinity(request, progress=advance)
    _emit(
        report, json_out, output, lambda: render_affinity(report, make_console(), verbose=verbose)
    )
