"""Weighting methods side by side: each method's combined direction, computed from G and w only
(see `gradtool.linalg.direction` for the statistics and their round-off tolerances)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gradtool.errors import MissingDependencyError, UsageError, WeightingError, opt
from gradtool.linalg import gramian as gm
from gradtool.linalg.direction import direction_stats, numerical_rank
from gradtool.linalg.pareto import ParetoSolution, pareto_solution
from gradtool.results.report import MethodResult
from gradtool.weightings import (
    DEFAULT_METHOD,
    INSTALL_SOLVERS,
    WEIGHTINGS,
    check_methods,
    preference_methods,
)


def resolve_methods(methods: Sequence[str], compare: bool) -> tuple[list[str], list[str]]:
    """Return (the methods to run, in order; those `--compare` skips for missing packages).

    Without `compare`: `methods` as given. With it: `methods` first, then every other method of
    `WEIGHTINGS` whose packages are installed (the others are returned as skipped).
    """
    chosen = list(check_methods(methods))
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
    solved: ParetoSolution | None = None,
) -> tuple[list[MethodResult], list[str]]:
    """Return one `MethodResult` per method, and warnings (methods `--compare` had to skip).

    With `normalize`, each method weighs the normalised gradients g_i / s_i (Gramian D G D,
    D = diag(1/s), as `gradtool.pareto`), and its direction is d = sum_i (w_i / s_i) g_i.
    `preference` goes to the methods that take one (UPGrad, DualProj, Aligned-MTL). `solved` is
    the Pareto solution of the same Gramian and normalisation, when the caller has it: its
    normalisation and its MGDA weights are reused, not computed again.

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
    if solved is None or solved.normalize != normalize:
        solved = pareto_solution(g, loss_values, names, normalize=normalize)
    scale, g_norm = solved.scale, solved.normalized_gramian
    explicit = set(methods)
    warnings: list[str] = []
    if skipped:
        warnings.append(
            f"the comparison skipped {', '.join(skipped)}: their solvers are not installed "
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
            weights = solved.weights if name == "mgda" else method(g_norm, method_pref)
        except (MissingDependencyError, WeightingError) as exc:
            if name in explicit:
                raise
            warnings.append(f"the comparison skipped {name}: {exc.message}")
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


def check_preference(
    preference: Sequence[float], methods: Sequence[str], compare: bool
) -> tuple[float, ...]:
    """Return the preference after checking that some method takes it and that it is positive
    and finite (its length is checked against the losses by `compare_methods`)."""
    values = tuple(float(v) for v in preference)
    takers = preference_methods()
    if not compare and not any(name in takers for name in methods):
        raise UsageError(
            f"{opt('preference')} applies to {', '.join(takers)}; none of "
            f"{opt('methods', ','.join(methods))} takes one",
            hint=f"add one of them, e.g. {opt('methods', f'{methods[0]},{takers[0]}')}",
            option="preference",
        )
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise UsageError(
            f"{opt('preference')} values should be positive and finite; found {bad[0]:g}",
            hint=f"e.g. {opt('preference', '1,1,2')} weighs the third loss twice",
            option="preference",
        )
    return values


def _checked_preference(
    preference: Sequence[float] | None, chosen: Sequence[str], names: Sequence[str], compare: bool
) -> torch.Tensor | None:
    """Return the preference as a float64 tensor after checking its length, signs and use."""
    if preference is None:
        return None
    values = check_preference(preference, chosen, compare)
    if len(values) != len(names):
        raise UsageError(
            f"{opt('preference')} has {len(values)} values but the gradfile has {len(names)} "
            f"losses ({', '.join(names)})",
            hint="give one positive weight per loss, in the order of the losses",
            option="preference",
        )
    return torch.tensor(values, dtype=torch.float64)
