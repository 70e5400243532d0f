"""Turns the engine's Gramians into a `Report`: norms, pairwise matrices, layers, batch
statistics, unused parameters, the Pareto result and a one-line verdict. Works on Gramians only.

A conflict is reported only where it is material: a pair conflicts when its cosine is below
-tau (`conflict_threshold`, default 0.05, an angle beyond 92.9 degrees), and over batches when the
mean per-batch cosine stays below -tau by more than its standard error,
mean + s / sqrt(n) < -tau with n the batches where the cosine is defined (s the sample standard
deviation). The raw cosines stay
in the report; the decisions are stored as flags (`Report.conflict`, `LayerStats.conflict`,
`BatchStats.conflict`) for the renderer and the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from gradtool.analysis.compare import compare_methods, methods_verdict
from gradtool.analysis.convert import to_list
from gradtool.analysis.layers import (
    GroupsArg,
    Layer,
    check_groups,
    groups_of,
    layers_of,
    ungrouped,
)
from gradtool.analysis.loss_groups import (
    LossGroup,
    LossGroupsArg,
    check_loss_groups,
    group_losses,
    losses_in_no_group,
)
from gradtool.engine import EngineResult, Fallback
from gradtool.errors import NonFiniteGradientError, UsageError, opt
from gradtool.linalg import gramian as gm
from gradtool.linalg.pareto import STATIONARY_TOL, ParetoSolution, pareto_solution
from gradtool.results.report import (
    BatchStats,
    GradientStats,
    LayerStats,
    LossGroupStats,
    ParetoReport,
    Report,
    TopPair,
    conflict_line,
    inert,
)

DEFAULT_DEPTH = 3
# A cosine below -0.05 (an angle beyond 92.9 degrees) is a conflict. A step -lr g_j changes loss i
# by -lr |g_i| |g_j| cos_ij: at cos -0.05 it raises loss i by 5% of what a step of the same length
# along -g_i would lower it, the size at which users start to read a trade-off. Two independent
# random directions in P dimensions have |cos| ~ 1/sqrt(P), below 0.05 from P = 400 on, so noise
# alone seldom crosses it; and a cosine below -0.05 never prints as -0.00.
DEFAULT_CONFLICT_THRESHOLD = 0.05
# A min-norm |d| at most this fraction of the largest gradient norm is 0 up to round-off.
ROUND_OFF = 1e-12
# The most conflicting pairs kept in `Report.top_pairs` (and shown where the full pair table
# would be too long): m losses have m (m - 1) / 2 pairs, 4950 for 100 losses.
DEFAULT_TOP = 10
# Verdict sentences of one kind (conflicts over batches, ...) before "N more".
VERDICT_LINES = 3


def check_top(top: int) -> int:
    """Return `top` (how many of the most conflicting pairs to keep) after checking it is an
    integer of at least 1."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise UsageError(
            f"{opt('top')} should be a whole number of at least 1; found {top!r}",
            hint=f"it is how many of the most conflicting pairs to list (default {DEFAULT_TOP})",
            option="top",
        )
    return top


def check_conflict_threshold(threshold: float) -> float:
    """Return the conflict threshold tau as a float after checking 0 <= tau <= 1 (a cosine below
    -tau is a conflict: 0 counts every negative cosine, 1 none)."""
    value = float(threshold)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UsageError(
            f"{opt('conflict_threshold')} should be a number from 0 to 1; found {threshold!r}",
            hint=f"a cosine below minus the threshold is a conflict; the default is "
            f"{opt('conflict_threshold', DEFAULT_CONFLICT_THRESHOLD)}",
            option="conflict_threshold",
        )
    return value


@dataclass(frozen=True)
class ParetoOptions:
    """The Pareto section (always the exact MGDA solution) and the methods compared beside it."""

    normalize: str = "none"
    tol: float = STATIONARY_TOL
    # The weighting methods compared side by side (`Report.methods`; gradtool.compare).
    methods: tuple[str, ...] = ("mgda",)
    compare: bool = False
    preference: tuple[float, ...] | None = None


def pareto_options(pareto: ParetoOptions | bool | None) -> ParetoOptions | None:
    """Return the Pareto options `pareto` stands for: True -> the defaults, False/None -> none."""
    if pareto is None or pareto is False:
        return None
    if pareto is True:
        return ParetoOptions()
    if isinstance(pareto, ParetoOptions):
        return pareto
    raise UsageError(
        f"{opt('pareto')} should be True, False or a ParetoOptions; found {pareto!r}",
        option="pareto",
    )


def build_report(
    result: EngineResult,
    *,
    command: str,
    depth: int | None = DEFAULT_DEPTH,
    pareto: ParetoOptions | None = None,
    meta: dict[str, object] | None = None,
    conflict_threshold: float = DEFAULT_CONFLICT_THRESHOLD,
    groups: GroupsArg | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    top: int = DEFAULT_TOP,
    loss_groups: LossGroupsArg | None = None,
) -> Report:
    """Return the Report for `result`; raise `NonFiniteGradientError` on non-finite entries.

    `conflict_threshold` tau: a cosine below -tau is a conflict (see the module docstring).
    `groups` (name -> globs on the parameter names; `aliases`: other names of tied parameters)
    adds a table of parameter groups beside the layers (`Report.groups`, `Report.ungrouped`).
    `top`: how many of the most conflicting pairs `Report.top_pairs` keeps. `loss_groups`
    (name -> globs on the loss names) adds the Gramian of each group's summed gradient,
    G_AB = sum_{i in A, j in B} G_ij (`Report.loss_groups`).
    """
    tau = check_conflict_threshold(conflict_threshold)
    k = check_top(top)
    checked_losses = check_loss_groups(loss_groups)
    names = result.loss_names
    chosen = group_losses(names, checked_losses) if checked_losses else None
    check_finite(result)
    g = result.gramian
    n = gm.norms(g)
    cos = gm.cosine(g)
    reached = result.reached
    unused = {
        name: [p for b, p in enumerate(result.param_names) if not bool(reached[b, i])]
        for i, name in enumerate(names)
    }
    unreached = [p for b, p in enumerate(result.param_names) if not bool(reached[b].any())]
    gradients = {
        name: GradientStats(
            norm=float(n[i]),
            max_abs=result.max_abs[i],
            nonfinite=int(result.nonfinite[:, i].sum()),
        )
        for i, name in enumerate(names)
    }
    layers = [_share(layer, result, tau) for layer in layers_of(result, depth)]
    checked = check_groups(groups)
    group_stats, left_out = None, None
    if checked:
        shares = groups_of(result, checked, aliases=aliases)
        group_stats = [_share(group, result, tau) for group in shares]
        left_out = ungrouped(result.param_names, shares)
    batch_stats = None
    if result.batch_gramians is not None:
        batch_stats = _batch_stats(result.batch_gramians, tau)
    conflict = gm.offdiagonal_below(cos, tau)
    angles = gm.angle_deg(cos)
    top_pairs = [
        _top_pair(names, i, j, cos, angles, conflict, batch_stats)
        for i, j in gm.lowest_pairs(cos, k)
    ]
    group_report = None
    if chosen is not None:
        group_report = _loss_groups(chosen, names, g, result.loss_values, tau)
    pareto_report, methods, method_warnings = None, None, []
    if pareto is not None:
        solved = pareto_solution(
            g, result.loss_values, names, normalize=pareto.normalize, tol=pareto.tol
        )
        pareto_report = _pareto_report(solved, names)
        methods, method_warnings = compare_methods(
            g,
            result.loss_values,
            names,
            methods=pareto.methods,
            compare=pareto.compare,
            normalize=pareto.normalize,
            preference=pareto.preference,
            solved=solved,
        )
    report = Report(
        command=command,
        losses=list(names),
        loss_values=dict(zip(names, result.loss_values, strict=True)),
        num_batches=result.num_batches,
        parameters={"count": len(result.param_names), "numel": sum(result.param_numels)},
        gradients=gradients,
        unused=unused,
        unreached=unreached,
        dot=to_list(g),
        cosine=to_list(cos),
        angle_deg=to_list(angles),
        magnitude_similarity=to_list(gm.magnitude_similarity(g)),
        conflict_threshold=tau,
        conflict=conflict.tolist(),
        layers=layers,
        depth=depth,
        groups=group_stats,
        ungrouped=left_out,
        top_pairs=top_pairs,
        loss_groups=group_report,
        batch_stats=batch_stats,
        pareto=pareto_report,
        methods=methods,
        meta={
            "strategy": result.strategy,
            "fallback_reason": result.fallback_reason,
            **structured_meta(result),
            **({"groups": {k: list(v) for k, v in checked.items()}} if checked else {}),
            **(
                {"loss_groups": {k: list(v) for k, v in checked_losses.items()}}
                if checked_losses
                else {}
            ),
            **(meta or {}),
        },
    )
    report.warnings = _warnings(report, result) + method_warnings
    report.verdict = verdict(report) + methods_verdict(methods or [], names)
    return report


def _share(layer: Layer, result: EngineResult, tau: float) -> LayerStats:
    """Return the statistics of a layer's (or a parameter group's) Gramian: norms, cosines,
    the losses reaching it, its lowest pair and its material conflicts."""
    names = result.loss_names
    n_layer = gm.norms(layer.gramian)
    cos_layer = gm.cosine(layer.gramian)
    return LayerStats(
        name=layer.name,
        numel=layer.numel,
        norms={name: float(n_layer[i]) for i, name in enumerate(names)},
        cosine=to_list(cos_layer),
        dot=to_list(layer.gramian),
        parameters=[result.param_names[b] for b in layer.indices],
        reached={
            name: bool(result.reached[layer.indices, i].any()) for i, name in enumerate(names)
        },
        lowest_pair=gm.lowest_pair(cos_layer),
        conflict=gm.offdiagonal_below(cos_layer, tau).tolist(),
    )


def _top_pair(
    names: Sequence[str],
    i: int,
    j: int,
    cos: torch.Tensor,
    angles: torch.Tensor,
    conflict: torch.Tensor,
    stats: BatchStats | None,
) -> TopPair:
    """Return the pair (i, j) of the most conflicting ones: its whole-model cosine and angle,
    and over batches its mean cosine, standard error and the batches below the threshold."""
    pair = TopPair(
        a=names[i],
        b=names[j],
        i=i,
        j=j,
        cosine=_finite(cos[i, j]),
        angle_deg=_finite(angles[i, j]),
        conflict=bool(conflict[i, j]),
    )
    if stats is not None:
        defined, below = stats.defined[i][j], stats.below_threshold[i][j]
        pair.batch_cos_mean = stats.cosine_mean[i][j]
        pair.batch_cos_stderr = stats.cosine_stderr[i][j]
        pair.batch_conflict = stats.conflict[i][j]
        pair.batches_defined = defined
        pair.batches_below = below
        pair.batch_conflict_fraction = below / defined if defined else None
    return pair


def _finite(x: torch.Tensor) -> float | None:
    return _finite_float(float(x))


def _finite_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _loss_groups(
    groups: Sequence[LossGroup],
    names: Sequence[str],
    g: torch.Tensor,
    values: Sequence[float],
    tau: float,
) -> LossGroupStats:
    """Return the loss groups' statistics from the losses' Gramian G: the Gramian of the summed
    gradients G_AB = sum_{i in A, j in B} G_ij, its norms, cosines, angles and conflicts."""
    gg = gm.summed(g, [group.indices for group in groups])
    cos = gm.cosine(gg)
    norms = gm.norms(gg)
    labels = [group.name for group in groups]
    return LossGroupStats(
        names=labels,
        members={group.name: list(group.losses) for group in groups},
        ungrouped=losses_in_no_group(names, groups),
        loss_values={
            group.name: _finite_float(sum(values[i] for i in group.indices)) for group in groups
        },
        norms={name: _finite(norms[k]) for k, name in enumerate(labels)},
        dot=to_list(gg),
        cosine=to_list(cos),
        angle_deg=to_list(gm.angle_deg(cos)),
        conflict=gm.offdiagonal_below(cos, tau).tolist(),
    )


def structured_meta(result: EngineResult) -> dict[str, object]:
    """Return what the structured engine did, for a document's meta: per layer class, how many
    parameter tensors had their Gramian taken from layer rows or from their gradients, and why
    each weight it could not cover was not (empty when it did not run)."""
    if not result.paths:
        return {}
    return {"structured": {"paths": result.paths, "not_covered": result.uncovered}}


def _batch_stats(batch_gramians: torch.Tensor, tau: float) -> BatchStats:
    """Return the per-batch cosine statistics, with the standard error s / sqrt(n) of the mean
    over the n batches where each cosine is defined (s the sample standard deviation, n - 1 in
    its denominator; undefined for n < 2), and the pairs whose mean stays below -tau by more than
    it: mean + stderr < -tau. `cosine_std` stays the population standard deviation (the JSON
    contract's)."""
    mean, std, frac = gm.batch_cosine_stats(batch_gramians)
    defined, below = gm.batch_cosine_counts(batch_gramians, tau)
    n = defined.to(torch.float64)
    # s / sqrt(n) = std * sqrt(n / (n - 1)) / sqrt(n) = std / sqrt(n - 1)
    stderr = torch.where(defined > 1, std / torch.sqrt((n - 1).clamp(min=1.0)), torch.nan)
    return BatchStats(
        cosine_mean=to_list(mean),
        cosine_std=to_list(std),
        conflict_fraction=to_list(frac),
        cosine_stderr=to_list(stderr),
        defined=defined.tolist(),
        below_threshold=below.tolist(),
        conflict=gm.offdiagonal_below(mean + stderr, tau).tolist(),
    )


def _pareto_report(sol: ParetoSolution, names: Sequence[str]) -> ParetoReport:
    return ParetoReport(
        method="mgda",
        normalize=sol.normalize,
        weights=dict(zip(names, sol.weights.tolist(), strict=True)),
        loss_weights=dict(zip(names, sol.loss_weights.tolist(), strict=True)),
        min_norm=sol.min_norm,
        directional_derivatives=dict(zip(names, sol.directional_derivatives.tolist(), strict=True)),
        stationary=sol.stationary,
        unique=sol.unique,
        kkt_residual=sol.kkt_residual,
        support=[names[i] for i in sol.support],
        relative_min_norm=sol.relative_min_norm,
        tol=sol.tol,
    )


def check_finite(result: EngineResult) -> None:
    """Raise `NonFiniteGradientError`, naming losses and parameters, if a gradient has NaN/inf."""
    bad = result.nonfinite.sum(dim=0)
    if int(bad.sum()) == 0:
        return
    parts = []
    for i, name in enumerate(result.loss_names):
        if int(bad[i]) == 0:
            continue
        params = [p for b, p in enumerate(result.param_names) if int(result.nonfinite[b, i]) > 0]
        shown = ", ".join(inert(p) for p in params[:4])
        shown += f" and {len(params) - 4} more" if len(params) > 4 else ""
        parts.append(f"loss {name!r}: {int(bad[i])} non-finite entries in {shown}")
    raise NonFiniteGradientError(
        "non-finite gradients (NaN or inf), so no statistic is meaningful; " + "; ".join(parts),
        hint="look for log(0), division by zero or overflow in those losses; "
        "torch.autograd.set_detect_anomaly(True) finds the operation",
    )


def _warnings(report: Report, result: EngineResult) -> list[str]:
    out = []
    if result.low_memory_fallback:
        out.append(result.low_memory_fallback)
    if len(result.loss_names) == 1:
        out.append("only one loss: pairwise statistics need two or more")
    count = report.parameters["count"]
    for name in report.losses:
        if len(report.unused[name]) == count:
            out.append(f"loss {name!r} reaches none of the selected parameters: its gradient is 0")
        elif report.gradients[name].norm == 0.0:
            out.append(f"loss {name!r} has a zero gradient on the selected parameters")
    if result.strategy == "backward" and result.fell_back(Fallback.REENTRANT_CHECKPOINT):
        out.append(
            "a reentrant activation checkpoint hides its inside from the autograd graph: "
            "parameters in it count as used by every loss that reaches the checkpoint "
            "(use_reentrant=False makes 'unused' exact)"
        )
    return out


def verdict(report: Report) -> list[str]:
    """Return short sentences: the conflicts (material ones only, by the report's flags), the
    norm imbalance, the Pareto outcome. Names are shown `inert`."""
    names = [inert(name) for name in report.losses]
    m = len(names)
    tau = report.conflict_threshold
    lines: list[str] = []
    pairs = [
        (c, i, j)
        for i in range(m)
        for j in range(i + 1, m)
        if (c := report.cosine[i][j]) is not None
    ]
    conflicts = sorted((c, i, j) for c, i, j in pairs if report.conflict[i][j])
    for c, i, j in conflicts[:3]:
        angle = report.angle_deg[i][j] or 0.0
        lines.append(f"{names[i]} and {names[j]} conflict (cos {c:+.2f}, {angle:.0f}°)")
    if len(conflicts) > 3:
        more = len(conflicts) - 3
        lines.append(f"{more} more {'pair conflicts' if more == 1 else 'pairs conflict'}")
    if pairs and not conflicts:
        c, i, j = min(pairs)
        lines.append(
            f"no pair of losses conflicts on the mean gradient (lowest cos {c:+.2f}: {names[i]} "
            f"and {names[j]}; a conflict is cos < {conflict_line(tau)})"
        )
    lines += _batch_verdict(report, names)
    lines += _loss_groups_verdict(report)
    norms = {inert(k): v.norm for k, v in report.gradients.items() if v.norm}
    if len(norms) >= 2:
        big = max(norms, key=lambda k: norms[k])
        small = min(norms, key=lambda k: norms[k])
        ratio = norms[big] / norms[small]
        if ratio >= 2:
            lines.append(f"{big}'s gradient is {ratio:.1f}x {small}'s")
    lines += _pareto_verdict(report)
    if not lines:
        lines.append("nothing to compare")
    return lines


def _loss_groups_verdict(report: Report) -> list[str]:
    """Return a sentence per pair of loss groups whose summed gradients conflict (the lowest
    VERDICT_LINES, then how many more)."""
    groups = report.loss_groups
    if groups is None:
        return []
    labels = [inert(name) for name in groups.names]
    q = len(labels)
    found = sorted(
        (c, x, y)
        for x in range(q)
        for y in range(x + 1, q)
        if groups.conflict[x][y] and (c := groups.cosine[x][y]) is not None
    )
    lines = [
        f"loss groups {labels[x]} and {labels[y]} conflict (cos {c:+.2f} of their summed gradients)"
        for c, x, y in found[:VERDICT_LINES]
    ]
    if len(found) > VERDICT_LINES:
        more = len(found) - VERDICT_LINES
        lines.append(f"{more} more {'pair' if more == 1 else 'pairs'} of loss groups conflict")
    return lines


def _batch_verdict(report: Report, names: Sequence[str]) -> list[str]:
    """Return a sentence per pair that conflicts over batches but not on the mean gradient, and
    per pair that is below -tau in some batches without conflicting on average: of each kind
    the VERDICT_LINES of lowest mean cosine at most (in pair order), then how many more."""
    stats = report.batch_stats
    if stats is None:
        return []
    tau = report.conflict_threshold
    over: list[tuple[float, str]] = []
    some: list[tuple[float, str]] = []
    m = len(names)
    for i in range(m):
        for j in range(i + 1, m):
            n, below = stats.defined[i][j], stats.below_threshold[i][j]
            mean, stderr = stats.cosine_mean[i][j], stats.cosine_stderr[i][j]
            if report.conflict[i][j] or mean is None or stderr is None:
                continue
            spread = f"per-batch cos {mean:+.2f} ± {stderr:.2f}, mean ± standard error"
            where = f"{n} batches where the cosine is defined"
            if stats.conflict[i][j]:
                over.append(
                    (
                        mean,
                        f"{names[i]} and {names[j]} conflict over batches ({spread} over the "
                        f"{where}; below {conflict_line(tau)} in {below} of them)",
                    )
                )
            elif below:
                some.append(
                    (
                        mean,
                        f"{names[i]} and {names[j]}: cos < {conflict_line(tau)} in {below} of "
                        f"the {where}, but no conflict on average ({spread})",
                    )
                )
    lines = []
    for found, more in (
        (over, "conflict over batches, not on the mean gradient"),
        (some, f"have cos < {conflict_line(tau)} in some batches, with no conflict on average"),
    ):
        # the lowest mean cosines, shown in pair order
        kept = sorted(sorted(range(len(found)), key=lambda k: found[k][0])[:VERDICT_LINES])
        lines += [found[k][1] for k in kept]
        if len(found) > VERDICT_LINES:
            lines.append(f"{len(found) - VERDICT_LINES} more pairs {more}")
    return lines


def _pareto_verdict(report: Report) -> list[str]:
    p = report.pareto
    if p is None:
        return []
    lines = []
    zero = [inert(k) for k, v in report.gradients.items() if v.norm == 0.0]
    if p.stationary and zero:
        lines.append(
            f"Pareto-stationary only trivially: {', '.join(zero)} "
            f"{'has' if len(zero) == 1 else 'have'} a zero gradient on the selected "
            "parameters; leave such losses out, or select parameters they reach"
        )
    elif p.stationary and (p.relative_min_norm or 0.0) <= ROUND_OFF:
        lines.append(
            "Pareto-stationary: a convex combination of the gradients is 0 (the min-norm |d| is "
            f"{p.relative_min_norm or 0.0:.2g} of the largest gradient norm, tol {p.tol:g}), so "
            "no direction decreases every loss to first order"
        )
    elif p.stationary:
        lines.append(
            f"Pareto-stationary within tol {p.tol:g}: the min-norm |d| is "
            f"{p.relative_min_norm:.2g} of the largest gradient norm, so no direction decreases "
            "every loss by more than that, to first order"
        )
    else:
        lines.append(
            "the min-norm combination decreases every loss to first order "
            f"(smallest rate {min(p.directional_derivatives.values()):.3g})"
        )
    if not p.unique:
        lines.append("the min-norm weights are not unique (duplicated or dependent gradients)")
    return lines
