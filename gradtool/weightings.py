"""Weightings: functions from a Gramian G (m x m) to m loss weights.

A weighting sees only G, so it composes with any Jacobian source (the engine, a training-loop
monitor, a saved report). `WEIGHTINGS` maps each CLI method name to its weighting.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gradtool.min_norm import min_norm_weights

Weighting = Callable[[torch.Tensor], torch.Tensor]


def mgda(gramian: torch.Tensor) -> torch.Tensor:
    """Return the exact MGDA min-norm weights: argmin_{w in simplex} w^T G w."""
    return min_norm_weights(gramian).weights


def mean(gramian: torch.Tensor) -> torch.Tensor:
    """Return uniform weights 1/m: the gradient of the mean loss."""
    m = gramian.shape[0]
    return torch.full((m,), 1.0 / m, dtype=torch.float64)


def sum_(gramian: torch.Tensor) -> torch.Tensor:
    """Return unit weights: the gradient of the summed loss."""
    return torch.ones(gramian.shape[0], dtype=torch.float64)


WEIGHTINGS: dict[str, Weighting] = {"mgda": mgda, "mean": mean, "sum": sum_}
