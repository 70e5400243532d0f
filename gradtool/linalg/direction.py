"""A combined direction d = sum_i w_i g_i, described from G and w alone.

For weights w (on the raw losses) the combined direction is d = J^T w = sum_i w_i g_i, and

    |d| = sqrt(w^T G w),    <g_i, d> = (G w)_i,    cos(d, g_i) = (G w)_i / (|d| |g_i|),

so nothing here needs the gradients themselves. A step -lr d changes loss i by -lr (G w)_i to
first order: the direction decreases every loss when every (G w)_i >= 0.

Round-off. By Cauchy-Schwarz |(G w)_i| <= s with s = max_k G_kk * sum_k |w_k|, and computing
(G w)_i in float64 errs by about 1e-16 s; so `decreases_all` accepts (G w)_i >= -1e-9 s
(`DERIVATIVE_RTOL`), a scale-free test (invariant under G -> c G), and reports such (G w)_i (and
their cosines) as exactly 0: a dual-cone projection that puts d on the boundary of a loss's
half-space gives <g_i, d> = 0 in exact arithmetic and +-1e-12 s in floating point, which would
read as a conflict. The cosine is undefined (None)
where |g_i| = 0 or where |d|^2 = w^T G w <= 1e-12 max_k G_kk (sum_k |w_k|)^2 (`ZERO_NORM_RTOL`):
a direction that is zero up to round-off has no direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gradtool.linalg import gramian as gm

# (G w)_i within DERIVATIVE_RTOL * max_k G_kk * sum_k |w_k| of 0 is round-off, reported as 0.
DERIVATIVE_RTOL = 1e-9
ZERO_NORM_RTOL = 1e-12
# Eigenvalues of G at or below this times the largest one count as 0 (for `numerical_rank`).
RANK_RTOL = 1e-10


@dataclass(frozen=True)
class DirectionStats:
    """|d|, cos(d, g_i) (None where undefined), (G w)_i, and whether every (G w)_i >= -tol."""

    norm: float
    cosine: list[float | None]
    directional_derivatives: list[float]
    decreases_all: bool


def direction_stats(gramian: torch.Tensor, weights: torch.Tensor) -> DirectionStats:
    """Return the statistics of d = J^T w from G = J J^T and w alone.

    |d| = sqrt(max(w^T G w, 0)); (G w)_i = <g_i, d>; cos(d, g_i) = (G w)_i / (|d| |g_i|) clamped to
    [-1, 1], None where |g_i| = 0 or |d|^2 <= 1e-12 max_k G_kk (sum |w|)^2; decreases_all = all
    (G w)_i >= -1e-9 max_k G_kk sum_k |w_k| (see the module docstring); derivatives (and cosines)
    within that tolerance of 0 are returned as 0.
    """
    g = gm.as_gramian(gramian)
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    derivs = g @ w
    squared = float(w @ derivs)
    norm = math.sqrt(max(squared, 0.0))
    diag_max = float(torch.clamp(torch.diagonal(g), min=0.0).max()) if g.numel() else 0.0
    weight_mass = float(w.abs().sum())
    scale = diag_max * weight_mass
    zero_direction = squared <= ZERO_NORM_RTOL * diag_max * weight_mass**2
    grad_norms = gm.norms(g).tolist()
    cosine: list[float | None] = []
    for i, value in enumerate(derivs.tolist()):
        if zero_direction or grad_norms[i] == 0.0:
            cosine.append(None)
        else:
            cosine.append(min(1.0, max(-1.0, value / (norm * grad_norms[i]))))
    tol = DERIVATIVE_RTOL * scale
    return DirectionStats(
        norm=norm,
        cosine=[
            None if c is None else (0.0 if abs(d) <= tol else c)
            for c, d in zip(cosine, derivs.tolist(), strict=True)
        ],
        directional_derivatives=torch.where(derivs.abs() <= tol, 0.0, derivs).tolist(),
        decreases_all=bool((derivs >= -tol).all()),
    )


def numerical_rank(gramian: torch.Tensor) -> int:
    """Return the number of eigenvalues of G above 1e-10 times the largest (0 for G = 0)."""
    eigenvalues = torch.linalg.eigvalsh(gm.as_gramian(gramian))
    top = float(eigenvalues.max()) if eigenvalues.numel() else 0.0
    if top <= 0:
        return 0
    return int((eigenvalues > RANK_RTOL * top).sum())
