"""The `affinity` command's document: lookahead affinities between losses and methods' steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gradtool.results.base import Document, Matrix


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
    lowers_every_loss: bool | None  # None: some change cannot be measured at this lr


@dataclass
class AffinityReport(Document):
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
