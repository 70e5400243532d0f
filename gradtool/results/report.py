"""The Report: plain data that the renderer shows and `--json` serialises (schema_version 1).

Nothing here computes gradients or statistics; `gradtool.analysis` fills it in.
Matrices are nested lists indexed like `losses`; undefined entries are None (JSON null).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from gradtool.results.base import Document, Matrix


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
class Report(Document):
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

    _optional: ClassVar[tuple[str, ...]] = ("batch_stats", "pareto", "methods")
