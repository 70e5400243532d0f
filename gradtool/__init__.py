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
    from gradtool.monitor import Monitor, flat_metrics
    from gradtool.pareto import pareto_solution
    from gradtool.problem import Problem
    from gradtool.report import Report
    from gradtool.runlog import Record, RunLog, read_run
    from gradtool.timeline import TimelineReport, build_timeline

_EXPORTS: dict[str, str] = {
    "EngineResult": "gradtool.engine",
    "GradtoolError": "gradtool.errors",
    "InspectRequest": "gradtool.api",
    "LoadOptions": "gradtool.loader",
    "MinNormSolution": "gradtool.min_norm",
    "Monitor": "gradtool.monitor",
    "ParetoOptions": "gradtool.analysis",
    "Problem": "gradtool.problem",
    "Record": "gradtool.runlog",
    "Report": "gradtool.report",
    "RunLog": "gradtool.runlog",
    "TimelineReport": "gradtool.timeline",
    "analyze": "gradtool.api",
    "batch_jacobian": "gradtool.engine",
    "build_report": "gradtool.analysis",
    "build_timeline": "gradtool.timeline",
    "compute_gramians": "gradtool.engine",
    "flat_metrics": "gradtool.monitor",
    "load_problem": "gradtool.loader",
    "min_norm_weights": "gradtool.min_norm",
    "pareto_solution": "gradtool.pareto",
    "read_run": "gradtool.runlog",
    "run_gradfile": "gradtool.api",
}

__all__ = [
    "EngineResult",
    "GradtoolError",
    "InspectRequest",
    "LoadOptions",
    "MinNormSolution",
    "Monitor",
    "ParetoOptions",
    "Problem",
    "Record",
    "Report",
    "RunLog",
    "TimelineReport",
    "__version__",
    "analyze",
    "batch_jacobian",
    "build_report",
    "build_timeline",
    "compute_gramians",
    "flat_metrics",
    "load_problem",
    "min_norm_weights",
    "pareto_solution",
    "read_run",
    "run_gradfile",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradtool' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
