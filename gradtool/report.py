"""The Report: plain data that the renderer shows and `--json` serialises (schema_version 1).

Nothing here computes gradients or statistics; `gradtool.analysis` fills it in.
Matrices are nested lists indexed like `losses`; undefined entries are None (JSON null).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

Matrix = list[list[float | None]]


@dataclass
class GradientStats:
    """One loss's gradient over the selected parameters."""

    norm: float | None
    max_abs: float | None
    nonfinite: int


@dataclass
class LayerStats:
    """One module path's share: numel, per-loss norms and the pairwise cosine there."""

    name: str
    numel: int
    norms: dict[str, float | None]
    cosine: Matrix
    dot: Matrix
    parameters: list[str]
    reached: dict[str, bool] = field(default_factory=dict)  # loss -> reaches some parameter here
    lowest_pair: tuple[int, int] | None = None  # (i, j) of the lowest cosine here


@dataclass
class BatchStats:
    """Per-batch cosine statistics; conflict_fraction[i][j] = share of batches with cos < 0."""

    cosine_mean: Matrix
    cosine_std: Matrix
    conflict_fraction: Matrix


@dataclass
class ParetoReport:
    """The min-norm (MGDA) result: weights, the combined direction's effect, stationarity."""

    method: str
    normalize: str
    weights: dict[str, float]
    loss_weights: dict[str, float]
    min_norm: float
    directional_derivatives: dict[str, float]
    stationary: bool
    unique: bool
    kkt_residual: float
    support: list[str]


@dataclass
class MethodResult:
    """One weighting method's combined direction d = sum_i loss_weights_i g_i, from G and w only.

    `weights` are on the (normalised) gradients g_i / s_i, `loss_weights` = w / s on the raw
    losses; `norm` = |d| = sqrt(lw^T G lw); `cosine[i]` = (G lw)_i / (|d| |g_i|) (None where
    undefined); `directional_derivatives[i]` = (G lw)_i = <g_i, d>; `decreases_all`: every
    (G lw)_i >= 0 up to round-off, i.e. a small step along -d raises no loss to first order.
    """

    method: str
    name: str
    normalize: str
    preference: dict[str, float] | None
    weights: dict[str, float]
    loss_weights: dict[str, float]
    norm: float
    cosine: dict[str, float | None]
    directional_derivatives: dict[str, float]
    decreases_all: bool


@dataclass
class Report:
    """Everything one gradtool command found, in the order of the JSON contract."""

    command: str
    losses: list[str]
    loss_values: dict[str, float]
    num_batches: int
    parameters: dict[str, int]
    gradients: dict[str, GradientStats]
    unused: dict[str, list[str]]
    unreached: list[str]
    dot: Matrix
    cosine: Matrix
    angle_deg: Matrix
    magnitude_similarity: Matrix
    layers: list[LayerStats]
    depth: int | None = None
    batch_stats: BatchStats | None = None
    pareto: ParetoReport | None = None
    methods: list[MethodResult] | None = None
    verdict: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document as a dict (schema_version first, NaN/inf as None)."""
        body = asdict(self)
        if self.batch_stats is None:
            body.pop("batch_stats")
        if self.pareto is None:
            body.pop("pareto")
        if self.methods is None:
            body.pop("methods")
        return finite_or_none({"schema_version": SCHEMA_VERSION, **body})

    def to_json(self, indent: int | None = 2) -> str:
        """Return the JSON document as text; strict JSON (no NaN)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def finite_or_none(obj: Any) -> Any:
    """Return `obj` with every non-finite float (NaN, inf) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder and a rename: never partial."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the report private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class MethodStep:
    """One SGD step theta - lr d along a method's combined direction d, and what it did.

    `affinity[j]` = 1 - L_j(theta - lr d) / L_j(theta) (positive: the step lowered loss j; None
    where L_j <= 0), `affinity_first_order[j]` = lr (G w)_j / L_j, `loss_change[j]` =
    L_j(theta - lr d) - L_j(theta) and `loss_change_first_order[j]` = -lr (G w)_j; each is the
    mean over batches, and `weights` the mean of the per-batch weights.
    """

    method: str
    name: str
    weights: dict[str, float]
    affinity: dict[str, float | None]
    affinity_first_order: dict[str, float | None]
    loss_change: dict[str, float | None]
    loss_change_first_order: dict[str, float | None]
    lowers_every_loss: bool


@dataclass
class AffinityReport:
    """The `affinity` command's result: lookahead affinities between losses (schema_version 1).

    `affinity[i][j]` = Z[i->j] = 1 - L_j(theta - lr g_i) / L_j(theta): row i is a step on loss i
    alone, column j its effect on loss j (Fifty et al. 2021); `affinity_first_order[i][j]` =
    lr G_ij / L_j. `loss_change[i][j]` = L_j(theta - lr g_i) - L_j(theta), defined even where
    L_j <= 0 (where the ratio is not: None). All are means over batches.
    """

    command: str
    losses: list[str]
    loss_values: dict[str, float]
    num_batches: int
    parameters: dict[str, int]
    lr: float
    holdout: bool
    affinity: Matrix
    affinity_first_order: Matrix
    loss_change: Matrix
    loss_change_first_order: Matrix
    methods_step: list[MethodStep] = field(default_factory=list)
    verdict: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document as a dict (schema_version first, NaN/inf as None)."""
        return finite_or_none({"schema_version": SCHEMA_VERSION, **asdict(self)})

    def to_json(self, indent: int | None = 2) -> str:
        """Return the JSON document as text; strict JSON (no NaN)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)
