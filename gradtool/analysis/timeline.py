"""Turns the records of a run log into a `TimelineReport`: how the gradients of the losses relate
over training. Everything is recomputed from each record's Gramians G (whole model and per layer):

    |g_i| = sqrt(G_ii),   cos_ij = G_ij / sqrt(G_ii G_jj),   conflict: cos_ij < -tau,
    MGDA weights = argmin_{w in simplex} w^T G w (the recorded ones where the record has them).

tau is the conflict threshold (`conflict_threshold`, default 0.05, as for a snapshot; see
`gradtool.analysis.report`). Each record is judged on its own, and fractions count the records
where the cosine is defined.

Records written under DDP (`world` = R ranks, `local` = the mean rank-local Gramian L beside
the global batch's G) also give a gradient-noise estimate per loss (McCandlish et al. 2018,
appendix A.1, from the batch sizes b and R b), see `noise_timeline`:

    S = (R G_ii - L_ii) / (R - 1),   N = R (L_ii - G_ii) / (R - 1),   noise scale = N / S.

For many losses: `top_pairs` ranks the pairs by how often they conflict, then by their mean
cosine; loss groups (`loss_groups`, globs on the loss names) give each record's Gramian of the
summed gradients g_A = sum_{i in A} g_i, G_AB = sum_{i in A, j in B} G_ij; an exponential moving
average over the records (`ema` = alpha, s_t = alpha x_t + (1 - alpha) s_{t-1}) smooths the
cosines, norms and MGDA weights before the tables and figures are made of them (the raw series
stay in `series`).

The report is plain data, serialisable like `Report` (schema_version 1, NaN as null); the
renderer and the plots only format it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from gradtool.analysis.convert import to_list
from gradtool.analysis.loss_groups import (
    LossGroup,
    LossGroupsArg,
    check_loss_groups,
    group_losses,
    losses_in_no_group,
)
from gradtool.analysis.report import (
    DEFAULT_CONFLICT_THRESHOLD,
    DEFAULT_TOP,
    check_conflict_threshold,
    check_top,
)
from gradtool.errors import UsageError, opt
from gradtool.linalg import gramian as gm
from gradtool.linalg.pareto import pareto_solution
from gradtool.results.base import nan_for_none
from gradtool.results.report import conflict_line, inert
from gradtool.results.runlog import Record, RunLog
from gradtool.results.timeline import (
    LayerTimeline,
    LossGroupTimeline,
    LossTimeline,
    MgdaRow,
    NoiseRow,
    NoiseTimeline,
    PairTimeline,
    Series,
    SmoothedSeries,
    TimelineReport,
    TimelineSeries,
    WeightTimeline,
)

TREND_POINTS = 10  # points of the downsampled series shown as sparklines
MGDA_ROWS = 8  # recorded steps shown in the MGDA-weights-over-time table


def check_ema(alpha: float) -> float:
    """Return the EMA's alpha (the newest record's weight) as a float after checking
    0 < alpha < 1."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise UsageError(
            f"{opt('ema')} should be a number between 0 and 1 (the newest record's weight); "
            f"found {alpha!r}",
            hint="e.g. 0.1 averages over about 10 records (half-life 6.6 records); smaller "
            "smooths more",
            option="ema",
        )
    return value


def half_life(alpha: float) -> float:
    """Return the EMA's half-life in records, ln 2 / -ln(1 - alpha): a record's weight halves
    every that many records."""
    return math.log(2.0) / -math.log1p(-alpha)


def ema(values: Sequence[float | None], alpha: float) -> Series:
    """Return the exponential moving average of `values` over the records: s_0 = x_0,
    s_t = alpha x_t + (1 - alpha) s_{t-1}, i.e. s_t = (1 - alpha)^t x_0 +
    sum_{k=1..t} alpha (1 - alpha)^(t-k) x_k. An undefined (None or non-finite) x_t gives None
    and leaves the average unchanged; the first defined value starts it."""
    x = torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float64)
    return to_list(ema_tensor(x, check_ema(alpha)))


def ema_tensor(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Return `ema` along the first axis of `x` (records first), entrywise; NaN is undefined."""
    out = torch.full_like(x, math.nan, dtype=torch.float64)
    state = torch.full(x.shape[1:], math.nan, dtype=torch.float64)
    for t in range(x.shape[0]):
        xt = x[t].to(torch.float64)
        ok = torch.isfinite(xt)
        blended = torch.where(torch.isfinite(state), alpha * xt + (1 - alpha) * state, xt)
        state = torch.where(ok, blended, state)
        out[t] = torch.where(ok, state, math.nan)
    return out


def build_timeline(
    run: RunLog | Sequence[Record],
    *,
    source: str = "",
    conflict_threshold: float = DEFAULT_CONFLICT_THRESHOLD,
    top: int = DEFAULT_TOP,
    loss_groups: LossGroupsArg | None = None,
    ema: float | None = None,
) -> TimelineReport:
    """Return the TimelineReport of a run log (or of records, oldest first); a record's cosine
    below -`conflict_threshold` is a conflict.

    `top`: how many pairs `top_pairs` keeps (most often in conflict first). `loss_groups`
    (name -> globs on the loss names) adds the groups' summed gradients over the run. `ema`
    (alpha, 0 < alpha < 1) smooths the cosines, norms and MGDA weights over the records before
    the tables are made of them: s_t = alpha x_t + (1 - alpha) s_{t-1}.
    """
    tau = check_conflict_threshold(conflict_threshold)
    count = check_top(top)
    alpha = None if ema is None else check_ema(ema)
    checked_groups = check_loss_groups(loss_groups)
    if isinstance(run, RunLog):
        records, warnings = run.records, list(run.warnings)
        source = source or str(run.path)
        header = run.header or {}
        meta: dict[str, Any] = {
            "sessions": run.sessions,
            **{
                k: header[k]
                for k in ("gradtool_version", "torch_version", "every", "depth", "created")
                if k in header
            },
            "metadata": header.get("metadata", {}),
        }
    else:
        records, warnings, meta = sorted(run, key=lambda r: r.step), [], {}
    if not records:
        raise ValueError("a timeline needs at least one record")
    names = list(records[0].losses)
    chosen = group_losses(names, checked_groups) if checked_groups else None
    m = len(names)
    steps = [r.step for r in records]
    grams = [gm.as_gramian(r.gramian()) for r in records]
    norms = torch.stack([gm.norms(g) for g in grams])  # (R, m)
    cos = torch.stack([gm.cosine(g) for g in grams])  # (R, m, m)
    pairs_idx = [(i, j) for i in range(m) for j in range(i + 1, m)]
    weights, min_norms, stationary = _mgda(records, grams, names)
    # what the tables are made of: the raw series, or their EMA
    shown_norms, shown_cos, shown_weights = norms, cos, weights
    if alpha is not None:
        shown_norms, shown_cos = ema_tensor(norms, alpha), ema_tensor(cos, alpha)
        shown_weights = ema_tensor(weights, alpha)

    pairs = [_pair(names[i], names[j], shown_cos[:, i, j], steps, tau) for i, j in pairs_idx]
    loss_trends = [
        _loss(name, [r.loss_values.get(name) for r in records], shown_norms[:, i])
        for i, name in enumerate(names)
    ]
    mgda = [_weight(name, shown_weights[:, i]) for i, name in enumerate(names)]
    rows = [
        MgdaRow(
            step=steps[t],
            weights={name: _f(shown_weights[t, i]) for i, name in enumerate(names)},
            min_norm=_f(min_norms[t]),
            stationary=stationary[t],
        )
        for t in _sample(len(records), MGDA_ROWS)
    ]
    layer_names, lowest, layers = _layers(records, names, pairs_idx, steps, tau)
    series = TimelineSeries(
        steps=steps,
        loss_values={name: [_f(r.loss_values.get(name)) for r in records] for name in names},
        norms={name: to_list(norms[:, i]) for i, name in enumerate(names)},
        cosine={p.key: to_list(cos[:, i, j]) for p, (i, j) in zip(pairs, pairs_idx, strict=True)},
        mgda_weights={name: to_list(weights[:, i]) for i, name in enumerate(names)},
        mgda_min_norm=to_list(min_norms),
        layer_names=layer_names,
        layer_lowest_cos=lowest,
    )
    smoothed = None
    if alpha is not None:
        smoothed = SmoothedSeries(
            alpha=alpha,
            half_life=half_life(alpha),
            norms={name: to_list(shown_norms[:, i]) for i, name in enumerate(names)},
            cosine={
                p.key: to_list(shown_cos[:, i, j])
                for p, (i, j) in zip(pairs, pairs_idx, strict=True)
            },
            mgda_weights={name: to_list(shown_weights[:, i]) for i, name in enumerate(names)},
        )
    group_timeline = None
    if chosen is not None:
        group_timeline = _loss_groups(chosen, names, records, grams, steps, tau, alpha)
    noise = noise_timeline(records, names)
    worlds = sorted({r.world for r in records if _has_noise(r) and r.world is not None})
    if len(worlds) > 1:
        warnings.append(
            f"records were written by {' and '.join(map(str, worlds))} ranks: each record's "
            "gradient-noise estimate uses its own number of ranks (the noise is per rank's "
            "batch, comparable across records only if each rank's batch size stayed the same)"
        )
    if checked_groups:
        meta["loss_groups"] = {name: list(globs) for name, globs in checked_groups.items()}
    report = TimelineReport(
        source=source,
        losses=names,
        num_records=len(records),
        first_step=steps[0],
        last_step=steps[-1],
        conflict_threshold=tau,
        pairs=pairs,
        loss_trends=loss_trends,
        mgda=mgda,
        mgda_rows=rows,
        mgda_stationary_fraction=sum(stationary) / len(stationary),
        mgda_first_stationary_step=next(
            (s for s, flag in zip(steps, stationary, strict=True) if flag), None
        ),
        layers=layers,
        series=series,
        warnings=warnings,
        meta=meta,
        noise=noise,
        top_pairs=most_conflicting_pairs(pairs, count),
        loss_groups=group_timeline,
        ema=alpha,
        series_ema=smoothed,
    )
    report.verdict = timeline_verdict(report)
    return report


def most_conflicting_pairs(pairs: Sequence[PairTimeline], k: int) -> list[PairTimeline]:
    """Return the `k` pairs most often in conflict over the run: by the share of records with
    cos < -tau (of those where it is defined), then by the lowest mean cosine (pairs never
    defined last)."""

    def key(p: PairTimeline) -> tuple[float, bool, float]:
        return (-(p.conflict_fraction or 0.0), p.cos_mean is None, p.cos_mean or 0.0)

    return sorted(pairs, key=key)[:k]


def _loss_groups(
    groups: Sequence[LossGroup],
    names: list[str],
    records: Sequence[Record],
    grams: Sequence[torch.Tensor],
    steps: list[int],
    tau: float,
    alpha: float | None,
) -> LossGroupTimeline:
    """Return the loss groups over the records: per record the Gramian of the summed gradients
    G_AB = sum_{i in A, j in B} G_ij, its norms and cosines (smoothed by the EMA `alpha` for the
    tables when given), and each group's value, the sum of its members' values."""
    members = [group.indices for group in groups]
    labels = [group.name for group in groups]
    q = len(groups)
    summed = [gm.summed(g, members) for g in grams]
    norms = torch.stack([gm.norms(g) for g in summed])  # (R, q)
    cos = torch.stack([gm.cosine(g) for g in summed])  # (R, q, q)
    shown_norms, shown_cos = norms, cos
    if alpha is not None:
        shown_norms, shown_cos = ema_tensor(norms, alpha), ema_tensor(cos, alpha)
    values = {
        group.name: [_summed_value(r, [names[i] for i in group.indices]) for r in records]
        for group in groups
    }
    pairs_idx = [(x, y) for x in range(q) for y in range(x + 1, q)]
    pairs = [_pair(labels[x], labels[y], shown_cos[:, x, y], steps, tau) for x, y in pairs_idx]
    smoothed = alpha is not None
    return LossGroupTimeline(
        names=labels,
        members={group.name: list(group.losses) for group in groups},
        ungrouped=losses_in_no_group(names, groups),
        pairs=pairs,
        trends=[_loss(name, values[name], shown_norms[:, x]) for x, name in enumerate(labels)],
        loss_values=values,
        norms={name: to_list(norms[:, x]) for x, name in enumerate(labels)},
        cosine={p.key: to_list(cos[:, x, y]) for p, (x, y) in zip(pairs, pairs_idx, strict=True)},
        norms_ema={name: to_list(shown_norms[:, x]) for x, name in enumerate(labels)}
        if smoothed
        else None,
        cosine_ema={
            p.key: to_list(shown_cos[:, x, y]) for p, (x, y) in zip(pairs, pairs_idx, strict=True)
        }
        if smoothed
        else None,
    )


def _summed_value(record: Record, members: Sequence[str]) -> float | None:
    """Return the sum of the members' loss values at a record (None if one is undefined)."""
    values = [record.loss_values.get(name) for name in members]
    if any(v is None for v in values):
        return None
    return _f(sum(float(v) for v in values if v is not None))


def _f(x: float | torch.Tensor | None) -> float | None:
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _below(x: float | None, tau: float) -> bool:
    """Return whether a cosine is a conflict: defined and below -tau."""
    return x is not None and x < -tau


def _pair(a: str, b: str, cos: torch.Tensor, steps: list[int], tau: float) -> PairTimeline:
    defined = [(s, float(c)) for s, c in zip(steps, cos.tolist(), strict=True) if math.isfinite(c)]
    conflict = [s for s, c in defined if c < -tau]
    mean = sum(c for _, c in defined) / len(defined) if defined else None
    low = min(defined, key=lambda sc: sc[1]) if defined else None
    high = max(c for _, c in defined) if defined else None
    start, end = _f(cos[0]), _f(cos[-1])
    trend = downsample(cos.tolist(), TREND_POINTS)
    return PairTimeline(
        a=a,
        b=b,
        cos_start=start,
        cos_min=low[1] if low else None,
        cos_max=high,
        cos_end=end,
        step_min=low[0] if low else None,
        defined_records=len(defined),
        conflict_records=len(conflict),
        conflict_fraction=len(conflict) / len(defined) if defined else None,
        first_conflict_step=conflict[0] if conflict else None,
        last_conflict_step=conflict[-1] if conflict else None,
        trend=trend,
        start_conflict=_below(start, tau),
        min_conflict=_below(low[1] if low else None, tau),
        max_conflict=_below(high, tau),
        end_conflict=_below(end, tau),
        trend_conflict=[_below(v, tau) for v in trend],
        cos_mean=mean,
        mean_conflict=_below(mean, tau),
    )


def _loss(name: str, values: list[float | None], norm: torch.Tensor) -> LossTimeline:
    defined = [float(x) for x in norm.tolist() if math.isfinite(x)]
    start, end = _f(norm[0]), _f(norm[-1])
    return LossTimeline(
        name=name,
        value_start=_f(values[0]),
        value_end=_f(values[-1]),
        norm_start=start,
        norm_min=min(defined) if defined else None,
        norm_max=max(defined) if defined else None,
        norm_end=end,
        norm_ratio=end / start if start and end is not None else None,
        trend=downsample(norm.tolist(), TREND_POINTS),
    )


def _mgda(
    records: Sequence[Record], grams: Sequence[torch.Tensor], names: list[str]
) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """Return (weights (R, m), min-norms (R,), stationary flags): recorded, else recomputed."""
    weights, min_norms, stationary = [], [], []
    for record, g in zip(records, grams, strict=True):
        if record.pareto is not None:
            p = record.pareto
            weights.append([p.weights.get(n, math.nan) for n in names])
            min_norms.append(p.min_norm)
            stationary.append(p.stationary)
        elif torch.isfinite(g).all():
            sol = pareto_solution(g, [1.0] * len(names), names)
            weights.append(sol.weights.tolist())
            min_norms.append(sol.min_norm)
            stationary.append(sol.stationary)
        else:
            weights.append([math.nan] * len(names))
            min_norms.append(math.nan)
            stationary.append(False)
    return (
        torch.tensor(weights, dtype=torch.float64),
        torch.tensor(min_norms, dtype=torch.float64),
        stationary,
    )


def _weight(name: str, w: torch.Tensor) -> WeightTimeline:
    defined = [x for x in w.tolist() if math.isfinite(x)]
    return WeightTimeline(
        name=name,
        start=_f(w[0]),
        mean=sum(defined) / len(defined) if defined else None,
        end=_f(w[-1]),
        min=min(defined) if defined else None,
        max=max(defined) if defined else None,
    )


def _layers(
    records: Sequence[Record],
    names: list[str],
    pairs_idx: list[tuple[int, int]],
    steps: list[int],
    tau: float,
) -> tuple[list[str], list[Series], list[LayerTimeline]]:
    """Return the layer names (first-seen order), the layers x steps lowest pairwise cosine,
    and per layer its conflict statistics (a record conflicts there when its lowest pairwise
    cosine is below -tau; the worst pair is the one with the lowest mean cosine)."""
    order: dict[str, int] = {}
    for record in records:
        for layer in record.layers:
            order.setdefault(layer.name, layer.numel)
    lowest: list[Series] = [[None] * len(records) for _ in order]
    row_of = {name: k for k, name in enumerate(order)}
    pair_conflicts = [[0] * len(pairs_idx) for _ in order]
    pair_defined = [[0] * len(pairs_idx) for _ in order]
    pair_sums = [[0.0] * len(pairs_idx) for _ in order]
    for t, record in enumerate(records):
        for layer in record.layers:
            k = row_of[layer.name]
            cos = gm.cosine(gm.as_gramian(layer.gramian()))
            defined = []
            for p, (i, j) in enumerate(pairs_idx):
                c = float(cos[i, j])
                if math.isfinite(c):
                    defined.append(c)
                    pair_defined[k][p] += 1
                    pair_conflicts[k][p] += c < -tau
                    pair_sums[k][p] += c
            lowest[k][t] = min(defined) if defined else None
    layers = []
    for k, (name, numel) in enumerate(order.items()):
        values = [(s, c) for s, c in zip(steps, lowest[k], strict=True) if c is not None]
        conflicts = [s for s, c in values if c < -tau]
        mean_lowest = sum(c for _, c in values) / len(values) if values else None
        means = [
            (pair_sums[k][p] / pair_defined[k][p], p)
            for p in range(len(pairs_idx))
            if pair_defined[k][p]
        ]
        worst = min(means, default=None)
        p = worst[1] if worst else 0
        frac = pair_conflicts[k][p] / pair_defined[k][p] if worst else 0.0
        shown = worst is not None and frac > 0  # the worst pair is named only if it conflicts
        i, j = pairs_idx[p] if shown else (0, 0)
        layers.append(
            LayerTimeline(
                name=name,
                numel=numel,
                records=len(values),
                conflict_records=len(conflicts),
                conflict_fraction=len(conflicts) / len(values) if values else None,
                mean_lowest_cos=mean_lowest,
                mean_lowest_conflict=_below(mean_lowest, tau),
                first_conflict_step=conflicts[0] if conflicts else None,
                worst_pair=f"{names[i]}~{names[j]}" if shown else None,
                worst_pair_indices=(i, j) if shown else None,
                worst_pair_mean_cos=worst[0] if worst and shown else None,
                worst_pair_conflict=shown and _below(worst[0] if worst else None, tau),
                worst_pair_fraction=frac if shown else None,
            )
        )
    return list(order), lowest, layers


def _has_noise(record: Record) -> bool:
    """Return whether a record can give a noise estimate: a rank-local Gramian, 2+ ranks."""
    return record.local is not None and record.world is not None and record.world >= 2


def noise_timeline(records: Sequence[Record], names: list[str]) -> NoiseTimeline | None:
    """Return the per-loss gradient-noise estimates of the DDP records (None if there are none).

    For a record of R ranks, G = `dot` (the global batch, R b samples) and L = `local` (one
    rank's b samples, averaged over ranks), and E G_ii = |g|^2 + tr(Sigma)/(R b), E L_ii =
    |g|^2 + tr(Sigma)/b, so S = (R G_ii - L_ii)/(R - 1) estimates |g|^2 without bias and
    N = R (L_ii - G_ii)/(R - 1) estimates tr(Sigma)/b (McCandlish et al. 2018, appendix A.1).
    Over the run: the mean of the per-record S and of N (each estimate is noisy, its mean less
    so), then the noise scale N/S = B_simple/b and share N/(N + S) of the means, None where S <= 0.
    """
    chosen = [
        (r, r.world, r.local)
        for r in records
        if r.local is not None and r.world is not None and r.world >= 2
    ]
    if not chosen:
        return None
    signal, noise = [], []
    for record, world, local in chosen:
        g = torch.tensor(record.gramian(), dtype=torch.float64).diagonal()
        loc = torch.tensor(nan_for_none(local), dtype=torch.float64).diagonal()
        signal.append((world * g - loc) / (world - 1))
        noise.append(world * (loc - g) / (world - 1))
    s, n = torch.stack(signal), torch.stack(noise)  # (K, m)
    defined = torch.isfinite(s) & torch.isfinite(n)
    rows = []
    for i, name in enumerate(names):
        ok = defined[:, i]
        count = int(ok.sum())
        mean_s = _f(s[ok, i].mean()) if count else None
        mean_n = _f(n[ok, i].mean()) if count else None
        end_s, end_n = _f(s[-1, i]), _f(n[-1, i])
        rows.append(
            NoiseRow(
                name=name,
                records=count,
                signal=mean_s,
                noise=mean_n,
                noise_share=_ratio(mean_n, mean_s, share=True),
                noise_scale=_ratio(mean_n, mean_s),
                signal_end=end_s,
                noise_end=end_n,
                noise_scale_end=_ratio(end_n, end_s),
            )
        )
    last, world, _ = chosen[-1]
    return NoiseTimeline(
        world=world,
        records=len(chosen),
        last_step=last.step,
        rows=rows,
    )


def _ratio(noise: float | None, signal: float | None, *, share: bool = False) -> float | None:
    """Return noise / signal (noise / (noise + signal) if `share`); None unless signal > 0."""
    if noise is None or signal is None or signal <= 0:
        return None
    return _f(noise / (noise + signal) if share else noise / signal)


def downsample(values: Sequence[float | None], points: int) -> Series:
    """Return `values` cut into at most `points` contiguous bins, each replaced by the mean of its
    finite entries (None for a bin without any)."""
    n = len(values)
    if n <= points:
        return [_f(v) for v in values]
    out: Series = []
    for b in range(points):
        chunk = [v for v in values[b * n // points : (b + 1) * n // points] if v is not None]
        finite = [float(v) for v in chunk if math.isfinite(v)]
        out.append(sum(finite) / len(finite) if finite else None)
    return out


def _sample(n: int, rows: int) -> list[int]:
    """Return up to `rows` evenly spaced indices of range(n), always with the first and last."""
    if n <= rows:
        return list(range(n))
    return sorted({round(k * (n - 1) / (rows - 1)) for k in range(rows)})


def timeline_verdict(report: TimelineReport) -> list[str]:
    """Return short sentences: which pairs conflict and when, where, norm trends, stationarity.

    A conflict is a record's cosine below -`conflict_threshold`; each share names its
    denominator (the records where the cosine is defined). Names are shown `inert`.
    """
    lines: list[str] = []
    tau = report.conflict_threshold
    lines += _pairs_verdict(report.pairs, report.ema)
    if report.loss_groups is not None:
        lines += _pairs_verdict(report.loss_groups.pairs, report.ema, "loss groups ")
    if report.pairs and not any(p.conflict_records for p in report.pairs):
        lows = [p for p in report.pairs if p.cos_min is not None]
        if lows:
            low = min(lows, key=lambda p: p.cos_min or 0.0)
            lines.append(
                f"no pair of losses conflicts at any of the {report.num_records} records "
                f"(lowest cos {low.cos_min:+.2f}: {inert(low.a)} and {inert(low.b)}; a conflict "
                f"is cos < {conflict_line(tau)})"
            )
    hot = [x for x in report.layers if x.conflict_records]
    if hot:
        top = max(hot, key=lambda x: (x.conflict_fraction or 0.0, -(x.mean_lowest_cos or 0.0)))
        text = (
            f"conflict concentrates in {inert(top.name)}: some pair has cos < "
            f"{conflict_line(tau)} there in {top.conflict_fraction or 0.0:.0%} of the "
            f"{top.records} records where it is defined"
        )
        if top.worst_pair_indices is not None and top.worst_pair_mean_cos is not None:
            i, j = top.worst_pair_indices
            text += (
                f" (worst pair {inert(report.losses[i])} and {inert(report.losses[j])}, mean cos "
                f"{top.worst_pair_mean_cos:+.2f})"
            )
        lines.append(text)
    moved = [
        t for t in report.loss_trends if t.norm_ratio and (t.norm_ratio >= 2 or t.norm_ratio <= 0.5)
    ]
    for t in sorted(moved, key=lambda t: -abs(math.log(t.norm_ratio or 1.0)))[:2]:
        way = "fell" if (t.norm_ratio or 1.0) < 1 else "grew"
        factor = 1 / t.norm_ratio if (t.norm_ratio or 1.0) < 1 else t.norm_ratio
        lines.append(
            f"{inert(t.name)}'s gradient norm {way} {factor:.1f}x "
            f"({t.norm_start:.3g} -> {t.norm_end:.3g})"
        )
    frac = report.mgda_stationary_fraction
    if frac:
        lines.append(
            f"Pareto-stationary (MGDA min-norm ~0) at {frac:.0%} of records, "
            f"first at step {report.mgda_first_stationary_step}"
        )
    lines += noise_verdict(report.noise)
    return lines or ["nothing to compare"]


def _pairs_verdict(pairs: Sequence[PairTimeline], alpha: float | None, what: str = "") -> list[str]:
    """Return a sentence for each of the 3 pairs with the lowest cosine among those that
    conflict in some record (`what` names them, e.g. 'loss groups '), then how many more."""
    conflicting = sorted((p for p in pairs if p.conflict_records), key=lambda p: p.cos_min or 0.0)
    smoothed = "" if alpha is None else f" (EMA {alpha:g} of the cosine)"
    lines = []
    for p in conflicting[:3]:
        text = (
            f"{what}{inert(p.a)} and {inert(p.b)} conflict in {p.conflict_fraction or 0.0:.0%} "
            f"of the {p.defined_records} records where the cosine is defined{smoothed}, from "
            f"step {p.first_conflict_step}; lowest cos {p.cos_min:+.2f} at step {p.step_min}"
        )
        if p.cos_end is not None and not p.end_conflict and p.last_conflict_step is not None:
            text += f"; faded after step {p.last_conflict_step} (cos {p.cos_end:+.2f} at the end)"
        lines.append(text)
    if len(conflicting) > 3:
        more = len(conflicting) - 3
        kind = "pair" if more == 1 else "pairs"
        kind = f"{kind} of {what.strip()}" if what else kind
        kind += " conflicts" if more == 1 else " conflict"
        lines.append(f"{more} more {kind} in some records")
    return lines


def noise_verdict(noise: NoiseTimeline | None) -> list[str]:
    """Return the gradient-noise sentences of a DDP run: each loss's noise scale N/S (in units of
    one rank's batch), and a warning for the losses whose signal estimate S is not positive."""
    if noise is None:
        return []
    lines = []
    shown = [r for r in noise.rows if r.noise_scale is not None]
    if shown:
        scales = " / ".join(f"{r.noise_scale:.3g}x" for r in shown)
        names = " / ".join(inert(r.name) for r in shown)
        what = "the noise scale is" if len(shown) == 1 else "the noise scales are"
        lines.append(
            f"gradient noise (DDP, {noise.world} ranks): {what} {scales} one rank's batch for "
            f"{names} (above {noise.world}, the global batch is below the noise scale)"
        )
    unresolved = [r for r in noise.rows if r.records and r.noise_scale is None]
    if unresolved:
        names = ", ".join(inert(r.name) for r in unresolved)
        lines.append(
            f"the gradient of {names} is mostly noise at this batch size: its signal estimate "
            "(R |g_global|^2 - |g_rank|^2)/(R - 1) is not positive, so the noise scale is "
            "undefined; the batch (even the global one) is below the noise scale"
        )
    return lines
