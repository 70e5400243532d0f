"""The library face of the commands: a typed request in, a `Report` out.

The CLI parses options into an `InspectRequest` and calls `run_gradfile`; Python users can do
the same, or build a `Problem` themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gradtool._version import __version__
from gradtool.analysis import DEFAULT_DEPTH, ParetoOptions, build_report
from gradtool.engine import Strategy, compute_gramians
from gradtool.loader import LoadOptions, load_problem
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


def run_gradfile(request: InspectRequest, progress: Callable[[int], None] | None = None) -> Report:
    """Return the Report for the gradfile of `request`: load, differentiate, analyse."""
    problem = load_problem(request.gradfile, request.load)
    result = compute_gramians(problem, strategy=request.strategy, progress=progress)
    meta: dict[str, object] = {
        "gradtool_version": __version__,
        "torch_version": torch.__version__,
        "gradfile": str(request.gradfile),
        "device": str(problem.device),
        "seed": request.load.seed,
        "eval_mode": request.load.eval_mode,
    }
    return build_report(
        result,
        command=request.command,
        depth=request.depth,
        pareto=request.pareto,
        meta=meta,
    )
