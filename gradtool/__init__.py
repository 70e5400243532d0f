"""gradtool: how the gradients of several losses of one PyTorch model relate.

Public names are imported lazily, so `import gradtool` (and `gradtool --help`) stay torch-free
until a name that needs torch is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradtool._version import __version__

if TYPE_CHECKING:
    from gradtool.affinity import AffinityRequest, lookahead_affinity, run_affinity
    from gradtool.analysis import ParetoOptions, build_report
    from gradtool.api import InspectRequest, analyze, run_gradfile
    from gradtool.compare import compare_methods, direction_stats
    from gradtool.engine import EngineResult, GramianAccumulator, batch_jacobian, compute_gramians
    from gradtool.errors import (
        GradfileError,
        GradientError,
        GradtoolError,
        LossError,
        NonFiniteGradientError,
        UsageError,
        UserCodeError,
    )
    from gradtool.loader import LoadOptions, load_problem
    from gradtool.min_norm import MinNormSolution, min_norm_weights
    from gradtool.monitor import Monitor, flat_metrics
    from gradtool.pareto import pareto_solution
    from gradtool.problem import Problem
    from gradtool.report import AffinityReport, Report
    from gradtool.runlog import Record, RunLog, read_run
    from gradtool.timeline import TimelineReport, build_timeline
    from gradtool.weightings import WEIGHTINGS, MissingDependencyError, WeightingMethod

_EXPORTS: dict[str, str] = {
    "AffinityReport": "gradtool.report",
    "AffinityRequest": "gradtool.affinity",
    "EngineResult": "gradtool.engine",
    "GradfileError": "gradtool.errors",
    "GradientError": "gradtool.errors",
    "GradtoolError": "gradtool.errors",
    "GramianAccumulator": "gradtool.engine",
    "InspectRequest": "gradtool.api",
    "LoadOptions": "gradtool.loader",
    "LossError": "gradtool.errors",
    "MinNormSolution": "gradtool.min_norm",
    "MissingDependencyError": "gradtool.weightings",
    "Monitor": "gradtool.monitor",
    "NonFiniteGradientError": "gradtool.errors",
    "ParetoOptions": "gradtool.analysis",
    "Problem": "gradtool.problem",
    "Record": "gradtool.runlog",
    "Report": "gradtool.report",
    "RunLog": "gradtool.runlog",
    "TimelineReport": "gradtool.timeline",
    "UsageError": "gradtool.errors",
    "UserCodeError": "gradtool.errors",
    "WEIGHTINGS": "gradtool.weightings",
    "WeightingMethod": "gradtool.weightings",
    "analyze": "gradtool.api",
    "batch_jacobian": "gradtool.engine",
    "build_report": "gradtool.analysis",
    "build_timeline": "gradtool.timeline",
    "compare_methods": "gradtool.compare",
    "compute_gramians": "gradtool.engine",
    "direction_stats": "gradtool.compare",
    "flat_metrics": "gradtool.monitor",
    "load_problem": "gradtool.loader",
    "lookahead_affinity": "gradtool.affinity",
    "min_norm_weights": "gradtool.min_norm",
    "pareto_solution": "gradtool.pareto",
    "read_run": "gradtool.runlog",
    "run_affinity": "gradtool.affinity",
    "run_gradfile": "gradtool.api",
}

__all__ = [
    "WEIGHTINGS",
    "AffinityReport",
    "AffinityRequest",
    "EngineResult",
    "GradfileError",
    "GradientError",
    "GradtoolError",
    "GramianAccumulator",
    "InspectRequest",
    "LoadOptions",
    "LossError",
    "MinNormSolution",
    "MissingDependencyError",
    "Monitor",
    "NonFiniteGradientError",
    "ParetoOptions",
    "Problem",
    "Record",
    "Report",
    "RunLog",
    "TimelineReport",
    "UsageError",
    "UserCodeError",
    "WeightingMethod",
    "__version__",
    "analyze",
    "batch_jacobian",
    "build_report",
    "build_timeline",
    "compare_methods",
    "compute_gramians",
    "direction_stats",
    "flat_metrics",
    "load_problem",
    "lookahead_affinity",
    "min_norm_weights",
    "pareto_solution",
    "read_run",
    "run_affinity",
    "run_gradfile",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradtool' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
