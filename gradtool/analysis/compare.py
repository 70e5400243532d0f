"""Weighting methods side by side: each method's combined direction, computed from G and w only
(see `gradtool.linalg.direction` for the statistics and their round-off tolerances)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gradtool.errors import UsageError, WeightingError, opt
from gradtool.linalg import gramian as gm
from gradtool.linalg.direction import direction_stats, numerical_rank
from gradtool.linalg.pareto import ParetoSolution, pareto_solution
from gradtool.linalg.solvers import CERTIFY_RTOL
from gradtool.results.report import MethodResult, inert
from gradtool.weightings import (
    DEFAULT_METHOD,
    WEIGHTINGS,
    check_methods,
    preference_methods,
)


def resolve_methods(methods: Sequence[str], compare: bool) -> list[str]:
    """Return the methods to run, in order: `methods`, then with `compare` every other method of
    `WEIGHTINGS` (each is solved by gradtool itself: none needs an optional package)."""
    chosen = list(check_methods(methods))
    if compare:
        chosen += [name for name in WEIGHTINGS if name not in chosen]
    return chosen


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

    Each result carries its certificate (`residual`, `certified`): the relative violation of the
    method's own defining conditions at its weights (MGDA: the KKT residual).

    Raises:
        UsageError: an unknown method, a preference of the wrong length, or a preference that
            none of the methods takes.
        WeightingError: a method listed explicitly cannot run (with `compare`, the methods it
            added are skipped with a warning instead).
    """
    m = len(names)
    chosen = resolve_methods(methods, compare)
    if compare and m == 1:
        # with one loss every weighting is a rescaling of its gradient: nothing to compare
        chosen = [name for name in chosen if name in set(methods) | {"mgda", "mean", "sum"}]
    pref = _checked_preference(preference, chosen, names, compare)
    g = gm.as_gramian(gramian)
    if solved is None or solved.normalize != normalize:
        solved = pareto_solution(g, loss_values, names, normalize=normalize)
    scale, g_norm = solved.scale, solved.normalized_gramian
    explicit = set(methods)
    warnings: list[str] = []
    results: list[MethodResult] = []
    for name in chosen:
        method = WEIGHTINGS[name]
        method_pref = pref if method.takes_preference else None
        try:
            if name == "mgda":
                weights, residual, details = solved.weights, solved.kkt_residual, {}
            else:
                solution = method.solve(g_norm, method_pref)
                weights = torch.from_numpy(solution.weights)
                residual, details = solution.residual, solution.details
        except WeightingError as exc:
            if name in explicit:
                raise
            warnings.append(f"the comparison skipped {name}: {exc.message}")
            continue
        certified = math.isfinite(residual) and residual <= CERTIFY_RTOL
        if not certified:
            rank = numerical_rank(g) if method.needs_full_rank else m
            why = (
                f"; it assumes linearly independent gradients, and the Gramian has rank {rank} "
                f"< {m}"
                if rank < m
                else ""
            )
            warnings.append(
                f"{name} does not certify on this Gramian (residual of its defining conditions "
                f"{residual:.1e} > {CERTIFY_RTOL:g}{why}): its weights and what follows from "
                "them are not stated as fact"
            )
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
                decreases_all=stats.decreases_all if certified else None,
                residual=residual,
                certified=certified,
                diagnostics=_diagnostics(name, details, names),
                zero_direction=stats.zero,
            )
        )
    assert all(len(r.weights) == m for r in results)
    return results, warnings


def _diagnostics(name: str, details: dict[str, object], names: Sequence[str]) -> dict[str, object]:
    """Return the method's own report on itself, keyed by loss name (PCGrad's projections)."""
    if name != "pcgrad":
        return {}
    removed = details.get("removed", [])
    conflicts = details.get("conflicts", [])
    assert isinstance(removed, list) and isinstance(conflicts, list)
    return {
        "removed": dict(zip(names, removed, strict=True)),
        "still_conflicts": [names[k] for k in conflicts],
    }


def methods_verdict(results: Sequence[MethodResult], names: Sequence[str]) -> list[str]:
    """Return one sentence on which methods raise a loss to first order (none for MGDA alone),
    about certified methods only (the others are named as such); names are shown `inert`."""
    if [r.method for r in results] in ([], [DEFAULT_METHOD]):
        return []
    lines = _pcgrad_verdict(results)
    uncertified = [r.method for r in results if not r.certified]
    if uncertified:
        lines.append(
            f"{', '.join(uncertified)} did not certify: no conclusion is drawn from "
            f"{'its' if len(uncertified) == 1 else 'their'} weights"
        )
    flat = [r.method for r in results if r.certified and r.zero_direction]
    if flat:
        lines.append(
            f"{', '.join(flat)} give{'s' if len(flat) == 1 else ''} d = 0: a step along it "
            "changes no loss to first order"
        )
    results = [r for r in results if r.certified and not r.zero_direction]
    raising = [r for r in results if not r.decreases_all]
    safe = [r.method for r in results if r.decreases_all]
    if not results:
        return lines
    # "lowers" where every rate is > 0; a rate of exactly 0 (on the boundary) only "raises none"
    level = [r.method for r in results if r.decreases_all and _has_zero_rate(r)]
    if level:
        lines.append(
            f"{', '.join(level)} leave{'s' if len(level) == 1 else ''} some loss unchanged to "
            f"first order (a rate of 0) and raise{'s' if len(level) == 1 else ''} none"
        )
    if not raising:
        strict = [name for name in safe if name not in level]
        if strict:
            lines.append(
                f"every other method compared ({', '.join(strict)}) lowers every loss to first "
                "order"
                if level
                else f"every method compared ({', '.join(strict)}) lowers every loss to first order"
            )
        return lines
    parts = []
    for r in raising:
        hurt = [inert(n) for n in names if r.directional_derivatives[n] < 0]
        parts.append(f"{r.method} raises {', '.join(hurt)}")
    line = "to first order " + "; ".join(parts)
    strict = [name for name in safe if name not in level]
    if len(strict) == 1:
        line += f"; {strict[0]} lowers every loss"
    elif strict:
        line += f"; the {len(strict)} other methods lower every loss"
    return [*lines, line]


def _has_zero_rate(result: MethodResult) -> bool:
    return any(v == 0.0 for v in result.directional_derivatives.values())


def _pcgrad_verdict(results: Sequence[MethodResult]) -> list[str]:
    """Return PCGrad's own account: how much of each gradient its projections removed, and
    whether the summed direction still conflicts with a loss."""
    pc = next((r for r in results if r.method == "pcgrad" and r.certified), None)
    if pc is None or not pc.diagnostics:
        return []
    removed = pc.diagnostics["removed"]
    worst = max(removed, key=lambda n: removed[n])
    if removed[worst] == 0:
        return ["pcgrad removed nothing: no gradient conflicts with another"]
    line = f"pcgrad's projections removed up to {removed[worst]:.0%} of {inert(worst)}'s gradient"
    still = pc.diagnostics["still_conflicts"]
    if still:
        line += f"; its summed direction still raises {', '.join(inert(n) for n in still)}"
    else:
        line += "; its summed direction conflicts with no loss"
    return [line]


def check_preference(
    preference: Sequence[float], methods: Sequence[str], compare: bool
) -> tuple[float, ...]:
    """Return the preference after checking that some method takes it and that it is positive
    and finite (its length is checked against the losses by `compare_methods`)."""
    if isinstance(preference, (str, bytes)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in preference
    ):
        raise UsageError(
            f"{opt('preference')} should hold numbers, one per loss; found {preference!r:.60}",
            hint=f"e.g. {opt('preference', (1, 1, 2))}",
            option="preference",
        )
    values = tuple(float(v) for v in preference)
    takers = preference_methods()
    if not compare and not any(name in takers for name in methods):
        raise UsageError(
            f"{opt('preference')} applies to {', '.join(takers)}; none of "
            f"{opt('methods', tuple(methods))} takes one",
            hint=f"add one of them, e.g. {opt('methods', (methods[0], takers[0]))}",
            option="preference",
        )
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise UsageError(
            f"{opt('preference')} values should be positive and finite; found {bad[0]:g}",
            hint=f"e.g. {opt('preference', (1, 1, 2))} weighs the third loss twice",
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
            f"{opt('preference')} has {len(values)} values but there are {len(names)} losses "
            f"({', '.join(inert(n) for n in names)})",
            hint="give one positive weight per loss, in the order of the losses",
            option="preference",
        )
    return torch.tensor(values, dtype=torch.float64)
