"""`gradtool affinity`: what one SGD step on each loss, or along each method's direction, does
to every loss."""

from __future__ import annotations

from typing import Annotated

import typer

from gradtool.cli.errors import handle_errors
from gradtool.cli.options import (
    BatchesOpt,
    CheckpointOpt,
    DeviceOpt,
    EvalOpt,
    GradfileArg,
    JsonOpt,
    OutputOpt,
    ParamsOpt,
    SeedOpt,
    StrategyChoice,
    StrategyOpt,
    VerboseOpt,
    load_options,
    methods_option,
)
from gradtool.cli.output import (
    batch_progress,
    check_output_path,
    emit,
    secondary_rank,
    user_prints_to_stderr,
)


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
    """Lookahead affinity: what one SGD step on each loss does to every loss.

    Also one step along each method's direction; each measured and to first order."""
    from gradtool.analysis.affinity import check_lr
    from gradtool.api import AffinityRequest

    check_lr(lr)  # before the gradfile runs
    methods = methods_option(method)
    request = AffinityRequest(
        gradfile=gradfile,
        lr=lr,
        load=load_options(params, batches, seed, checkpoint, device, eval_mode),
        methods=methods,
        holdout=holdout,
        strategy=strategy.value,
    )
    if output is not None:
        check_output_path(output)
    from gradtool.api import run_affinity
    from gradtool.render import make_console, render_affinity

    with batch_progress() as advance, user_prints_to_stderr():
        report = run_affinity(request, progress=advance)
    if secondary_rank():  # under torchrun, rank 0 alone prints and writes
        return
    emit(report, json_out, output, lambda: render_affinity(report, make_console(), verbose=verbose))
