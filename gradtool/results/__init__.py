"""Plain result documents, torch-free: what the renderer shows and the JSON carries.

`Report` (inspect, pareto, analyze), `AffinityReport` (affinity), `TimelineReport` (report), the
run log's `Record`s; each serialises as one strict JSON document (NaN as null, schema_version 1).
"""

from gradtool.results.affinity import AffinityReport, MethodStep
from gradtool.results.base import (
    SCHEMA_VERSION,
    Document,
    Matrix,
    finite_or_none,
    nan_for_none,
    write_atomic,
)
from gradtool.results.report import (
    BatchStats,
    GradientStats,
    LayerStats,
    MethodResult,
    ParetoReport,
    Report,
)
from gradtool.results.runlog import LayerRecord, ParetoRecord, Record, RunLog, read_run, run_header
from gradtool.results.timeline import TimelineReport

__all__ = [
    "SCHEMA_VERSION",
    "AffinityReport",
    "BatchStats",
    "Document",
    "GradientStats",
    "LayerRecord",
    "LayerStats",
    "Matrix",
    "MethodResult",
    "MethodStep",
    "ParetoRecord",
    "ParetoReport",
    "Record",
    "Report",
    "RunLog",
    "TimelineReport",
    "finite_or_none",
    "nan_for_none",
    "read_run",
    "run_header",
    "write_atomic",
]
