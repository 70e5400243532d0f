"""Weighting methods side by side: each method's combined direction, computed from G and w only.

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
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gradtool import gramian as gm
from gradtool.errors import UsageError
from gradtool.pareto import DERIVATIVE_RTOL, normalization_scale
from gradtool.report import MethodResult
from gradtool.weightings import (
    DEFAULT_METHOD,
    INSTALL_SOLVERS,
    WEIGHTINGS,
    MissingDependencyError,
    WeightingError,
    preference_methods,
)

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


def resolve_methods(methods: Sequence[str], compare: bool) -> tuple[list[str], list[str]]:
    """Return (the methods to run, in order; those `--compare` skips for missing packages).

    Without `compare`: `methods` as given. With it: `methods` first, then every other method of
    `WEIGHTINGS` whose packages are installed (the others are returned as skipped).
    """
    unknown = [name for name in methods if name not in WEIGHTINGS]
    if unknown:
        raise UsageError(
            f"unknown method {unknown[0]!r}", hint=f"known methods: {', '.join(WEIGHTINGS)}"
        )
    chosen = list(dict.fromkeys(methods))
    skipped: list[str] = []
    if compare:
        for name, method in WEIGHTINGS.items():
            if name in chosen:
                continue
            if method.available:
                chosen.append(name)
            else:
                skipped.append(name)
    return chosen, skipped


def compare_methods(
    gramian: torch.Tensor,
    loss_values: Sequence[float],
    names: Sequence[str],
    *,
    methods: Sequence[str] = (DEFAULT_METHOD,),
    compare: bool = False,
    normalize: str = "none",
    preference: Sequence[float] | None = None,
) -> tuple[list[MethodResult], list[str]]:
    """Return one `MethodResult` per method, and warnings (methods `--compare` had to skip).

    With `normalize`, each method weighs the normalised gradients g_i / s_i (Gramian D G D,
    D = diag(1/s), as `gradtool.pareto`), and its direction is d = sum_i (w_i / s_i) g_i.
    `preference` goes to the methods that take one (UPGrad, DualProj, Aligned-MTL).

    Raises:
        UsageError: an unknown method, a preference of the wrong length, or a preference that
            none of the methods takes.
        MissingDependencyError, WeightingError: a method listed explicitly cannot run (with
            `compare`, the methods it added are skipped with a warning instead).
    """
    m = len(names)
    chosen, skipped = resolve_methods(methods, compare)
    if compare and m == 1:
        # with one loss every weighting is a rescaling of its gradient: nothing to compare
        chosen = [name for name in chosen if name in set(methods) | {"mgda", "mean", "sum"}]
        skipped = []
    pref = _checked_preference(preference, chosen, names, compare)
    g = gm.as_gramian(gramian)
    scale = normalization_scale(g, loss_values, normalize, names)
    g_norm = gm.normalized(g, scale)
    explicit = set(methods)
    warnings: list[str] = []
    if skipped:
        warnings.append(
            f"--compare skipped {', '.join(skipped)}: their solvers are not installed "
            f"({INSTALL_SOLVERS})"
        )
    rank = numerical_rank(g)
    full_rank_only = [name for name in chosen if WEIGHTINGS[name].needs_full_rank]
    if full_rank_only and rank < m:
        warnings.append(
            f"{' and '.join(full_rank_only)} assume linearly independent gradients, but the "
            f"Gramian has rank {rank} < {m}: their weights are unreliable here"
        )
    results: list[MethodResult] = []
    for name in chosen:
        method = WEIGHTINGS[name]
        method_pref = pref if method.takes_preference else None
        try:
            weights = method(g_norm, method_pref)
        except (MissingDependencyError, WeightingError) as exc:
            if name in explicit:
                raise
            warnings.append(f"--compare skipped {name}: {exc.message}")
            continue
        loss_weights = weights / scale
        stats = direction_stats(g, loss_weights)
        results.append(
            MethodResult(
                method=name,
                name=method.display,
                normalize=normalize,
                preference=None
                if method_pref is None
                else dict(zip(names, method_pref.tolist(), strict=True)),
                weights=dict(zip(names, weights.tolist(), strict=True)),
                loss_weights=dict(zip(names, loss_weights.tolist(), strict=True)),
                norm=stats.norm,
                cosine=dict(zip(names, stats.cosine, strict=True)),
                directional_derivatives=dict(
                    zip(names, stats.directional_derivatives, strict=True)
                ),
                decreases_all=stats.decreases_all,
            )
        )
    assert all(len(r.weights) == m for r in results)
    return results, warnings


def methods_verdict(results: Sequence[MethodResult], names: Sequence[str]) -> list[str]:
    """Return one sentence on which methods raise a loss to first order (none for MGDA alone)."""
    if [r.method for r in results] in ([], [DEFAULT_METHOD]):
        return []
    raising = [r for r in results if not r.decreases_all]
    safe = [r.method for r in results if r.decreases_all]
    if not raising:
        return [f"every method compared ({', '.join(safe)}) lowers every loss to first order"]
    parts = []
    for r in raising:
        hurt = [n for n in names if r.directional_derivatives[n] < 0]
        parts.append(f"{r.method} raises {', '.join(hurt)}")
    line = "to first order " + "; ".join(parts)
    if len(safe) == 1:
        line += f"; {safe[0]} lowers every loss"
    elif safe:
        line += f"; the {len(safe)} other methods lower every loss"
    return [line]


def numerical_rank(gramian: torch.Tensor) -> int:
    """Return the number of eigenvalues of G above 1e-10 times the largest (0 for G = 0)."""
    eigenvalues = torch.linalg.eigvalsh(gm.as_gramian(gramian))
    top = float(eigenvalues.max()) if eigenvalues.numel() else 0.0
    if top <= 0:
        return 0
    return int((eigenvalues > RANK_RTOL * top).sum())


def _checked_preference(
    preference: Sequence[float] | None, chosen: Sequence[str], names: Sequence[str], compare: bool
) -> torch.Tensor | None:
    """Return the preference as a float64 tensor after checking its length, signs and use."""
    if preference is None:
        return None
    takers = preference_methods()
    if not compare and not any(name in takers for name in chosen):
        raise UsageError(
            f"--preference applies to {', '.join(takers)}; none of the methods "
            f"({', '.join(chosen)}) takes one",
            hint=f"add one of them, e.g. --method {chosen[0]},{takers[0]}",
        )
    values = [float(v) for v in preference]
    if len(values) != len(names):
        raise UsageError(
            f"--preference has {len(values)} values but the gradfile has {len(names)} losses "
            f"({', '.join(names)})",
            hint="give one positive weight per loss, in the order of the losses",
        )
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise UsageError(
            f"--preference values should be positive and finite; found {bad[0]:g}",
            hint="e.g. --preference 1,1,2 weighs the third loss twice",
        )
    return torch.tensor(values, dtype=torch.float64)
