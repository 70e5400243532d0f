"""Exact MGDA min-norm weights: the convex combination of loss gradients with the smallest norm.

Given the Gramian ``G = J J^T`` of ``m`` loss gradients ``g_0, ..., g_{m-1}`` (the rows of ``J``),
this module solves the quadratic programme

    minimise  w^T G w  =  |J^T w|^2     subject to   w_i >= 0,   sum_i w_i = 1,

exactly (a finite active-set method, not Frank-Wolfe iterations). Its minimiser ``w*`` gives the
minimum-norm point ``d* = J^T w*`` of the convex hull of the gradients (the MGDA direction), with
``|d*| = sqrt(w*^T G w*)``. The point ``d*`` is always unique; the weights ``w*`` need not be.

Optimality (KKT) conditions, with ``lam = w^T G w``:

    (G w)_i >= lam  for every i,     (G w)_i == lam  for every i with w_i > 0.

Only ``torch`` is used; all computations are done in float64 on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MinNormSolution", "min_norm_two", "min_norm_weights"]

_DTYPE = torch.float64
_TINY = torch.finfo(_DTYPE).tiny

# Input validation: largest accepted relative asymmetry max|G - G^T| / max|G|.
_ASYMMETRY_RTOL = 1e-6
# The tolerances below apply to the scaled Gramian G / max_i G_ii (whose diagonal is in [0, 1]).
# Stop when no gradient improves the current point by more than this: lam - min_i (G w)_i.
_STOP_RTOL = 1e-13
# Affine-minimiser weights at or below this are treated as non-positive (the index is dropped).
_DROP_ATOL = 1e-14
# Smallest squared Cholesky pivot accepted when a gradient enters the support (numerically
# affinely dependent gradients are not added).
_PIVOT_RTOL = 1e-13
# Smallest pivot accepted to warm-start from the affine minimiser of all the gradients.
_WARM_PIVOT_RTOL = 1e-10
# Eigenvalues of G_S / scale + 1 1^T at or below this count as zero (rank deficiency of the KKT
# matrix [G_S 1; 1^T 0]).
_RANK_RTOL = 1e-10
# Off-support indices with (G w)_i - lam at or below this (relative) are ties.
_TIE_RTOL = 1e-9
# The uniqueness sub-problem has a Gramian of scale 1; squared norms at or below this count as 0.
_SUBPROBLEM_ATOL = 1e-9


@dataclass(frozen=True)
class MinNormSolution:
    """Minimiser of ``w^T G w`` over the probability simplex, with diagnostics.

    Attributes:
        weights: float64 tensor of shape ``(m,)``: ``w_i >= 0``, ``sum_i w_i = 1``, exact zeros
            off the support (and exactly ``1.0`` at a vertex).
        min_norm: ``sqrt(max(w^T G w, 0))``, the norm of the min-norm point ``J^T w``. Computed
            from the Gramian, so its absolute accuracy is about ``sqrt(eps * max_i G_ii)``.
        kkt_residual: relative KKT violation, with ``lam = w^T G w``,
            ``max(max_i max(lam - (G w)_i, 0), max_{i in S} |(G w)_i - lam|) / max_i G_ii``.
        unique: whether the minimiser ``w`` is unique (see :func:`min_norm_weights`).
        support: the indices ``i`` with ``w_i > 0``, increasing.
    """

    weights: Tensor
    min_norm: float
    kkt_residual: float
    unique: bool
    support: tuple[int, ...]


def min_norm_two(g00: float, g01: float, g11: float) -> tuple[float, float]:
    """Return the min-norm weights ``(w0, w1)`` of two gradients, in closed form.

    With ``G = [[g00, g01], [g01, g11]]`` the Gramian of ``g0, g1``, the minimiser of
    ``|w0 g0 + w1 g1|^2`` over ``w0 + w1 = 1, w0, w1 >= 0`` is

        w0 = clamp(<g1 - g0, g1> / |g1 - g0|^2, 0, 1)
           = clamp((g11 - g01) / (g00 - 2 g01 + g11), 0, 1),
        w1 = 1 - w0.

    (The often-quoted ``clamp(<g1 - g0, g0> / |g1 - g0|^2, 0, 1)`` has a sign error: it is
    ``-w1`` before clamping.) When ``|g1 - g0|^2 = g00 - 2 g01 + g11 <= 0`` (identical
    gradients) every ``w`` is a minimiser and ``(0.5, 0.5)`` is returned.

    Raises:
        ValueError: if an entry is not finite.
    """
    values = (float(g00), float(g01), float(g11))
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"Gramian entries should be finite; found (g00, g01, g11) = {values}.")
    g00, g01, g11 = values
    denominator = g00 - 2.0 * g01 + g11
    if not denominator > 0.0:
        return 0.5, 0.5
    w0 = min(max((g11 - g01) / denominator, 0.0), 1.0)
    return w0, 1.0 - w0


def min_norm_weights(gramian: Tensor) -> MinNormSolution:
    """Return the exact minimiser of ``w^T G w`` over the probability simplex, as a solution.

    ``G`` (``gramian``, shape ``(m, m)``) is the Gramian ``J J^T`` of ``m`` loss gradients. It is
    symmetrised as ``(G + G^T) / 2`` and solved in float64 on the CPU; the returned weights are on
    the device of ``gramian``.

    * ``m == 1``: ``w = [1]``.
    * ``m == 2``: the closed form of :func:`min_norm_two`.
    * ``m >= 3``: Wolfe's exact active-set ("minimum-norm point") method. It keeps a support ``S``
      of affinely independent gradients, i.e. a nonsingular KKT matrix ``[G_S 1; 1^T 0]``,
      factorised as ``G_S / s + 1 1^T = R^T R`` (``s = max_i G_ii``; ``R`` is updated when
      ``S`` changes). The affine minimiser on ``S`` solves ``G_S v = mu 1, 1^T v = 1``, i.e.
      ``v = u / (1^T u)`` with ``(G_S / s + 1 1^T) u = 1``. If ``v > 0`` it is the new point;
      otherwise a ratio test steps from ``w`` towards ``v`` until a weight hits 0 and that index
      leaves ``S``. When ``v > 0``, the index ``j`` with the most negative reduced gradient
      ``(G w)_j - lam`` enters ``S``; the method stops when ``(G w)_j - lam >= -1e-13 s``.
      If ``g_j`` is numerically in the affine hull of ``S`` (squared pivot ``<= 1e-13``, e.g. a
      near-duplicate gradient) it is exchanged for an index of ``S`` instead, by a ratio-test
      step along the affine dependency ``delta = e_j - alpha`` (taken only if it decreases the
      objective; otherwise the method stops there).
      The objective decreases strictly between entries, so no support repeats and the method is
      finite; an iteration cap of ``10 m + 50`` still guards against rounding, returning the
      current (always feasible) point with its honest KKT residual. The start is the affine
      minimiser of all the gradients when ``G + s 1 1^T`` is well conditioned (restricted to its
      positive part), otherwise the vertex with the smallest ``G_ii``. Finally ``w_S`` is
      recomputed from the KKT system with one step of iterative refinement, and kept if it is
      not worse.

    Uniqueness. The minimum-norm point ``d* = J^T w`` is always unique, and every minimiser is
    supported on the ties ``T = {i : (G w)_i - lam <= 1e-9 s}`` (with the same ``lam``). Another
    minimiser ``w + t delta`` (``t > 0``) exists iff some ``delta != 0`` has ``G_T delta = 0``,
    ``1^T delta = 0`` (i.e. ``delta`` is in the null space of ``G_T / s + 1 1^T``, up to a
    relative eigenvalue tolerance of 1e-10) and ``delta_i >= 0`` off the support. So
    ``unique`` is ``False`` when the KKT matrix ``[G_S 1; 1^T 0]`` is rank-deficient, and
    otherwise (``delta`` is then determined by its off-support part ``z = Y c``, ``Y`` the
    off-support rows of a null-space basis) when ``range(Y)`` meets the simplex, which is decided
    exactly as a second min-norm problem with Gramian ``I - Q Q^T`` (``Q`` an orthonormal basis
    of ``range(Y)``): not unique iff its minimum is 0. Duplicated losses, a zero gradient among
    other gradients that have 0 in their convex hull, and all-equal gradients give
    ``unique=False``; a generic full-rank problem gives ``unique=True``.

    Raises:
        TypeError: if ``gramian`` is not a tensor.
        ValueError: if ``gramian`` is not a non-empty square real matrix, has non-finite entries,
            is clearly non-symmetric (relative asymmetry > 1e-6) or has a negative diagonal entry.
    """
    g = _validated(gramian)
    m = g.shape[0]
    scale = max(float(g.diagonal().max()), _TINY)
    if m == 1:
        w = torch.ones(1, dtype=_DTYPE)
    elif m == 2:
        w0, w1 = min_norm_two(float(g[0, 0]), float(g[0, 1]), float(g[1, 1]))
        w = torch.tensor([w0, w1], dtype=_DTYPE)
    else:
        w = _solve(g / scale)
    kkt = _kkt_residual(g, w, scale)
    support = tuple(int(i) for i in torch.nonzero(w > 0).flatten())
    unique = True if m == 1 else _is_unique(g / scale, w, support, kkt)
    lam = float(w @ (g @ w))
    return MinNormSolution(
        weights=w.to(gramian.device),
        min_norm=math.sqrt(max(lam, 0.0)),
        kkt_residual=kkt,
        unique=unique,
        support=support,
    )


def _validated(gramian: Tensor) -> Tensor:
    """Return ``(G + G^T) / 2`` as a float64 CPU tensor, after checking ``gramian``."""
    if not isinstance(gramian, Tensor):
        raise TypeError(f"gramian should be a torch.Tensor; found {type(gramian).__name__}.")
    shape = tuple(gramian.shape)
    if gramian.ndim != 2 or shape[0] != shape[1]:
        raise ValueError(f"gramian should be a square matrix; found shape {shape}.")
    if shape[0] == 0:
        raise ValueError(f"gramian should have at least one row (one loss); found shape {shape}.")
    if gramian.is_complex() or gramian.dtype == torch.bool:
        raise ValueError(f"gramian should be a real matrix; found dtype {gramian.dtype}.")
    g = gramian.detach().to(device="cpu", dtype=_DTYPE)
    finite = torch.isfinite(g)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite)
        i, j = (int(x) for x in bad[0])
        raise ValueError(
            f"gramian should have finite entries; found {bad.shape[0]} non-finite entries "
            f"(e.g. gramian[{i}, {j}] = {float(g[i, j])})."
        )
    magnitude = float(g.abs().max())
    asymmetry = float((g - g.T).abs().max())
    if asymmetry > _ASYMMETRY_RTOL * magnitude:
        raise ValueError(
            "gramian should be symmetric; found relative asymmetry max|G - G^T| / max|G| = "
            f"{asymmetry / magnitude:.3g} (above {_ASYMMETRY_RTOL:g})."
        )
    g = (g + g.T) / 2
    diagonal = g.diagonal()
    if bool((diagonal < 0).any()):
        i = int(torch.argmin(diagonal))
        raise ValueError(
            "gramian should be positive semi-definite (G_ii = |g_i|^2 >= 0); found "
            f"gramian[{i}, {i}] = {float(diagonal[i])}."
        )
    return g


def _kkt_residual(g: Tensor, w: Tensor, scale: float) -> float:
    """Return ``max(max_i max(lam - (G w)_i, 0), max_{i: w_i > 0} |(G w)_i - lam|) / scale``."""
    gw = g @ w
    lam = w @ gw
    violation = torch.clamp(lam - gw, min=0.0).max()
    on_support = gw[w > 0]
    if on_support.numel() > 0:
        violation = torch.maximum(violation, (on_support - lam).abs().max())
    return float(violation) / scale


def _solve(gs: Tensor, max_iter: int | None = None) -> Tensor:
    """Return the polished minimiser of ``w^T G w`` over the simplex (``gs``: scaled Gramian)."""
    m = gs.shape[0]
    if max_iter is None:
        max_iter = 10 * m + 50
    support, w_support = _wolfe(gs, max_iter)
    w = torch.zeros(m, dtype=_DTYPE)
    w[support] = w_support
    return _polish(gs, w, support)


def _cholesky(gs: Tensor, idx: Tensor) -> Tensor | None:
    """Return the upper Cholesky factor of ``G_S + 1 1^T`` (``S = idx``), or None if not PD."""
    r, info = torch.linalg.cholesky_ex(gs[idx][:, idx] + 1.0, upper=True)
    return r if int(info) == 0 else None


def _lower_solve(r: Tensor, b: Tensor) -> Tensor:
    """Return ``R^{-T} b`` for an upper triangular ``R`` and a column ``b``."""
    return torch.linalg.solve_triangular(r.T, b, upper=False)


def _warm_start(gs: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """Return a starting corral ``(S, R, w_S)``, or None when ``G / s + 1 1^T`` is ill conditioned.

    Starting from all the indices, repeatedly restrict ``S`` to the positive part of its affine
    minimiser ``v`` until ``v > 0`` on ``S`` (then ``w_S = v`` is the min-norm point of the
    affine hull of ``S``, inside its convex hull: a valid state of Wolfe's method).
    """
    m = gs.shape[0]
    support = torch.arange(m)
    r, info = torch.linalg.cholesky_ex(gs + 1.0, upper=True)
    if int(info) != 0 or float(r.diagonal().min()) ** 2 <= _WARM_PIVOT_RTOL:
        return None
    for _ in range(m):
        u = torch.cholesky_solve(torch.ones(support.numel(), 1, dtype=_DTYPE), r, upper=True)
        v = u[:, 0] / u.sum()
        positive = v > _DROP_ATOL
        if bool(positive.all()):
            return support, r, v
        if not bool(positive.any()):
            return None
        support = support[positive]
        r_new = _cholesky(gs, support)
        if r_new is None:
            return None
        r = r_new
    return None


def _wolfe(gs: Tensor, max_iter: int) -> tuple[Tensor, Tensor]:
    """Return ``(S, w_S)`` from Wolfe's active-set method on the scaled Gramian ``gs``.

    ``S`` is a long tensor of affinely independent indices and ``w_S > 0`` sums to 1. The
    upper triangular ``R`` (``R^T R = G_S + 1 1^T``) and ``z = R^{-T} 1`` follow ``S``, so that
    the affine minimiser of ``S`` is ``v = u / 1^T u`` with ``u = R^{-1} z``.
    """
    m = gs.shape[0]
    start = _warm_start(gs)
    if start is None:
        j = int(torch.argmin(gs.diagonal()))
        support = torch.tensor([j])
        r = torch.full((1, 1), math.sqrt(float(gs[j, j]) + 1.0), dtype=_DTYPE)
        w_support = torch.ones(1, dtype=_DTYPE)
    else:
        support, r, w_support = start
    z = _lower_solve(r, torch.ones(support.numel(), 1, dtype=_DTYPE))
    in_support = torch.zeros(m, dtype=torch.bool)
    in_support[support] = True
    w = torch.zeros(m, dtype=_DTYPE)
    lam_previous = math.inf
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        # Major cycle: add the index j with the most negative reduced gradient (G w)_j - lam.
        w.zero_()
        w[support] = w_support
        gw = gs @ w
        lam = float(w @ gw)
        reduced = gw.masked_fill(in_support, math.inf)
        j = int(torch.argmin(reduced))
        if not (lam - float(reduced[j]) > _STOP_RTOL and lam < lam_previous):
            break
        lam_previous = lam
        appended = _append(gs, r, z, support, j)
        if appended is not None:
            r, z = appended
            w_support = torch.cat([w_support, torch.zeros(1, dtype=_DTYPE)])
        else:
            # g_j is numerically in the affine hull of S (e.g. a near-duplicate gradient): exchange
            # it for an index of S instead, by a ratio-test step along the affine dependency.
            exchanged = _exchange(gs, r, support, w_support, j, lam - float(reduced[j]))
            if exchanged is None:
                break
            position, w_new, t = exchanged
            keep = torch.ones(support.numel(), dtype=torch.bool)
            keep[position] = False
            support_without = support[keep]
            r_without = _drop_columns(gs, r, torch.tensor([position]), support_without)
            if r_without is None:
                break
            ones_without = torch.ones(support_without.numel(), 1, dtype=_DTYPE)
            appended = _append(
                gs, r_without, _lower_solve(r_without, ones_without), support_without, j
            )
            if appended is None:
                break
            r, z = appended
            in_support[support[position]] = False
            support = support_without
            w_support = torch.cat([w_new[keep], torch.full((1,), t, dtype=_DTYPE)])
            w_support = w_support / w_support.sum()
        support = torch.cat([support, torch.tensor([j])])
        in_support[j] = True

        # Minor cycle: move to the affine minimiser of S, dropping indices whose weight vanishes.
        while True:
            u = torch.linalg.solve_triangular(r, z, upper=True)[:, 0]
            v = u / u.sum()
            nonpositive = v <= _DROP_ATOL
            if not bool(nonpositive.any()):
                w_support = v
                break
            if iterations >= max_iter:
                return support, w_support
            iterations += 1
            step = w_support - v
            usable = nonpositive & (step > 0)
            ratios = torch.where(usable, w_support / torch.where(usable, step, 1.0), 0.0)
            ratios = torch.where(nonpositive, ratios, math.inf)
            first = int(torch.argmin(ratios))
            w_new = w_support + float(ratios[first]) * (v - w_support)
            keep = w_new > _DROP_ATOL
            keep[first] = False
            if not bool(keep.any()):  # cannot happen in exact arithmetic; keep the best vertex
                keep[int(torch.argmax(w_new))] = True
            positions = torch.nonzero(~keep).flatten()
            in_support[support[positions]] = False
            support = support[keep]
            w_support = w_new[keep] / w_new[keep].sum()
            r_new = _drop_columns(gs, r, positions, support)
            if r_new is None:
                return support, w_support
            r = r_new
            z = _lower_solve(r, torch.ones(support.numel(), 1, dtype=_DTYPE))
    return support, w_support


def _append(
    gs: Tensor, r: Tensor, z: Tensor, support: Tensor, j: int
) -> tuple[Tensor, Tensor] | None:
    """Return ``(R, z)`` with index ``j`` appended to ``S``, or None if the new pivot is tiny.

    ``R^T c = G_Sj + 1`` gives the new column ``c`` and pivot ``rho^2 = G_jj + 1 - |c|^2``; the
    new entry of ``z = R^{-T} 1`` is ``(1 - c^T z) / rho``.
    """
    column = _lower_solve(r, gs[j][support].unsqueeze(1) + 1.0)
    pivot = float(gs[j, j]) + 1.0 - float(column.T @ column)
    if not pivot > _PIVOT_RTOL:
        return None
    rho = math.sqrt(pivot)
    k = support.numel()
    r_new = torch.zeros(k + 1, k + 1, dtype=_DTYPE)
    r_new[:k, :k] = r
    r_new[:k, k : k + 1] = column
    r_new[k, k] = rho
    z_k = (1.0 - float(column.T @ z)) / rho
    return r_new, torch.cat([z, torch.full((1, 1), z_k, dtype=_DTYPE)])


def _exchange(
    gs: Tensor, r: Tensor, support: Tensor, w_support: Tensor, j: int, gap: float
) -> tuple[int, Tensor, float] | None:
    """Return ``(p, w_S, t)`` exchanging ``S[p]`` for ``j``, or None if that does not decrease.

    ``g_j ~ sum_i alpha_i g_i`` with ``1^T alpha = 1`` (``alpha = (G_S + 1 1^T)^{-1} (G_Sj + 1)``,
    normalised). Along ``delta = e_j - alpha`` the objective changes by
    ``-2 t gap + t^2 delta^T G delta`` (``gap = lam - (G w)_j > 0``); the ratio test
    ``t = min_{alpha_i > 0} w_i / alpha_i`` zeroes ``w_p``; the step is taken only if it decreases
    the objective. Returns the new weights ``w_S - t alpha`` of ``S`` (``w_p = 0``) and the weight
    ``t`` of ``j``.
    """
    b = gs[j][support].unsqueeze(1) + 1.0
    alpha = torch.cholesky_solve(b, r, upper=True)[:, 0]
    total = float(alpha.sum())
    if not total > 0:
        return None
    alpha = alpha / total
    positive = alpha > 0
    ratios = torch.where(positive, w_support / torch.where(positive, alpha, 1.0), math.inf)
    p = int(torch.argmin(ratios))
    t = float(ratios[p])
    g_ss = gs[support][:, support]
    curvature = float(gs[j, j]) - 2.0 * float(alpha @ gs[j][support]) + float(alpha @ g_ss @ alpha)
    if not (t > 0 and t * max(curvature, 0.0) < 2.0 * gap):
        return None
    w_new = torch.clamp(w_support - t * alpha, min=0.0)
    w_new[p] = 0.0
    return p, w_new, t


def _drop_columns(gs: Tensor, r: Tensor, positions: Tensor, support: Tensor) -> Tensor | None:
    """Return the factor ``R`` of ``G_S + 1 1^T`` after removing ``positions``; None if not PD.

    One removed column ``p`` only changes the trailing block: with ``R`` partitioned around
    ``p`` as ``[[R11, r1, R13], [0, rho, r2^T], [0, 0, R33]]`` the new factor is
    ``[[R11, R13], [0, chol(R33^T R33 + r2 r2^T)]]``. Several columns: refactorise from scratch.
    """
    if positions.numel() != 1:
        return _cholesky(gs, support)
    p = int(positions[0])
    k = r.shape[0]
    keep = torch.ones(k, dtype=torch.bool)
    keep[p] = False
    r_new = r[keep][:, keep]  # [[R11, R13], [0, R33]]
    if p < k - 1:
        r2 = r[p, p + 1 :]
        r33 = r[p + 1 :, p + 1 :]
        trailing, info = torch.linalg.cholesky_ex(r33.T @ r33 + torch.outer(r2, r2), upper=True)
        if int(info) != 0:
            return _cholesky(gs, support)
        r_new[p:, p:] = trailing
    return r_new


def _polish(gs: Tensor, w: Tensor, support: Tensor) -> Tensor:
    """Return ``w`` with ``w_S`` recomputed from the KKT system on ``S`` when that is not worse.

    ``(G_S / s + 1 1^T) u = 1`` is solved by Cholesky plus one step of iterative refinement,
    ``v = u / 1^T u``; tiny negatives are clipped to exact zeros and ``v`` is renormalised.
    """
    if support.numel() == 1:
        w = torch.zeros_like(w)
        w[support] = 1.0
        return w
    r = _cholesky(gs, support)
    if r is None:
        return w
    matrix = gs[support][:, support] + 1.0
    ones = torch.ones(support.numel(), 1, dtype=_DTYPE)
    u = torch.cholesky_solve(ones, r, upper=True)
    u = u + torch.cholesky_solve(ones - matrix @ u, r, upper=True)
    v = u[:, 0] / u.sum()
    if bool((v < -_DROP_ATOL).any()):
        return w
    v = torch.clamp(v, min=0.0)
    if not bool((v > 0).any()):
        return w
    candidate = torch.zeros_like(w)
    candidate[support] = v / v.sum()
    if _kkt_residual(gs, candidate, 1.0) <= _kkt_residual(gs, w, 1.0):
        return candidate
    return w


def _is_unique(gs: Tensor, w: Tensor, support: tuple[int, ...], kkt: float) -> bool:
    """Return whether ``w`` is the only minimiser (see :func:`min_norm_weights`)."""
    gw = gs @ w
    lam = w @ gw
    tie_tol = max(_TIE_RTOL, 10.0 * kkt)
    on_support = w > 0
    ties = torch.nonzero(on_support | (gw - lam <= tie_tol)).flatten()
    in_support = on_support[ties]
    matrix = gs[ties][:, ties] + 1.0  # null space: G_T delta = 0 and 1^T delta = 0
    if bool(in_support.all()):
        return _smallest_eigenvalue(matrix) > _RANK_RTOL
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    null = eigenvectors[:, eigenvalues <= _RANK_RTOL]
    if null.shape[1] == 0:
        return True
    y = null[~in_support]  # off-support part of the null space
    u, singular, _ = torch.linalg.svd(y, full_matrices=False)
    rank = int((singular > 1e-8).sum())
    if rank < null.shape[1]:  # a null vector supported on S: [G_S 1; 1^T 0] is singular
        return False
    q = u[:, :rank]
    projector = torch.eye(q.shape[0], dtype=_DTYPE) - q @ q.T
    projector = (projector + projector.T) / 2
    z = torch.ones(1, dtype=_DTYPE) if q.shape[0] == 1 else _solve(projector)
    return float(z @ (projector @ z)) > _SUBPROBLEM_ATOL


def _smallest_eigenvalue(matrix: Tensor, iterations: int = 8) -> float:
    """Return the smallest eigenvalue of a symmetric PSD ``matrix`` (0.0 if it is not PD).

    Estimated by inverse iteration with a Cholesky factor (Rayleigh quotient of the last
    iterate, an upper bound that converges fast exactly when the matrix is nearly singular).
    """
    r, info = torch.linalg.cholesky_ex(matrix, upper=True)
    if int(info) != 0:
        return 0.0
    k = matrix.shape[0]
    x = torch.cos(torch.arange(1, k + 1, dtype=_DTYPE) * 2.399963229728653).unsqueeze(1)
    for _ in range(iterations):
        x = torch.cholesky_solve(x / x.norm(), r, upper=True)
    x = x / x.norm()
    return float(x.T @ matrix @ x)
