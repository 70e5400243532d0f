"""The timeline tables, against hand-made records whose Gramians (and cosines) are known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _runlog_samples import conflict_run, gram, make_record, unit

from gradtool.analysis.timeline import build_timeline, downsample
from gradtool.results.runlog import RunLog


def mgda_two(g: list[list[float]]) -> float:
    """Return the min-norm weight of the first of two gradients (closed form, DESIGN.md)."""
    num = g[1][1] - g[0][1]
    den = g[0][0] - 2 * g[0][1] + g[1][1]
    return min(1.0, max(0.0, num / den))


def test_pair_cosine_start_min_max_end_and_the_step_of_the_minimum() -> None:
    report = build_timeline(conflict_run())
    (pair,) = report.pairs
    assert (pair.a, pair.b, pair.key) == ("a", "b", "a~b")
    assert pair.cos_start == pytest.approx(0.5)
    assert pair.cos_min == pytest.approx(-0.8)
    assert pair.step_min == 20
    assert pair.cos_max == pytest.approx(0.5)
    assert pair.cos_end == pytest.approx(0.2)


def test_conflict_fraction_and_first_and_last_conflict_steps() -> None:
    (pair,) = build_timeline(conflict_run()).pairs
    assert pair.conflict_fraction == pytest.approx(2 / 4)
    assert pair.first_conflict_step == 10
    assert pair.last_conflict_step == 20


def test_a_pair_that_never_conflicts_has_no_first_conflict_step() -> None:
    records = [make_record(s, {"a": unit(0), "b": unit(30)}) for s in (0, 5)]
    (pair,) = build_timeline(records).pairs
    assert pair.conflict_fraction == 0.0
    assert pair.first_conflict_step is None
    assert "no pair of losses conflicts" in " ".join(build_timeline(records).verdict)


def test_norm_trend_start_end_min_max_and_ratio() -> None:
    report = build_timeline(conflict_run())
    a, b = report.loss_trends
    assert (a.norm_start, a.norm_end) == (pytest.approx(2.0), pytest.approx(0.25))
    assert (a.norm_min, a.norm_max) == (pytest.approx(0.25), pytest.approx(2.0))
    assert a.norm_ratio == pytest.approx(0.125)
    assert b.norm_ratio == pytest.approx(1.0)
    assert (a.value_start, a.value_end) == (4.0, 1.0)
    assert "a's gradient norm fell 8.0x" in " ".join(report.verdict)


def test_mgda_weights_are_recomputed_from_the_gramians_when_not_recorded() -> None:
    records = conflict_run()
    report = build_timeline(records)
    expected = [mgda_two(r.dot) for r in records]
    assert report.series.mgda_weights["a"] == pytest.approx(expected, abs=1e-9)
    assert [x + y for x, y in zip(*report.series.mgda_weights.values(), strict=True)] == (
        pytest.approx([1.0] * 4)
    )
    (wa, _) = report.mgda
    assert wa.start == pytest.approx(expected[0], abs=1e-9)
    assert wa.end == pytest.approx(expected[-1], abs=1e-9)
    assert wa.min == pytest.approx(min(expected), abs=1e-9)
    assert wa.mean == pytest.approx(sum(expected) / 4, abs=1e-9)


def test_recorded_mgda_weights_are_used_as_recorded() -> None:
    records = [
        make_record(0, {"a": unit(0), "b": unit(120)}, pareto={"a": 0.25, "b": 0.75}),
        make_record(1, {"a": unit(0), "b": unit(120)}, pareto={"a": 0.5, "b": 0.5}),
    ]
    report = build_timeline(records)
    assert report.series.mgda_weights == {"a": [0.25, 0.5], "b": [0.75, 0.5]}
    assert [row.step for row in report.mgda_rows] == [0, 1]


def test_mgda_rows_sample_at_most_eight_steps_with_the_first_and_last() -> None:
    records = [make_record(s, {"a": unit(0), "b": unit(100)}) for s in range(0, 500, 10)]
    rows = build_timeline(records).mgda_rows
    assert len(rows) == 8
    assert rows[0].step == 0 and rows[-1].step == 490


def test_layers_where_conflict_concentrates() -> None:
    report = build_timeline(conflict_run())
    shared, head = report.layers
    assert shared.name == "shared"
    assert shared.conflict_fraction == pytest.approx(0.5)
    assert shared.first_conflict_step == 10
    assert shared.mean_lowest_cos == pytest.approx((0.5 - 0.5 - 0.8 + 0.2) / 4)
    assert shared.worst_pair == "a~b"
    assert shared.worst_pair_fraction == pytest.approx(0.5)
    # `head` is reached by `a` alone: b's gradient there is 0, so no cosine is defined.
    assert head.records == 0
    assert head.conflict_fraction is None
    assert report.series.layer_lowest_cos[1] == [None] * 4
    assert report.series.layer_lowest_cos[0] == pytest.approx([0.5, -0.5, -0.8, 0.2])
    assert "conflict concentrates in shared" in " ".join(report.verdict)


def test_lowest_layer_cosine_is_the_minimum_over_pairs() -> None:
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [-1.0, 1.0]}
    record = make_record(0, vectors, layers={"trunk": vectors})
    report = build_timeline([record])
    # cos(a, c) = -1/sqrt(2) is the lowest of cos(a,b)=0, cos(a,c), cos(b,c)=1/sqrt(2).
    assert report.series.layer_lowest_cos[0][0] == pytest.approx(-1 / math.sqrt(2))
    assert report.layers[0].worst_pair == "a~c"
    assert [p.key for p in report.pairs] == ["a~b", "a~c", "b~c"]


def test_records_are_ordered_by_step() -> None:
    records = conflict_run()
    report = build_timeline(list(reversed(records)))
    assert report.series.steps == [0, 10, 20, 30]
    assert report.pairs[0].cos_start == pytest.approx(0.5)


def test_zero_gradient_gives_null_cosines_and_strict_json() -> None:
    records = [
        make_record(0, {"a": [1.0, 0.0], "b": [0.0, 0.0]}),
        make_record(1, {"a": [1.0, 0.0], "b": [-1.0, 0.0]}),
    ]
    report = build_timeline(records)
    (pair,) = report.pairs
    assert pair.cos_start is None
    assert pair.cos_end == pytest.approx(-1.0)
    assert pair.conflict_fraction == 1.0  # of the records where the cosine is defined
    doc = json.loads(report.to_json(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert doc["schema_version"] == 1 and doc["command"] == "report"
    assert doc["series"]["cosine"]["a~b"] == [None, -1.0]


def test_a_run_log_brings_its_path_warnings_and_header() -> None:
    run = RunLog(
        path=Path("run.jsonl"),
        header={"every": 10, "gradtool_version": "0.1.0", "metadata": {"lr": 0.1}},
        records=conflict_run(),
        warnings=["line 9 is truncated"],
        sessions=1,
    )
    report = build_timeline(run)
    assert report.source == "run.jsonl"
    assert report.warnings == ["line 9 is truncated"]
    assert report.meta["every"] == 10 and report.meta["metadata"] == {"lr": 0.1}


def test_downsample_takes_bin_means_and_keeps_short_series() -> None:
    assert downsample([1.0, None, 3.0], 5) == [1.0, None, 3.0]
    assert downsample([0.0, 2.0, 4.0, 6.0], 2) == [1.0, 5.0]
    assert downsample([None, None, 1.0, 3.0], 2) == [None, 2.0]


def test_gram_helper_matches_the_definition() -> None:
    assert gram({"a": [1.0, 2.0], "b": [3.0, -1.0]}) == [[5.0, 1.0], [1.0, 10.0]]
