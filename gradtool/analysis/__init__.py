"""Gramians -> results: the snapshot report (norms, cosines, layers, batch statistics, Pareto and
the weighting methods side by side), the lookahead affinity, training records and the timeline of
a run. Works on Gramians (and, for the lookahead, on the problem it steps)."""

from gradtool.analysis.affinity import DEFAULT_METHODS, lookahead_affinity
from gradtool.analysis.compare import compare_methods, methods_verdict
from gradtool.analysis.records import build_record
from gradtool.analysis.report import (
    DEFAULT_CONFLICT_THRESHOLD,
    DEFAULT_DEPTH,
    ParetoOptions,
    build_report,
    pareto_options,
)
from gradtool.analysis.timeline import build_timeline

__all__ = [
    "DEFAULT_CONFLICT_THRESHOLD",
    "DEFAULT_DEPTH",
    "DEFAULT_METHODS",
    "ParetoOptions",
    "build_record",
    "build_report",
    "build_timeline",
    "compare_methods",
    "lookahead_affinity",
    "methods_verdict",
    "pareto_options",
]
