"""gradtool: how the gradients of several losses of one PyTorch model relate.

Public names are imported lazily, so `import gradtool` (and `gradtool --help`) stay torch-free
until a name that needs torch is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradtool._version import __version__

if TYPE_CHECKING:
    from gradtool.analysis import ParetoOptions, build_report
    from gradtool.api import InspectRequest, analyze, run_gradfile
    from gradtool.engine import EngineResult, batch_jacobian, compute_gramians
    from gradtool.errors import GradtoolError
    from gradtool.loader import LoadOptions, load_problem
    from gradtool.min_norm import MinNormSolution, min_norm_weights
    from gradtool.pareto import pareto_solution
    from gradtool.problem import Problem
    from gradtool.report import Report

_EXPORTS: dict[str, str] = {
    "EngineResult": "gradtool.engine",
    "GradtoolError": "gradtool.errors",
    "InspectRequest": "gradtool.api",
    "LoadOptions": "gradtool.loader",
    "MinNormSolution": "gradtool.min_norm",
    "ParetoOptions": "gradtool.analysis",
    "Problem": "gradtool.problem",
    "Report": "gradtool.report",
    "analyze": "gradtool.api",
    "batch_jacobian": "gradtool.engine",
    "build_report": "gradtool.analysis",
    "compute_gramians": "gradtool.engine",
    "load_problem": "gradtool.loader",
    "min_norm_weights": "gradtool.min_norm",
    "pareto_solution": "gradtool.pareto",
    "run_gradfile": "gradtool.api",
}

__all__ = [
    "EngineResult",
    "GradtoolError",
    "InspectRequest",
    "LoadOptions",
    "MinNormSolution",
    "ParetoOptions",
    "Problem",
    "Report",
    "__version__",
    "analyze",
    "batch_jacobian",
    "build_report",
    "compute_gramians",
    "load_problem",
    "min_norm_weights",
    "pareto_solution",
    "run_gradfile",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradtool' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
