"""The use cases the CLI and the library share: a typed request in, a result document out.

`run_gradfile` (inspect, pareto), `run_affinity` (affinity) and `run_report` (report on a run log)
each load what they need, compute, and return plain data; `analyze` does the same for live loss
tensors of a training step. The CLI parses options into these requests and words the results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from gradtool._version import __version__
from gradtool.analysis import (
    DEFAULT_CONFLICT_THRESHOLD,
    DEFAULT_DEPTH,
    DEFAULT_METHODS,
    ParetoOptions,
    build_report,
    build_timeline,
    lookahead_affinity,
    pareto_options,
)
from gradtool.analysis.affinity import check_lr
from gradtool.analysis.layers import GroupsArg, check_groups, group_by_globs
from gradtool.analysis.loss_groups import LossGroupsArg, check_loss_groups, group_losses
from gradtool.analysis.report import DEFAULT_TOP, check_top
from gradtool.analysis.timeline import check_ema
from gradtool.engine import Strategy, compute_gramians, distributed
from gradtool.engine.distributed import Group
from gradtool.errors import UsageError, opt
from gradtool.problem import (
    LoadOptions,
    Problem,
    frozen_parameters,
    load_problem,
    parameter_aliases,
    tied_parameters,
)
from gradtool.results import AffinityReport, Report, TimelineReport, read_run


@dataclass(frozen=True)
class InspectRequest:
    """One `inspect` or `pareto` run on a gradfile."""

    gradfile: Path
    command: str = "inspect"
    load: LoadOptions = field(default_factory=LoadOptions)
    depth: int | None = DEFAULT_DEPTH
    strategy: Strategy = "auto"
    pareto: ParetoOptions | None = None
    low_memory: bool = False  # per-block Gramians as gradients arrive (gradtool.engine.low_memory)
    conflict_threshold: float = DEFAULT_CONFLICT_THRESHOLD  # a cosine below -this is a conflict
    # Parameter groups across modules: name -> glob(s) on the dotted parameter names; a table
    # beside the layers (`Report.groups`).
    groups: GroupsArg | None = None
    top: int = DEFAULT_TOP  # the most conflicting pairs kept (`Report.top_pairs`)
    # Loss groups: name -> glob(s) on the loss names; the Gramian of each group's summed
    # gradient (`Report.loss_groups`).
    loss_groups: LossGroupsArg | None = None


@dataclass(frozen=True)
class AffinityRequest:
    """One `affinity` run on a gradfile: the step size, the methods, same-batch or holdout."""

    gradfile: Path
    lr: float
    load: LoadOptions = field(default_factory=LoadOptions)
    methods: tuple[str, ...] = DEFAULT_METHODS
    holdout: bool = False
    strategy: Strategy = "auto"


def run_gradfile(request: InspectRequest, progress: Callable[[int], None] | None = None) -> Report:
    """Return the Report for the gradfile of `request`: load, differentiate, analyse.

    Under torchrun (detected from its environment) each rank takes batches k with k mod R equal
    to its rank, and every rank returns the single-process run's result over all batches (see
    `gradtool.engine.distributed`); a failure on one rank is an error on every rank.
    """
    groups = check_groups(request.groups)
    check_top(request.top)
    check_loss_groups(request.loss_groups)
    problem, group = _load_distributed(
        request.gradfile, request.load, check=lambda problem: _check_groups(problem, groups)
    )
    result = compute_gramians(
        problem,
        strategy=request.strategy,
        progress=progress,
        low_memory=request.low_memory,
        group=group,
    )
    meta: dict[str, object] = {
        **_versions(),
        "gradfile": str(request.gradfile),
        "device": str(problem.device),
        "seed": request.load.seed,
        "eval_mode": request.load.eval_mode,
        "low_memory": request.low_memory,
        **_problem_meta(problem),
        **_distributed_meta(group),
    }
    report = build_report(
        result,
        command=request.command,
        depth=request.depth,
        pareto=request.pareto,
        meta=meta,
        conflict_threshold=request.conflict_threshold,
        groups=groups,
        aliases=parameter_aliases(problem.model) if groups else None,
        top=request.top,
        loss_groups=request.loss_groups,
    )
    report.warnings = [*problem.notes, *report.warnings]
    return report


def _check_groups(problem: Problem, groups: dict[str, tuple[str, ...]] | None) -> None:
    """Raise a `UsageError` when a glob of `groups` matches none of the problem's parameters
    (before any gradient is taken)."""
    if groups:
        names = [name for name, _ in problem.parameters]
        group_by_globs(names, groups, aliases=parameter_aliases(problem.model))


def run_affinity(
    request: AffinityRequest, progress: Callable[[int], None] | None = None
) -> AffinityReport:
    """Return the AffinityReport for the gradfile of `request`: load, differentiate, step."""
    check_lr(request.lr)
    if request.holdout and request.load.max_batches == 1:
        raise UsageError(
            f"{opt('holdout')} evaluates each step on the next batch, so it needs at least 2 "
            f"batches; {opt('max_batches', 1)} gives one",
            hint=f"raise {opt('max_batches')}, or drop {opt('holdout')} to evaluate on the same "
            "batch",
            option="holdout",
        )
    if request.holdout and distributed.launched_by_torchrun():
        raise UsageError(
            f"{opt('holdout')} evaluates each step on the next batch, which another rank holds: "
            "it runs in a single process only",
            hint="run it without torchrun, or drop the holdout to evaluate on the same batch",
            option="holdout",
        )
    problem, group = _load_distributed(request.gradfile, request.load)
    report = lookahead_affinity(
        problem,
        request.lr,
        methods=request.methods,
        holdout=request.holdout,
        strategy=request.strategy,
        seed=request.load.seed or 0,
        progress=progress,
        group=group,
    )
    report.meta.update(
        {
            **_versions(),
            "gradfile": str(request.gradfile),
            "device": str(problem.device),
            "seed": request.load.seed,
            "eval_mode": request.load.eval_mode,
            **_problem_meta(problem),
            **_distributed_meta(group),
        }
    )
    report.warnings = [*problem.notes, *report.warnings]
    return report


def _load_distributed(
    gradfile: Path, load: LoadOptions, check: Callable[[Problem], None] | None = None
) -> tuple[Problem, Group | None]:
    """Return the problem of `gradfile`, and the torchrun process group (None outside one), each
    rank taking its share of the batches; a load (or `check` of the loaded problem) failing on
    any rank fails on every rank."""
    group = distributed.init_from_env(load.device)
    if group is None:
        loaded = load_problem(gradfile, load)
        if check is not None:
            check(loaded)
        return loaded, None
    load = replace(load, device=distributed.local_device(load.device) or load.device)
    problem: Problem | None = None
    error: BaseException | None = None
    try:
        problem = load_problem(gradfile, load)
        if check is not None:
            check(problem)
    except Exception as exc:
        error = exc
    distributed.agree(group, error)
    assert problem is not None
    problem.shard = (group.rank, group.world)
    return problem, group


def _distributed_meta(group: Group | None) -> dict[str, object]:
    if group is None:
        return {}
    return {"distributed": {"world": group.world, "backend": distributed.backend()}}


def run_report(
    run: Path | str,
    *,
    run_id: str | int | None = None,
    conflict_threshold: float = DEFAULT_CONFLICT_THRESHOLD,
    top: int = DEFAULT_TOP,
    loss_groups: LossGroupsArg | None = None,
    ema: float | None = None,
) -> TimelineReport:
    """Return the TimelineReport of the run log at `run` (a Monitor's JSON lines): of its last
    run, or of `run_id` (an id, a unique beginning of one, or '#k' for the k-th run, '#-1' the
    last); a record's cosine below -`conflict_threshold` is a conflict.

    `top`: the pairs most often in conflict kept (`top_pairs`); `loss_groups` (name -> globs
    on the loss names): each group's summed gradient over the run; `ema` (alpha in (0, 1)):
    the tables are of the cosines, norms and MGDA weights smoothed over the records,
    s_t = alpha x_t + (1 - alpha) s_{t-1} (the raw series stay in `series`).
    """
    check_top(top)
    check_loss_groups(loss_groups)
    if ema is not None:
        check_ema(ema)
    return build_timeline(
        read_run(run, run=run_id),
        conflict_threshold=conflict_threshold,
        top=top,
        loss_groups=loss_groups,
        ema=ema,
    )


def analyze(
    model: torch.nn.Module,
    losses: Mapping[str, torch.Tensor],
    *,
    parameters: Iterable[Any] | None = None,
    depth: int | None = DEFAULT_DEPTH,
    pareto: ParetoOptions | bool | None = None,
    strategy: Strategy = "auto",
    retain_graph: bool = True,
    conflict_threshold: float = DEFAULT_CONFLICT_THRESHOLD,
    groups: GroupsArg | None = None,
    top: int = DEFAULT_TOP,
    loss_groups: LossGroupsArg | None = None,
) -> Report:
    """Return the Report for live loss tensors of `model`, as `gradtool inspect` would.

    `losses` maps names to scalar tensors that share the model's graph; `parameters` defaults to
    every parameter of `model` that requires grad. `pareto`: True (or `ParetoOptions`) adds the
    MGDA section; a pair conflicts where cos < -conflict_threshold. `groups` maps a name to
    one glob or a list of globs on the dotted parameter names (`{"attention": "*.attn.*"}`):
    each group's norms and cosines over its parameters, across modules (`Report.groups`).
    `top`: how many of the most conflicting pairs `Report.top_pairs` keeps. `loss_groups` maps a
    name to one glob or a list of globs on the loss names (`{"aux": "aux_*"}`): the Gramian of
    each group's summed gradient, G_AB = sum_{i in A, j in B} G_ij (`Report.loss_groups`). The
    graph is retained (so the caller's own `backward` still works) unless
    `retain_graph=False`; no `.grad` is touched.
    """
    checked = check_groups(groups)
    check_top(top)
    checked_losses = check_loss_groups(loss_groups)
    problem = Problem.live(model, losses, parameters)
    _check_groups(problem, checked)
    if checked_losses:  # a glob matching no loss fails before any gradient
        group_losses(list(losses), checked_losses)
    result = compute_gramians(problem, strategy=strategy, retain_graph=retain_graph)
    return build_report(
        result,
        command="analyze",
        depth=depth,
        pareto=pareto_options(pareto),
        conflict_threshold=conflict_threshold,
        meta={**_versions(), **_problem_meta(problem)},
        groups=checked,
        aliases=parameter_aliases(model) if checked else None,
        top=top,
        loss_groups=checked_losses,
    )


def _versions() -> dict[str, object]:
    return {"gradtool_version": __version__, "torch_version": torch.__version__}


def _problem_meta(problem: Problem) -> dict[str, object]:
    """Return the problem's facts a reader should know beside the numbers.

    `tied_parameters`: [kept name, [other names]] per analysed parameter shared under several
    names (counted once; its gradient sums every use). `frozen_parameters`: {"count", "numel"}
    of the model's parameters that do not require grad (never analysed). `checkpoint` (when one
    was loaded): its path, format, files, keys loaded, renaming, tied keys it left out, keys the
    model has no place for.
    """
    meta: dict[str, object] = {
        "tied_parameters": tied_parameters(problem.model, problem.parameters),
        "frozen_parameters": frozen_parameters(problem.model),
    }
    if problem.checkpoint is not None:
        meta["checkpoint"] = problem.checkpoint
    return meta
