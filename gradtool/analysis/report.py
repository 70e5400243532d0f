"""Turns the engine's Gramians into a `Report`: norms, pairwise matrices, layers, batch
statistics, unused parameters, the Pareto result and a one-line verdict. Works on Gramians only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gradtool.analysis.compare import compare_methods, methods_verdict
from gradtool.analysis.convert import to_list
from gradtool.analysis.layers import group_by_module
from gradtool.engine import EngineResult, Fallback
from gradtool.errors import NonFiniteGradientError, UsageError, opt
from gradtool.linalg import gramian as gm
from gradtool.linalg.pareto import STATIONARY_TOL, ParetoSolution, pareto_solution
from gradtool.results.report import (
    BatchStats,
    GradientStats,
    LayerStats,
    ParetoReport,
    Report,
)

DEFAULT_DEPTH = 3
WEAK_CONFLICT = 0.05  # |cos| below this reads as "nearly orthogonal" in the verdict


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
) -> Report:
    """Return the Report for `result`; raise `NonFiniteGradientError` on non-finite entries."""
    names = result.loss_names
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
    layers = []
    for group in group_by_module(result.param_names, depth):
        g_layer = result.gramians[list(group.indices)].sum(dim=0)
        n_layer = gm.norms(g_layer)
        cos_layer = gm.cosine(g_layer)
        layers.append(
            LayerStats(
                name=group.name,
                numel=sum(result.param_numels[b] for b in group.indices),
                norms={name: float(n_layer[i]) for i, name in enumerate(names)},
                cosine=to_list(cos_layer),
                dot=to_list(g_layer),
                parameters=[result.param_names[b] for b in group.indices],
                reached={
                    name: bool(reached[list(group.indices), i].any())
                    for i, name in enumerate(names)
                },
                lowest_pair=gm.lowest_pair(cos_layer),
            )
        )
    batch_stats = None
    if result.batch_gramians is not None:
        mean, std, frac = gm.batch_cosine_stats(result.batch_gramians)
        batch_stats = BatchStats(to_list(mean), to_list(std), to_list(frac))
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
        angle_deg=to_list(gm.angle_deg(cos)),
        magnitude_similarity=to_list(gm.magnitude_similarity(g)),
        layers=layers,
        depth=depth,
        batch_stats=batch_stats,
        pareto=pareto_report,
        methods=methods,
        meta={
            "strategy": result.strategy,
            "fallback_reason": result.fallback_reason,
            **(meta or {}),
        },
    )
    report.warnings = _warnings(report, result) + method_warnings
    report.verdict = verdict(report) + methods_verdict(methods or [], names)
    return report


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
        shown = ", ".join(params[:4]) + (f" and {len(params) - 4} more" if len(params) > 4 else "")
        parts.append(f"loss '{name}': {int(bad[i])} non-finite entries in {shown}")
    raise NonFiniteGradientError(
        "non-finite gradients (NaN or inf), so no statistic is meaningful; " + "; ".join(parts),
        hint="look for log(0), division by zero or overflow in those losses; "
        "torch.autograd.set_detect_anomaly(True) finds the operation",
    )


def _warnings(report: Report, result: EngineResult) -> list[str]:
    out = []
    if len(result.loss_names) == 1:
        out.append("only one loss: pairwise statistics need two or more")
    count = report.parameters["count"]
    for name in report.losses:
        if len(report.unused[name]) == count:
            out.append(f"loss '{name}' reaches none of the selected parameters: its gradient is 0")
        elif report.gradients[name].norm == 0.0:
            out.append(f"loss '{name}' has a zero gradient on the selected parameters")
    if result.strategy == "backward" and result.fell_back(Fallback.REENTRANT_CHECKPOINT):
        out.append(
            "a reentrant activation checkpoint hides its inside from the autograd graph: "
            "parameters in it count as used by every loss that reaches the checkpoint "
            "(use_reentrant=False makes 'unused' exact)"
        )
    return out


def verdict(report: Report) -> list[str]:
    """Return short sentences: the worst conflicts, the norm imbalance, the Pareto outcome."""
    names = report.losses
    m = len(names)
    lines: list[str] = []
    pairs = [
        (report.cosine[i][j], i, j)
        for i in range(m)
        for j in range(i + 1, m)
        if report.cosine[i][j] is not None
    ]
    conflicts = sorted((c, i, j) for c, i, j in pairs if c is not None and c < 0)
    for c, i, j in conflicts[:3]:
        angle = report.angle_deg[i][j] or 0.0
        how = "conflict" if c <= -WEAK_CONFLICT else "conflict slightly, nearly orthogonal"
        lines.append(f"{names[i]} and {names[j]} {how} (cos {c:.2f}, {angle:.0f}°)")
    if pairs and not conflicts:
        c, i, j = min(pairs)
        lines.append(
            "no pair of losses conflicts on the mean gradient "
            f"(lowest cos {c:.2f}: {names[i]} and {names[j]})"
        )
    stats = report.batch_stats
    if stats is not None:
        for i in range(m):
            for j in range(i + 1, m):
                frac = stats.conflict_fraction[i][j]
                if frac is not None and frac > 0 and (report.cosine[i][j] or 0.0) >= 0:
                    lines.append(
                        f"{names[i]} and {names[j]} conflict in {frac:.0%} of the "
                        f"{report.num_batches} batches (per-batch cos "
                        f"{stats.cosine_mean[i][j]:+.2f} ± {stats.cosine_std[i][j]:.2f})"
                    )
    norms = {k: v.norm for k, v in report.gradients.items() if v.norm}
    if len(norms) >= 2:
        big = max(norms, key=lambda k: norms[k])
        small = min(norms, key=lambda k: norms[k])
        ratio = norms[big] / norms[small]
        if ratio >= 2:
            lines.append(f"{big}'s gradient is {ratio:.1f}x {small}'s")
    p = report.pareto
    zero = [k for k, v in report.gradients.items() if v.norm == 0.0]
    if p is not None:
        if p.stationary and zero:
            lines.append(
                f"Pareto-stationary only trivially: {', '.join(zero)} "
                f"{'has' if len(zero) == 1 else 'have'} a zero gradient on the selected "
                "parameters; leave such losses out, or select parameters they reach"
            )
        elif p.stationary:
            lines.append(
                "Pareto-stationary: a convex combination of the gradients is ~0, so no direction "
                "decreases every loss to first order"
            )
        else:
            lines.append(
                "the min-norm combination decreases every loss to first order "
                f"(smallest rate {min(p.directional_derivatives.values()):.3g})"
            )
        if not p.unique:
            lines.append("the min-norm weights are not unique (duplicated or dependent gradients)")
    if not lines:
        lines.append("nothing to compare")
    return lines
