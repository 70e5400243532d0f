"""`gradtool report RUN.jsonl`: the gradients over a training run, from a Monitor's run log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gradtool.cli.errors import handle_errors
from gradtool.cli.options import (
    DEFAULT_CONFLICT_THRESHOLD,
    DEFAULT_TOP,
    ConflictThresholdOpt,
    JsonOpt,
    LossGroupOpt,
    OutputOpt,
    conflict_threshold_option,
    loss_groups_option,
)
from gradtool.cli.output import (
    check_output_path,
    emit,
    escape,
    shown,
    stderr_console,
)
from gradtool.errors import UsageError


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
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run",
            help="Which run of the log: its id, a unique beginning of it, or #1 for the first, "
            "#-1 for the last (default: the last run).",
            show_default=False,
        ),
    ] = None,
    conflict_threshold: ConflictThresholdOpt = DEFAULT_CONFLICT_THRESHOLD,
    loss_group: LossGroupOpt = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            min=1,
            help="List the K pairs most often in conflict instead of every pair (default: 10, "
            "beyond 8 losses).",
            show_default=False,
        ),
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option(
            "--ema",
            help="Smooth the cosines, norms and MGDA weights over the records before the tables "
            "and figures: an exponential moving average, ALPHA (0 to 1, exclusive) the newest "
            "record's weight (0.1: half-life 6.6 records). The JSON keeps the raw series.",
            show_default=False,
        ),
    ] = None,
    csv: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            help="Also write the per-record series to this CSV file (atomically): step, loss "
            "values, gradient norms, pairwise cosines, MGDA weights, per layer the lowest cosine.",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Gradients over training, from a Monitor's run log.

    Conflicts per pair over time, norm trends, MGDA weights, the layers where conflict
    concentrates."""
    threshold = conflict_threshold_option(conflict_threshold)
    loss_groups = loss_groups_option(loss_group)
    if ema is not None:
        from gradtool.analysis.timeline import check_ema

        check_ema(ema)
    if output is not None:
        check_output_path(output)
    if csv is not None:
        check_output_path(csv, "--csv", "series.csv")
    if plot is not None:
        from gradtool.render.plots import require_matplotlib

        if plot.exists() and not plot.is_dir():
            raise UsageError(f"--plot {plot} is a file", hint="give a folder, e.g. --plot figures")
        require_matplotlib()
        try:  # before the run: a folder that cannot be made fails now, not after the tables
            plot.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"--plot {shown(plot)}: cannot create the folder: {exc.strerror or exc}",
                hint="give a folder you can write to, e.g. --plot figures",
            ) from None
    from gradtool.api import run_report
    from gradtool.render import make_console, render_timeline

    timeline = run_report(
        run,
        run_id=run_id,
        conflict_threshold=threshold,
        top=DEFAULT_TOP if top is None else top,
        loss_groups=loss_groups,
        ema=ema,
    )
    emit(
        timeline,
        json_out,
        output,
        lambda: render_timeline(timeline, make_console(), top=True if top is not None else None),
        files={csv: timeline.to_csv} if csv is not None else None,
    )
    if plot is not None:
        from gradtool.render.plots import plot_timeline

        for path in plot_timeline(timeline, plot):
            stderr_console().print(f"[dim]wrote {escape(shown(path))}[/]")
