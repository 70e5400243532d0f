"""A combined direction d = sum_i w_i g_i, described from G and w alone.

For weights w (on the raw losses) the combined direction is d = J^T w = sum_i w_i g_i, and

    |d| = sqrt(w^T G w),    <g_i, d> = (G w)_i,    cos(d, g_i) = (G w)_i / (|d| |g_i|),

so nothing here needs the gradients themselves. A step -lr d changes loss i by -lr (G w)_i to
first order: the direction decreases every loss when every (G w)_i >= 0.

Round-off. With M = sum_k |g_k| |w_k| (a bound on |d|), computing (G w)_i in float64 errs by
about 1e-16 |g_i| M; so `decreases_all` accepts (G w)_i >= -1e-9 |g_i| M (`DERIVATIVE_RTOL`), a
scale-free test (invariant under G -> c G), and reports such (G w)_i (and their cosines) as
exactly 0: a dual-cone projection that puts d on the boundary of a loss's half-space gives
<g_i, d> = 0 in exact arithmetic and a few ulps in floating point, which would read as a
conflict. The cosine is undefined (None) where |g_i| = 0 or where |d|^2 <= 1e-12 M^2
(`ZERO_NORM_RTOL`): a direction that is zero up to round-off has no direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gradtool.linalg import gramian as gm

# (G w)_i within DERIVATIVE_RTOL * |g_i| * sum_k |g_k| |w_k| of 0 is round-off, reported as 0.
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
    zero: bool = False  # d is 0 up to round-off: no direction, every cosine None


def direction_stats(gramian: torch.Tensor, weights: torch.Tensor) -> DirectionStats:
    """Return the statistics of d = J^T w from G = J J^T and w alone.

    |d| = sqrt(max(w^T G w, 0)); (G w)_i = <g_i, d>; cos(d, g_i) = (G w)_i / (|d| |g_i|) clamped
    to [-1, 1]. Round-off: with M = sum_k |g_k| |w_k| (which bounds |d|), computing (G w)_i errs
    by about eps |g_i| M, so (G w)_i within 1e-9 |g_i| M of 0 is returned as 0 (and its cosine as
    0), decreases_all = every (G w)_i >= -1e-9 |g_i| M, and d is zero (`zero`; every cosine None)
    when |d|^2 <= 1e-12 M^2. Scale-free, and a huge weight on a zero gradient changes nothing.
    """
    g = gm.as_gramian(gramian)
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    derivs = g @ w
    squared = float(w @ derivs)
    norm = math.sqrt(max(squared, 0.0))
    grad_norms = gm.norms(g)
    mass = float((grad_norms * w.abs()).sum())
    zero_direction = squared <= ZERO_NORM_RTOL * mass**2
    tol = DERIVATIVE_RTOL * grad_norms * mass
    rounded = torch.where(derivs.abs() <= tol, 0.0, derivs)
    cosine: list[float | None] = []
    for value, n in zip(rounded.tolist(), grad_norms.tolist(), strict=True):
        if zero_direction or n == 0.0:
            cosine.append(None)
        else:
            cosine.append(min(1.0, max(-1.0, value / (norm * n))))
    return DirectionStats(
        norm=norm,
        cosine=cosine,
        directional_derivatives=rounded.tolist(),
        decreases_all=bool((derivs >= -tol).all()),
        zero=zero_direction,
    )


def numerical_rank(gramian: torch.Tensor) -> int:
    """Return the number of eigenvalues of G above 1e-10 times the largest (0 for G = 0)."""
    eigenvalues = torch.linalg.eigvalsh(gm.as_gramian(gramian))
    top = float(eigenvalues.max()) if eigenvalues.numel() else 0.0
    if top <= 0:
        return 0
    return int((eigenvalues > RANK_RTOL * top).sum())
