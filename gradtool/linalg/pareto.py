"""Pareto analysis of a Gramian: min-norm (MGDA) weights, the combined direction's effect on each
loss, and the Pareto-stationarity verdict, with the MGDA-UB gradient normalisations.

With d = sum_i c_i g_i the combined direction, loss i changes at first order by -lr (G c)_i under
a step -lr d; all (G c)_i >= 0 means the step decreases every loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gradtool.errors import LossError, UsageError, opt
from gradtool.linalg.direction import direction_stats
from gradtool.linalg.gramian import normalized, norms
from gradtool.linalg.min_norm import min_norm_weights

NORMALIZERS: tuple[str, ...] = ("none", "l2", "loss", "loss+")
STATIONARY_TOL = 1e-6


@dataclass(frozen=True)
class ParetoSolution:
    """The min-norm solution of one (possibly normalised) problem, in float64 tensors.

    `weights` lie on the simplex of the normalised gradients g_i / s_i; `loss_weights` = w / s are
    the coefficients on the raw losses, so the combined direction is d = sum_i loss_weights_i g_i.
    `relative_min_norm` = |sum_i w_i g_i / s_i| / max_i |g_i / s_i| (None when every gradient is
    0) is what stationarity compares with `tol`.
    """

    normalize: str
    scale: torch.Tensor
    normalized_gramian: torch.Tensor  # D G D, D = diag(1 / scale): what the weights solve
    weights: torch.Tensor
    loss_weights: torch.Tensor
    min_norm: float
    directional_derivatives: torch.Tensor
    stationary: bool
    unique: bool
    kkt_residual: float
    support: tuple[int, ...]
    relative_min_norm: float | None
    tol: float


def check_tol(tol: float) -> float:
    """Return `tol` as a float after checking it is finite and >= 0 (0: stationary only when
    some convex combination of the gradients is exactly 0)."""
    value = float(tol)
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(
            f"{opt('tol')} should be a finite number >= 0; found {tol!r}",
            hint=f"e.g. {opt('tol', '1e-6')} (the default): Pareto-stationary when the min-norm "
            "is at most that fraction of the largest gradient norm",
            option="tol",
        )
    return value


def normalization_scale(
    gramian: torch.Tensor, loss_values: Sequence[float], normalize: str, names: Sequence[str]
) -> torch.Tensor:
    """Return s_i for g_i / s_i: 1 (none), |g_i| (l2), L_i (loss), L_i |g_i| (loss+).

    A zero gradient keeps s_i = 1 under l2 (its direction is undefined); the loss normalisers
    need positive losses.
    """
    if normalize not in NORMALIZERS:
        raise UsageError(
            f"{opt('normalize')} should be one of {', '.join(NORMALIZERS)}; found {normalize!r}",
            option="normalize",
        )
    m = gramian.shape[0]
    if normalize == "none":
        return torch.ones(m, dtype=torch.float64)
    n = norms(gramian)
    n = torch.where(n > 0, n, 1.0)
    if normalize == "l2":
        return n
    losses = torch.tensor(list(loss_values), dtype=torch.float64)
    for name, value in zip(names, loss_values, strict=True):
        if not value > 0:
            raise LossError(
                f"{opt('normalize', normalize)} divides by the loss, which must be positive; "
                f"loss {name!r} is {value:.6g}",
                hint=f"use {opt('normalize', 'l2')} or 'none' for losses that can be zero or "
                "negative",
                loss=name,
                option="normalize",
            )
    return losses if normalize == "loss" else losses * n


def pareto_solution(
    gramian: torch.Tensor,
    loss_values: Sequence[float],
    names: Sequence[str],
    *,
    normalize: str = "none",
    tol: float = STATIONARY_TOL,
) -> ParetoSolution:
    """Return the min-norm weights of the normalised problem and their effect on the raw losses.

    Pareto-stationary when min_w |sum w_i g_i / s_i| <= tol * max_i |g_i / s_i| (scale-free: some
    convex combination of the gradients is zero up to round-off); the ratio of the two sides is
    `relative_min_norm`. Raises `UsageError` for a negative or non-finite `tol`.
    """
    tol = check_tol(tol)
    scale = normalization_scale(gramian, loss_values, normalize, names)
    g_norm = normalized(gramian, scale)
    sol = min_norm_weights(g_norm)
    loss_weights = sol.weights / scale
    stats = direction_stats(gramian, loss_weights)
    largest = float(norms(g_norm).max())
    relative = None if largest == 0.0 else sol.min_norm / largest
    stationary = relative is None or relative <= tol
    return ParetoSolution(
        normalize=normalize,
        scale=scale,
        normalized_gramian=g_norm,
        weights=sol.weights,
        loss_weights=loss_weights,
        min_norm=stats.norm,
        directional_derivatives=torch.tensor(stats.directional_derivatives, dtype=torch.float64),
        stationary=stationary,
        unique=sol.unique,
        kkt_residual=sol.kkt_residual,
        support=sol.support,
        relative_min_norm=relative,
        tol=tol,
    )
