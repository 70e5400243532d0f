"""The library face of the commands: a typed request in, a `Report` out.

The CLI parses options into an `InspectRequest` and calls `run_gradfile`; Python users can do
the same, or build a `Problem` themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gradtool._version import __version__
from gradtool.analysis import DEFAULT_DEPTH, ParetoOptions, build_report
from gradtool.engine import GramianAccumulator, Strategy, batch_jacobian, compute_gramians
from gradtool.loader import LoadOptions, load_problem
from gradtool.problem import validate_losses
from gradtool.report import Report


@dataclass(frozen=True)
class InspectRequest:
    """One `inspect` or `pareto` run on a gradfile."""

    gradfile: Path
    command: str = "inspect"
    load: LoadOptions = field(default_factory=LoadOptions)
    depth: int | None = DEFAULT_DEPTH
    strategy: Strategy = "auto"
    pareto: ParetoOptions | None = None
    low_memory: bool = False  # per-block Gramians as gradients arrive (gradtool.low_memory)


def run_gradfile(request: InspectRequest, progress: Callable[[int], None] | None = None) -> Report:
    """Return the Report for the gradfile of `request`: load, differentiate, analyse."""
    problem = load_problem(request.gradfile, request.load)
    result = compute_gramians(
        problem, strategy=request.strategy, progress=progress, low_memory=request.low_memory
    )
    meta: dict[str, object] = {
        "gradtool_version": __version__,
        "torch_version": torch.__version__,
        "gradfile": str(request.gradfile),
        "device": str(problem.device),
        "seed": request.load.seed,
        "eval_mode": request.load.eval_mode,
        "low_memory": request.low_memory,
    }
    return build_report(
        result,
        command=request.command,
        depth=request.depth,
        pareto=request.pareto,
        meta=meta,
    )


def analyze(
    model: torch.nn.Module,
    losses: Mapping[str, torch.Tensor],
    *,
    parameters: Iterable[tuple[str, torch.nn.Parameter]] | None = None,
    depth: int | None = DEFAULT_DEPTH,
    pareto: ParetoOptions | None = None,
    strategy: Strategy = "auto",
    retain_graph: bool = True,
) -> Report:
    """Return the Report for live loss tensors of `model`, as `gradtool inspect` would.

    `losses` maps names to scalar tensors that share the model's graph; `parameters` defaults to
    every parameter of `model` that requires grad. The graph is retained (so the caller's own
    `backward` still works) unless `retain_graph=False`; no `.grad` is touched.
    """
    checked = validate_losses(losses)
    named = (
        [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if parameters is None
        else list(parameters)
    )
    params = [p for _, p in named]
    selected = {id(p) for p in params}
    others = [p for p in model.parameters() if id(p) not in selected]
    acc = GramianAccumulator(named)
    jac = batch_jacobian(
        checked, params, strategy=strategy, retain_graph=retain_graph, other_leaves=others
    )
    acc.add(list(checked), jac)
    del jac
    meta: dict[str, object] = {"gradtool_version": __version__, "torch_version": torch.__version__}
    return build_report(acc.result(), command="analyze", depth=depth, pareto=pareto, meta=meta)
