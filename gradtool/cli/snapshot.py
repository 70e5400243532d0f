"""`gradtool inspect` and `gradtool pareto`: one snapshot of the gradients of a gradfile."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gradtool.cli.errors import handle_errors
from gradtool.cli.options import (
    DEFAULT_CONFLICT_THRESHOLD,
    DEFAULT_TOL,
    DEFAULT_TOP,
    BatchesOpt,
    CheckpointOpt,
    ConflictThresholdOpt,
    DepthOpt,
    DeviceOpt,
    EvalOpt,
    GradfileArg,
    GroupOpt,
    JsonOpt,
    LossGroupOpt,
    LowMemoryOpt,
    MethodsOpt,
    NormalizeChoice,
    OutputOpt,
    ParamsOpt,
    PlotFileOpt,
    PreferenceOpt,
    SeedOpt,
    StrategyChoice,
    StrategyOpt,
    TolOpt,
    TopOpt,
    VerboseOpt,
    conflict_threshold_option,
    groups_option,
    load_options,
    loss_groups_option,
    methods_option,
    tol_option,
)
from gradtool.cli.output import (
    batch_progress,
    check_output_path,
    check_plot_path,
    emit,
    escape,
    secondary_rank,
    shown,
    stderr_console,
    user_prints_to_stderr,
)
from gradtool.errors import UsageError

if TYPE_CHECKING:
    from gradtool.api import InspectRequest
    from gradtool.problem import LoadOptions


@handle_errors
def inspect(
    gradfile: GradfileArg,
    params: ParamsOpt = None,
    group: GroupOpt = None,
    loss_group: LossGroupOpt = None,
    top: TopOpt = None,
    batches: BatchesOpt = None,
    seed: SeedOpt = 0,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "cpu",
    eval_mode: EvalOpt = False,
    depth: DepthOpt = 3,
    strategy: StrategyOpt = StrategyChoice.auto,
    low_memory: LowMemoryOpt = False,
    conflict_threshold: ConflictThresholdOpt = DEFAULT_CONFLICT_THRESHOLD,
    json_out: JsonOpt = False,
    output: OutputOpt = None,
    verbose: VerboseOpt = False,
    plot: PlotFileOpt = None,
) -> None:
    """Per-loss gradient norms, pairwise cosines and conflicts, layers, unused parameters."""
    threshold = conflict_threshold_option(conflict_threshold)
    groups = groups_option(group)
    loss_groups = loss_groups_option(loss_group)
    load = load_options(params, batches, seed, checkpoint, device, eval_mode)
    request = _request("inspect", gradfile, load, depth, strategy, low_memory, threshold, groups)
    request = _many(request, top, loss_groups)
    _execute(request, json_out, output, verbose, plot=plot, top=top)


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
    tol: TolOpt = DEFAULT_TOL,
    conflict_threshold: ConflictThresholdOpt = DEFAULT_CONFLICT_THRESHOLD,
    params: ParamsOpt = None,
    group: GroupOpt = None,
    loss_group: LossGroupOpt = None,
    top: TopOpt = None,
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
    """Exact min-norm (MGDA) Pareto weights, each loss's decrease rate, Pareto-stationarity."""
    from gradtool.analysis import ParetoOptions

    methods = methods_option(method)
    pref = _preference_option(preference, methods, compare)
    stationary_tol = tol_option(tol)
    threshold = conflict_threshold_option(conflict_threshold)
    groups = groups_option(group)
    loss_groups = loss_groups_option(loss_group)
    load = load_options(params, batches, seed, checkpoint, device, eval_mode)
    request = _request("pareto", gradfile, load, depth, strategy, low_memory, threshold, groups)
    request = _many(request, top, loss_groups)
    from dataclasses import replace

    options = ParetoOptions(
        normalize=normalize.value,
        tol=stationary_tol,
        methods=methods,
        compare=compare,
        preference=pref,
    )
    request = replace(request, pareto=options)
    _execute(request, json_out, output, verbose, plot=plot, top=top)


def _request(
    command: str,
    gradfile: Path,
    load: LoadOptions,
    depth: int,
    strategy: StrategyChoice,
    low_memory: bool,
    conflict_threshold: float,
    groups: dict[str, tuple[str, ...]] | None,
) -> InspectRequest:
    from gradtool.api import InspectRequest

    return InspectRequest(
        gradfile=gradfile,
        command=command,
        load=load,
        depth=depth,
        strategy=strategy.value,
        low_memory=low_memory,
        conflict_threshold=conflict_threshold,
        groups=groups,
    )


def _many(
    request: InspectRequest, top: int | None, loss_groups: dict[str, tuple[str, ...]] | None
) -> InspectRequest:
    """Return `request` with the views for many losses: `--top K` (default DEFAULT_TOP kept in
    the JSON) and the `--loss-group` globs."""
    from dataclasses import replace

    return replace(request, top=DEFAULT_TOP if top is None else top, loss_groups=loss_groups)


def _execute(
    request: InspectRequest,
    json_out: bool,
    output: Path | None,
    verbose: bool,
    *,
    plot: Path | None = None,
    top: int | None = None,
) -> None:
    """Run `request`, then print tables or JSON and write `output`; nothing is written on error.
    `top` given: the tables list the most conflicting pairs instead of every pair."""
    if output is not None:
        check_output_path(output)
    if plot is not None:
        check_plot_path(plot)
    from gradtool.api import run_gradfile
    from gradtool.render import make_console, render_report

    with batch_progress() as advance, user_prints_to_stderr():
        report = run_gradfile(request, progress=advance)
    if secondary_rank():  # under torchrun, rank 0 alone prints and writes
        return
    emit(
        report,
        json_out,
        output,
        lambda: render_report(
            report, make_console(), verbose=verbose, top=True if top is not None else None
        ),
    )
    if plot is not None:
        from gradtool.render.plots import plot_snapshot

        path = plot_snapshot(report, plot)
        stderr_console().print(f"[dim]wrote {escape(shown(path))}[/]")


def _preference_option(
    text: str | None, methods: tuple[str, ...], compare: bool
) -> tuple[float, ...] | None:
    """Return the `--preference` floats, checked before the gradfile runs; exit 2 if malformed
    or unused."""
    from gradtool.analysis.compare import check_preference

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(
            f"--preference {text!r} should be comma-separated numbers",
            hint="e.g. --preference 1,1,2 (one positive weight per loss)",
        ) from None
    return check_preference(values, methods, compare)
