"""Material conflicts: the threshold on cosines, the standard-error rule over batches, the stated
denominators, the near-convergence ratio of the Pareto section, and names shown inert in what the
analysis writes. Expected values are computed here from explicit vectors, in plain Python."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from _runlog_samples import make_record

from gradtool.analysis import ParetoOptions, build_report, build_timeline
from gradtool.analysis.report import DEFAULT_CONFLICT_THRESHOLD, check_conflict_threshold
from gradtool.engine import EngineResult
from gradtool.errors import UsageError
from gradtool.linalg.pareto import check_tol

Vectors = dict[str, list[float]]


def gram(vectors: list[list[float]]) -> list[list[float]]:
    return [[sum(a * b for a, b in zip(u, v, strict=True)) for v in vectors] for u in vectors]


def engine_result(vectors: Vectors, batches: list[Vectors] | None = None) -> EngineResult:
    """Return an EngineResult of one parameter block holding the given gradients (and, with
    `batches`, each batch's gradients; the whole-model ones are their mean)."""
    names = list(vectors)
    m = len(names)
    if batches is not None:
        vectors = {
            n: [statistics.fmean(b[n][k] for b in batches) for k in range(len(batches[0][n]))]
            for n in names
        }
    rows = [vectors[n] for n in names]
    return EngineResult(
        loss_names=names,
        loss_values=[1.0] * m,
        param_names=["layer.weight"],
        param_numels=[len(rows[0])],
        gramians=torch.tensor([gram(rows)], dtype=torch.float64),
        max_abs=[max(abs(x) for x in row) for row in rows],
        nonfinite=torch.zeros(1, m, dtype=torch.int64),
        reached=torch.ones(1, m, dtype=torch.bool),
        batch_gramians=None
        if batches is None
        else torch.tensor([gram([b[n] for n in names]) for b in batches], dtype=torch.float64),
        num_batches=1 if batches is None else len(batches),
        strategy="loop",
    )


def at_cosines(cosines: list[float]) -> Vectors:
    """Return unit gradients a, b1, b2, ... with cos(a, b_k) = cosines[k] (a = e_0, b_k in the
    plane of e_0 and e_{k+1}, so cos(b_j, b_k) = cosines[j] * cosines[k])."""
    dim = len(cosines) + 1
    out: Vectors = {"a": [1.0] + [0.0] * (dim - 1)}
    for k, c in enumerate(cosines):
        v = [0.0] * dim
        v[0], v[k + 1] = c, math.sqrt(1 - c * c)
        out[f"b{k}"] = v
    return out


# --- the threshold on one cosine ------------------------------------------------------------------


def test_only_cosines_below_minus_the_threshold_are_conflicts() -> None:
    report = build_report(engine_result(at_cosines([-0.001, -0.04, -0.06, -0.5])), command="x")
    assert report.conflict_threshold == DEFAULT_CONFLICT_THRESHOLD == 0.05
    flagged = [report.losses[j] for j in range(1, 5) if report.conflict[0][j]]
    assert flagged == ["b2", "b3"]
    assert report.conflict[0][2] is False and report.conflict[2][0] is False
    assert not any(report.conflict[k][k] for k in range(5))  # never with itself
    assert report.cosine[0][1] == pytest.approx(-0.001, abs=1e-12)  # the raw number stays


def test_the_json_states_the_threshold_and_keeps_the_raw_cosines() -> None:
    doc = build_report(engine_result(at_cosines([-0.001, -0.5])), command="x").to_dict()
    assert doc["conflict_threshold"] == 0.05
    assert doc["conflict"] == [[False, False, True], [False, False, False], [True, False, False]]
    assert doc["cosine"][0][1] == pytest.approx(-0.001, abs=1e-12)
    assert doc["layers"][0]["conflict"] == doc["conflict"]


def test_the_verdict_names_material_conflicts_only() -> None:
    report = build_report(engine_result(at_cosines([-0.001, -0.04, -0.5])), command="x")
    angle = math.degrees(math.acos(-0.5))
    assert report.verdict[0] == f"a and b2 conflict (cos -0.50, {angle:.0f}°)"
    assert not any("b0" in line or "b1" in line for line in report.verdict)


def test_without_material_conflict_the_verdict_says_so_and_states_the_threshold() -> None:
    report = build_report(engine_result(at_cosines([-0.001, 0.3])), command="x")
    assert report.verdict[0] == (
        "no pair of losses conflicts on the mean gradient (lowest cos -0.00: a and b0; "
        "a conflict is cos < -0.05)"
    )


def test_a_threshold_of_zero_counts_every_negative_cosine() -> None:
    report = build_report(
        engine_result(at_cosines([-0.001, 0.3])), command="x", conflict_threshold=0.0
    )
    assert report.conflict[0][1] and not report.conflict[0][2]


def test_more_than_three_conflicts_are_counted() -> None:
    report = build_report(engine_result(at_cosines([-0.2, -0.3, -0.4, -0.5, -0.6])), command="x")
    assert report.verdict[3] == "2 more pairs conflict"


@pytest.mark.parametrize("bad", [-0.01, 1.5, math.nan, math.inf])
def test_a_threshold_outside_zero_to_one_is_a_usage_error(bad: float) -> None:
    with pytest.raises(UsageError) as info:
        check_conflict_threshold(bad)
    assert info.value.option == "conflict_threshold"
    assert "conflict_threshold" in str(info.value) and "--" not in str(info.value)
    with pytest.raises(UsageError):
        build_report(engine_result(at_cosines([0.1])), command="x", conflict_threshold=bad)


# --- over batches: below the threshold by more than the standard error ----------------------------


def batches_at(cosines: list[float | None], norms: list[float] | None = None) -> list[Vectors]:
    """Return per-batch gradients of a and b with cos(a, b) = cosines[k] and |b| = norms[k]
    (1 by default; None: b is zero)."""
    out = []
    for k, c in enumerate(cosines):
        r = 1.0 if norms is None else norms[k]
        b = [0.0, 0.0] if c is None else [r * c, r * math.sqrt(1 - c * c)]
        out.append({"a": [1.0, 0.0], "b": b})
    return out


def stats_of(cosines: list[float | None]) -> tuple[float, float, float, int]:
    defined = [c for c in cosines if c is not None]
    mean, std = statistics.fmean(defined), statistics.pstdev(defined)
    # the standard error of the mean: the sample standard deviation (n - 1) over sqrt(n)
    return mean, std, statistics.stdev(defined) / math.sqrt(len(defined)), len(defined)


def test_a_steady_batch_conflict_is_flagged() -> None:
    cosines: list[float | None] = [-0.30, -0.10, -0.20, -0.40]
    report = build_report(engine_result({"a": [], "b": []}, batches_at(cosines)), command="x")
    stats = report.batch_stats
    assert stats is not None
    mean, std, stderr, n = stats_of(cosines)
    assert stats.cosine_mean[0][1] == pytest.approx(mean, abs=1e-12)
    assert stats.cosine_std[0][1] == pytest.approx(std, abs=1e-12)
    assert stats.cosine_stderr[0][1] == pytest.approx(stderr, abs=1e-12)
    assert mean + stderr < -0.05
    assert stats.conflict[0][1] and stats.defined[0][1] == n == 4
    assert stats.below_threshold[0][1] == 4


def test_a_noisy_mean_below_the_threshold_within_its_standard_error_is_no_conflict() -> None:
    cosines: list[float | None] = [-0.06, -0.07, 0.5, -0.9, None]
    batches = batches_at(cosines, norms=[1.0, 1.0, 10.0, 1.0, 1.0])  # agree on the mean gradient
    report = build_report(engine_result({"a": [], "b": []}, batches), command="x")
    assert not report.conflict[0][1]
    stats = report.batch_stats
    assert stats is not None
    mean, _, stderr, n = stats_of(cosines)
    assert mean < -0.05 < mean + stderr  # below the threshold, but not beyond the error
    assert not stats.conflict[0][1]
    assert stats.defined[0][1] == n == 4  # the batch with a zero gradient has no cosine
    assert stats.below_threshold[0][1] == 3
    assert stats.conflict_fraction[0][1] == pytest.approx(3 / 5)  # the contract's raw share
    line = next(x for x in report.verdict if "batches" in x)
    assert line == (
        f"a and b: cos < -0.05 in 3 of the 4 batches where the cosine is defined, but no "
        f"conflict on average (per-batch cos {mean:+.2f} ± {stderr:.2f}, mean ± standard error)"
    )


def test_a_batch_conflict_hidden_on_the_mean_gradient_is_stated_with_its_denominator() -> None:
    # in every batch b points against a, but a turns from batch to batch: the mean gradients
    # agree (cos > 0), and only the batch rule finds the conflict
    batches = [
        {"a": [1.0, 0.0], "b": [-0.3, math.sqrt(1 - 0.09)]},
        {"a": [0.0, 1.0], "b": [math.sqrt(1 - 0.09), -0.3]},
        {"a": [1.0, 0.0], "b": [-0.2, math.sqrt(1 - 0.04)]},
    ]
    report = build_report(engine_result({"a": [], "b": []}, batches), command="x")
    stats = report.batch_stats
    assert stats is not None
    mean, _, stderr, _ = stats_of([-0.3, -0.3, -0.2])
    assert report.cosine[0][1] is not None and report.cosine[0][1] > 0
    assert stats.conflict[0][1]
    assert (
        f"a and b conflict over batches (per-batch cos {mean:+.2f} ± {stderr:.2f}, mean ± "
        "standard error over the 3 batches where the cosine is defined; below -0.05 in 3 of them)"
    ) in report.verdict


# --- near-convergence: |d| relative to the largest gradient norm ----------------------------------


G_REF_VECTORS = {"g0": [-4.0, 1.0, 1.0], "g1": [6.0, 1.0, 1.0]}  # DESIGN's reference: d = (0,1,1)


def test_relative_min_norm_and_tol_are_reported() -> None:
    report = build_report(engine_result(G_REF_VECTORS), command="pareto", pareto=ParetoOptions())
    p = report.pareto
    assert p is not None
    assert p.relative_min_norm == pytest.approx(math.sqrt(2) / math.sqrt(38), rel=1e-12)
    assert p.tol == 1e-6 and not p.stationary
    doc = report.to_dict()["pareto"]
    assert doc["relative_min_norm"] == pytest.approx(math.sqrt(2 / 38)) and doc["tol"] == 1e-6


def test_tol_decides_stationarity_against_the_relative_min_norm() -> None:
    ratio = math.sqrt(2 / 38)
    for tol, stationary in ((ratio * 0.99, False), (ratio * 1.01, True)):
        options = ParetoOptions(tol=tol)
        p = build_report(engine_result(G_REF_VECTORS), command="pareto", pareto=options).pareto
        assert p is not None and p.stationary is stationary and p.tol == tol


def test_relative_min_norm_of_normalised_gradients() -> None:
    # l2: unit gradients u0, u1; the min-norm point of their segment is (u0 + u1) / 2
    options = ParetoOptions(normalize="l2")
    p = build_report(engine_result(G_REF_VECTORS), command="pareto", pareto=options).pareto
    assert p is not None
    u = [[x / math.hypot(*v) for x in v] for v in G_REF_VECTORS.values()]
    expected = math.hypot(*[(a + b) / 2 for a, b in zip(*u, strict=True)])
    assert p.relative_min_norm == pytest.approx(expected, rel=1e-9)


def test_every_gradient_zero_has_no_relative_min_norm() -> None:
    p = build_report(
        engine_result({"a": [0.0, 0.0], "b": [0.0, 0.0]}), command="pareto", pareto=ParetoOptions()
    ).pareto
    assert p is not None and p.stationary and p.relative_min_norm is None


def test_the_stationary_verdict_states_the_ratio_and_tol() -> None:
    report = build_report(
        engine_result({"a": [1.0, 2.0], "b": [-2.0, -4.0]}),
        command="pareto",
        pareto=ParetoOptions(),
    )
    p = report.pareto
    assert p is not None and p.stationary and p.relative_min_norm is not None
    assert (
        "Pareto-stationary: a convex combination of the gradients is 0 (the min-norm |d| is "
        f"{p.relative_min_norm:.2g} of the largest gradient norm, tol 1e-06), so no direction "
        "decreases every loss to first order"
    ) in report.verdict


def test_stationary_within_a_loose_tol_says_by_how_much() -> None:
    report = build_report(
        engine_result({"a": [1.0, 0.0], "b": [-1.0, 0.1]}),
        command="pareto",
        pareto=ParetoOptions(tol=0.2),
    )
    p = report.pareto
    assert p is not None and p.stationary and 0 < (p.relative_min_norm or 0) <= 0.2
    line = next(x for x in report.verdict if x.startswith("Pareto-stationary"))
    assert line.startswith("Pareto-stationary within tol 0.2")
    assert "by more than that" in line


@pytest.mark.parametrize("bad", [-1e-9, math.nan, math.inf])
def test_a_negative_or_non_finite_tol_is_a_usage_error(bad: float) -> None:
    with pytest.raises(UsageError) as info:
        check_tol(bad)
    assert info.value.option == "tol"
    with pytest.raises(UsageError):
        build_report(engine_result(G_REF_VECTORS), command="pareto", pareto=ParetoOptions(tol=bad))


# --- the timeline: one rule per record, fractions of the records where the cosine is defined ------


def timeline_records(cosines: list[float | None]) -> list:
    records = []
    for k, c in enumerate(cosines):
        b = [0.0, 0.0] if c is None else [c, math.sqrt(1 - c * c)]
        vectors = {"a": [1.0, 0.0], "b": b}
        records.append(make_record(10 * k, vectors, layers={"shared": vectors}))
    return records


def test_timeline_counts_material_conflicts_of_the_defined_records() -> None:
    report = build_timeline(timeline_records([-0.001, -0.5, None, 0.2, -0.04]))
    assert report.conflict_threshold == 0.05
    (pair,) = report.pairs
    assert (pair.conflict_records, pair.defined_records) == (1, 4)
    assert pair.conflict_fraction == pytest.approx(1 / 4)
    assert pair.first_conflict_step == pair.last_conflict_step == 10
    assert not pair.start_conflict and pair.min_conflict and not pair.end_conflict
    assert pair.cos_start == pytest.approx(-0.001) and pair.cos_end == pytest.approx(-0.04)
    assert report.verdict[0] == (
        "a and b conflict in 25% of the 4 records where the cosine is defined, from step 10; "
        "lowest cos -0.50 at step 10; faded after step 10 (cos -0.04 at the end)"
    )
    (layer,) = report.layers
    assert (layer.conflict_records, layer.records) == (1, 4)
    assert layer.conflict_fraction == pytest.approx(1 / 4)
    mean_lowest = statistics.fmean([-0.001, -0.5, 0.2, -0.04])
    assert layer.mean_lowest_cos == pytest.approx(mean_lowest)
    assert layer.mean_lowest_conflict is (mean_lowest < -0.05)
    assert layer.worst_pair == "a~b" and layer.worst_pair_indices == (0, 1)
    assert layer.worst_pair_fraction == pytest.approx(1 / 4)


def test_timeline_with_a_threshold_of_zero_counts_every_negative_cosine() -> None:
    report = build_timeline(timeline_records([-0.001, -0.5, 0.2, -0.04]), conflict_threshold=0)
    (pair,) = report.pairs
    assert (pair.conflict_records, pair.defined_records) == (3, 4)
    assert pair.start_conflict and pair.end_conflict
    assert pair.trend_conflict == [True, True, False, True]


def test_timeline_of_tiny_negative_cosines_has_no_conflict() -> None:
    report = build_timeline(timeline_records([-0.001, -0.002, -0.01]))
    (pair,) = report.pairs
    assert pair.conflict_records == 0 and pair.first_conflict_step is None
    assert pair.trend_conflict == [False, False, False]
    (layer,) = report.layers
    assert layer.conflict_records == 0 and layer.worst_pair is None
    assert report.verdict[0] == (
        "no pair of losses conflicts at any of the 3 records (lowest cos -0.01: a and b; "
        "a conflict is cos < -0.05)"
    )
    assert not any("concentrates" in line for line in report.verdict)


def test_the_timeline_json_states_the_threshold_and_the_denominators() -> None:
    doc = build_timeline(timeline_records([-0.5, None, 0.2])).to_dict()
    assert doc["conflict_threshold"] == 0.05
    pair = doc["pairs"][0]
    assert (pair["conflict_records"], pair["defined_records"]) == (1, 2)
    assert doc["series"]["cosine"]["a~b"][0] == pytest.approx(-0.5)


# --- names in what the analysis writes ------------------------------------------------------------


def test_verdicts_and_warnings_show_names_inert() -> None:
    vectors = {"a\x1b[31m": [1.0, 0.0], "a ": [-1.0, 0.2], "z": [0.0, 0.0]}
    report = build_report(engine_result(vectors), command="x")
    assert report.verdict[0].startswith("'a\\x1b[31m' and 'a ' conflict (cos -0.98")
    assert "loss 'z' has a zero gradient on the selected parameters" in report.warnings
    assert not any("\x1b" in line for line in report.verdict + report.warnings)


def test_timeline_verdict_shows_names_inert() -> None:
    records = []
    for k, c in enumerate([-0.5, -0.6]):
        vectors = {"x\r": [1.0, 0.0], "y\n": [c, math.sqrt(1 - c * c)]}
        records.append(make_record(k, vectors, layers={"l\x1b": vectors}))
    report = build_timeline(records)
    assert report.verdict[0].startswith("'x\\r' and 'y\\n' conflict in 100% of the 2 records")
    assert any(line.startswith("conflict concentrates in 'l\\x1b':") for line in report.verdict)
    assert not any(ch in line for line in report.verdict for ch in "\r\n\x1b")
