"""gradtool: how the gradients of several losses of one PyTorch model relate.

The library face: `_EXPORTS` below is the one table of public names, each loaded from its module
on first use, so `import gradtool` (and `gradtool --help`) stay torch-free until a name that needs
torch is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from gradtool._version import __version__

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # use cases (what the commands run)
    "AffinityRequest": "gradtool.api",
    "InspectRequest": "gradtool.api",
    "analyze": "gradtool.api",
    "run_affinity": "gradtool.api",
    "run_gradfile": "gradtool.api",
    "run_report": "gradtool.api",
    # monitoring a training loop
    "Monitor": "gradtool.monitoring",
    "flat_metrics": "gradtool.monitoring",
    # the problem and the engine
    "LoadOptions": "gradtool.problem",
    "Problem": "gradtool.problem",
    "load_problem": "gradtool.problem",
    "EngineResult": "gradtool.engine",
    "Fallback": "gradtool.engine",
    "GramianAccumulator": "gradtool.engine",
    "batch_jacobian": "gradtool.engine",
    "compute_gramians": "gradtool.engine",
    # maths on Gramians and the weighting methods
    "MinNormSolution": "gradtool.linalg.min_norm",
    "min_norm_weights": "gradtool.linalg.min_norm",
    "pareto_solution": "gradtool.linalg.pareto",
    "direction_stats": "gradtool.linalg.direction",
    "WEIGHTINGS": "gradtool.weightings",
    "WeightingMethod": "gradtool.weightings",
    # analysis
    "ParetoOptions": "gradtool.analysis",
    "build_report": "gradtool.analysis",
    "build_timeline": "gradtool.analysis",
    "compare_methods": "gradtool.analysis",
    "lookahead_affinity": "gradtool.analysis",
    # result documents
    "AffinityReport": "gradtool.results",
    "Record": "gradtool.results",
    "Report": "gradtool.results",
    "RunLog": "gradtool.results",
    "TimelineReport": "gradtool.results",
    "read_run": "gradtool.results",
    # errors a library user catches
    "GradfileError": "gradtool.errors",
    "GradientError": "gradtool.errors",
    "GradtoolError": "gradtool.errors",
    "LossError": "gradtool.errors",
    "MissingDependencyError": "gradtool.errors",
    "NonFiniteGradientError": "gradtool.errors",
    "RunLogError": "gradtool.errors",
    "UsageError": "gradtool.errors",
    "UserCodeError": "gradtool.errors",
    "WeightingError": "gradtool.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradtool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
