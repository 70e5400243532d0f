"""Views for many losses: the most conflicting pairs (against a brute force over every pair of a
random 30-loss problem), loss groups (against the Gramian of gradients of summed losses, taken
independently with autograd), the EMA of the report (against its closed form), the timeline's
ranking of the pairs most often in conflict, and the checks on each option."""

from __future__ import annotations

import math
import random

import pytest
import torch
from _runlog_samples import make_record
from torch import nn

import gradtool
from gradtool.analysis import build_report, build_timeline
from gradtool.analysis.loss_groups import check_loss_groups, group_losses
from gradtool.analysis.report import check_top
from gradtool.analysis.timeline import check_ema, ema, half_life, most_conflicting_pairs
from gradtool.engine import EngineResult
from gradtool.errors import UsageError

M, DIM, BATCHES = 30, 40, 3


def _dot(u: list[float], v: list[float]) -> float:
    return math.fsum(a * b for a, b in zip(u, v, strict=True))


def _cos(u: list[float], v: list[float]) -> float:
    return _dot(u, v) / math.sqrt(_dot(u, u) * _dot(v, v))


def _gram(rows: list[list[float]]) -> list[list[float]]:
    return [[_dot(u, v) for v in rows] for u in rows]


def _random_problem() -> tuple[list[str], list[list[list[float]]], EngineResult]:
    """Return 30 loss names, three batches of 30 random gradients each (a shared direction plus
    noise, so cosines spread on both sides of 0), and the EngineResult of their mean."""
    rng = random.Random(7)
    names = [f"loss_{k:02d}" for k in range(M)]
    base = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(M)]
    batches = [[[x + rng.gauss(0, 0.6) for x in row] for row in base] for _ in range(BATCHES)]
    mean = [[math.fsum(b[i][d] for b in batches) / BATCHES for d in range(DIM)] for i in range(M)]
    result = EngineResult(
        loss_names=names,
        loss_values=[1.0] * M,
        param_names=["w"],
        param_numels=[DIM],
        gramians=torch.tensor([_gram(mean)], dtype=torch.float64),
        max_abs=[max(abs(x) for x in row) for row in mean],
        nonfinite=torch.zeros(1, M, dtype=torch.int64),
        reached=torch.ones(1, M, dtype=torch.bool),
        batch_gramians=torch.tensor([_gram(b) for b in batches], dtype=torch.float64),
        num_batches=BATCHES,
        strategy="loop",
    )
    return names, [mean, *batches], result


# --- the most conflicting pairs -------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 10, 435, 1000])
def test_top_pairs_are_the_lowest_cosines_of_every_pair(k: int) -> None:
    names, (mean, *_), result = _random_problem()
    report = build_report(result, command="inspect", top=k)
    brute = sorted((_cos(mean[i], mean[j]), i, j) for i in range(M) for j in range(i + 1, M))[:k]
    assert len(report.top_pairs) == min(k, M * (M - 1) // 2)
    for pair, (c, i, j) in zip(report.top_pairs, brute, strict=True):
        assert (pair.i, pair.j, pair.a, pair.b) == (i, j, names[i], names[j])
        assert pair.cosine == pytest.approx(c, rel=1e-9, abs=1e-12)
        assert pair.angle_deg == pytest.approx(math.degrees(math.acos(c)), rel=1e-9)
        assert pair.conflict == (c < -report.conflict_threshold)


def test_top_pairs_carry_the_per_batch_mean_and_the_batches_in_conflict() -> None:
    _, (_, *batches), result = _random_problem()
    report = build_report(result, command="inspect", top=10)
    tau = report.conflict_threshold
    assert any(p.conflict for p in report.top_pairs)  # the sample has conflicts to rank
    for pair in report.top_pairs:
        per_batch = [_cos(b[pair.i], b[pair.j]) for b in batches]
        below = sum(c < -tau for c in per_batch)
        assert pair.batch_cos_mean == pytest.approx(math.fsum(per_batch) / BATCHES, rel=1e-9)
        assert pair.batches_defined == BATCHES
        assert pair.batches_below == below
        assert pair.batch_conflict_fraction == pytest.approx(below / BATCHES)


def test_top_pairs_put_undefined_cosines_last() -> None:
    vectors = {"a": [1.0, 0.0], "b": [-1.0, 0.2], "zero": [0.0, 0.0]}
    rows = list(vectors.values())
    result = EngineResult(
        loss_names=list(vectors),
        loss_values=[1.0] * 3,
        param_names=["w"],
        param_numels=[2],
        gramians=torch.tensor([_gram(rows)], dtype=torch.float64),
        max_abs=[1.0, 1.0, 0.0],
        nonfinite=torch.zeros(1, 3, dtype=torch.int64),
        reached=torch.ones(1, 3, dtype=torch.bool),
        batch_gramians=None,
        num_batches=1,
        strategy="loop",
    )
    report = build_report(result, command="inspect")
    assert [(p.a, p.b) for p in report.top_pairs] == [("a", "b"), ("a", "zero"), ("b", "zero")]
    assert report.top_pairs[0].cosine is not None and report.top_pairs[0].cosine < -0.9
    assert report.top_pairs[1].cosine is None and report.top_pairs[2].cosine is None
    assert report.top_pairs[0].batch_cos_mean is None  # one batch: no per-batch statistics


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "5"])
def test_top_must_be_a_whole_number_of_at_least_one(bad: object) -> None:
    with pytest.raises(UsageError) as info:
        check_top(bad)  # type: ignore[arg-type]
    assert info.value.option == "top"
    assert "top" in info.value.message


# --- loss groups ----------------------------------------------------------------------------------

LOSS_GROUPS = {"fit": "fit_*", "aux": ["aux_x", "aux_y"], "a_side": ["*_a", "aux_x"]}


def _model_and_losses() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.linspace(-1, 1, 40).reshape(10, 4)
    y = model(x)
    losses = {
        "fit_a": ((y[:, 0] - 1) ** 2).mean(),
        "fit_b": ((y[:, 1] + y[:, 0]) ** 2).mean(),
        "aux_x": (y[:, 2] * y[:, 0]).mean(),
        "aux_y": torch.tanh(y).sum(dim=1).pow(2).mean(),
        "reg": 0.1 * sum(p.pow(2).sum() for p in model.parameters()),
    }
    return model, losses


def test_loss_group_gramian_is_the_gramian_of_the_summed_gradients() -> None:
    model, losses = _model_and_losses()
    report = gradtool.analyze(model, losses, loss_groups=LOSS_GROUPS)
    params = list(model.parameters())
    members = {"fit": ["fit_a", "fit_b"], "aux": ["aux_x", "aux_y"], "a_side": ["fit_a", "aux_x"]}
    summed = {}
    for name, keys in members.items():  # g_A = d(sum_{i in A} L_i)/d(theta), independently
        grads = torch.autograd.grad(sum(losses[k] for k in keys), params, retain_graph=True)
        summed[name] = torch.cat([g.reshape(-1) for g in grads]).double()
    groups = report.loss_groups
    assert groups is not None
    assert groups.names == list(LOSS_GROUPS)
    assert groups.members == members
    assert groups.ungrouped == ["reg"]
    for x, a in enumerate(groups.names):
        assert groups.norms[a] == pytest.approx(float(summed[a].norm()), rel=1e-6)
        value = sum(float(losses[k].detach()) for k in members[a])
        assert groups.loss_values[a] == pytest.approx(value, rel=1e-6)
        for y, b in enumerate(groups.names):
            dot = float(summed[a] @ summed[b])
            assert groups.dot[x][y] == pytest.approx(dot, rel=1e-6, abs=1e-9)
            cos = dot / float(summed[a].norm() * summed[b].norm())
            assert groups.cosine[x][y] == pytest.approx(cos, rel=1e-6, abs=1e-9)
            assert groups.conflict[x][y] == (x != y and cos < -report.conflict_threshold)
    doc = report.to_dict()
    assert doc["loss_groups"]["names"] == list(LOSS_GROUPS)
    assert doc["meta"]["loss_groups"] == {
        "fit": ["fit_*"],
        "aux": ["aux_x", "aux_y"],
        "a_side": ["*_a", "aux_x"],
    }


def test_no_loss_group_no_key() -> None:
    model, losses = _model_and_losses()
    doc = gradtool.analyze(model, losses).to_dict()
    assert "loss_groups" not in doc and "loss_groups" not in doc["meta"]
    assert len(doc["top_pairs"]) == 10  # 5 losses, 10 pairs: every one, lowest cosine first
    cosines = [p["cosine"] for p in doc["top_pairs"]]
    assert cosines == sorted(cosines)


def test_a_loss_glob_matching_nothing_names_the_option_and_suggests() -> None:
    model, losses = _model_and_losses()
    with pytest.raises(UsageError) as info:
        gradtool.analyze(model, losses, loss_groups={"fit": "fit"})
    assert info.value.option == "loss_groups"
    assert "loss group 'fit' (loss_groups): the glob 'fit' matched none of the 5 losses" in str(
        info.value
    )
    assert "'fit*'" in (info.value.hint or "") or "'*fit*'" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("groups", "needle"),
    [
        (["fit_*"], "should map group names to globs"),
        ({"": "fit_*"}, "a group name should be a non-empty string"),
        ({"fit": []}, "group 'fit' has no glob"),
        ({"fit": ["fit_*", ""]}, "should hold non-empty glob strings"),
        ({"fit": ["fit_*", "fit_*"]}, "holds the glob 'fit_*' twice"),
    ],
)
def test_malformed_loss_groups_are_refused(groups: object, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        check_loss_groups(groups)  # type: ignore[arg-type]
    assert needle in info.value.message
    assert info.value.option == "loss_groups"


def test_a_loss_may_be_in_several_groups_in_loss_order() -> None:
    names = ["b_1", "a_1", "b_2", "c"]
    found = group_losses(names, {"b": ("b_*",), "ones": ("*_1",)})
    assert [(g.name, g.indices, g.losses) for g in found] == [
        ("b", (0, 2), ("b_1", "b_2")),
        ("ones", (0, 1), ("b_1", "a_1")),
    ]


def test_timeline_loss_groups_sum_the_gradients_of_each_record() -> None:
    rng = random.Random(11)
    names = ["t1", "t2", "r1", "r2", "x"]
    records, vectors_per_record = [], []
    for step in range(6):
        vectors = {n: [rng.gauss(0, 1) for _ in range(5)] for n in names}
        vectors_per_record.append(vectors)
        records.append(make_record(10 * step, vectors, loss_values={n: 1.5 for n in names}))
    report = build_timeline(records, loss_groups={"t": "t*", "r": "r*"})
    groups = report.loss_groups
    assert groups is not None
    assert groups.members == {"t": ["t1", "t2"], "r": ["r1", "r2"]}
    assert groups.ungrouped == ["x"]
    for k, vectors in enumerate(vectors_per_record):
        g_t = [a + b for a, b in zip(vectors["t1"], vectors["t2"], strict=True)]
        g_r = [a + b for a, b in zip(vectors["r1"], vectors["r2"], strict=True)]
        assert groups.cosine["t~r"][k] == pytest.approx(_cos(g_t, g_r), rel=1e-9)
        assert groups.norms["t"][k] == pytest.approx(math.sqrt(_dot(g_t, g_t)), rel=1e-9)
        assert groups.loss_values["r"][k] == pytest.approx(3.0)
    (pair,) = groups.pairs
    assert pair.cos_min == pytest.approx(min(groups.cosine["t~r"]), rel=1e-12)
    assert report.meta["loss_groups"] == {"t": ["t*"], "r": ["r*"]}
    assert "loss_groups" in report.to_dict()
    assert "loss_groups" not in build_timeline(records).to_dict()


# --- the timeline's pairs most often in conflict --------------------------------------------------


def test_timeline_top_pairs_rank_by_conflict_share_then_mean_cosine() -> None:
    rng = random.Random(5)
    names = [f"l{k}" for k in range(9)]
    records = [
        make_record(step, {n: [rng.gauss(0, 1) for _ in range(4)] for n in names})
        for step in range(12)
    ]
    report = build_timeline(records, top=7)
    tau = report.conflict_threshold
    brute = []
    for i in range(9):
        for j in range(i + 1, 9):
            cos = report.series.cosine[f"{names[i]}~{names[j]}"]
            assert all(c is not None for c in cos)
            share = sum(c < -tau for c in cos) / len(cos)  # type: ignore[operator]
            brute.append((-share, math.fsum(cos) / len(cos), f"{names[i]}~{names[j]}"))  # type: ignore[arg-type]
    brute.sort()
    assert [p.key for p in report.top_pairs] == [key for _, _, key in brute[:7]]
    for p, (share, mean, _) in zip(report.top_pairs, brute, strict=False):
        assert p.conflict_fraction == pytest.approx(-share)
        assert p.cos_mean == pytest.approx(mean, rel=1e-9)
    assert most_conflicting_pairs(report.pairs, 3) == report.top_pairs[:3]


# --- the EMA --------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.9])
def test_ema_is_its_closed_form(alpha: float) -> None:
    rng = random.Random(2)
    xs = [rng.uniform(-1, 1) for _ in range(25)]
    smoothed = ema(xs, alpha)
    for t, s in enumerate(smoothed):
        closed = (1 - alpha) ** t * xs[0] + math.fsum(
            alpha * (1 - alpha) ** (t - k) * xs[k] for k in range(1, t + 1)
        )
        assert s == pytest.approx(closed, rel=1e-12, abs=1e-14)


def test_ema_skips_undefined_values_and_keeps_them_undefined() -> None:
    alpha = 0.25
    smoothed = ema([None, 2.0, None, math.nan, 6.0], alpha)
    assert smoothed[0] is None and smoothed[2] is None and smoothed[3] is None
    assert smoothed[1] == pytest.approx(2.0)
    assert smoothed[4] == pytest.approx(alpha * 6.0 + (1 - alpha) * 2.0)


def test_half_life_halves_the_weight() -> None:
    for alpha in (0.1, 0.5):
        assert (1 - alpha) ** half_life(alpha) == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, math.nan, math.inf])
def test_ema_alpha_must_lie_strictly_between_zero_and_one(bad: float) -> None:
    with pytest.raises(UsageError) as info:
        check_ema(bad)
    assert info.value.option == "ema"


def test_timeline_tables_are_of_the_smoothed_series_and_the_raw_ones_stay() -> None:
    cosines = [0.5, -0.5, -0.8, 0.2, 0.6, -0.1]
    records = [
        make_record(
            10 * k,
            {"a": [1.0, 0.0], "b": [c, math.sqrt(1 - c * c)]},
            loss_values={"a": 1.0, "b": 1.0},
        )
        for k, c in enumerate(cosines)
    ]
    alpha = 0.4
    raw = build_timeline(records)
    report = build_timeline(records, ema=alpha)
    assert report.series.cosine == raw.series.cosine  # the raw series stay
    smooth = report.series_ema
    assert smooth is not None and smooth.alpha == alpha
    expected = ema(raw.series.cosine["a~b"], alpha)
    assert smooth.cosine["a~b"] == pytest.approx(expected, rel=1e-12)
    (pair,) = report.pairs
    assert pair.cos_end == pytest.approx(expected[-1], rel=1e-12)
    assert pair.cos_min == pytest.approx(min(expected), rel=1e-12)
    tau = report.conflict_threshold
    assert pair.conflict_records == sum(c < -tau for c in expected)
    assert raw.pairs[0].conflict_records == sum(c < -tau for c in cosines)
    weights = smooth.mgda_weights
    for t in range(len(cosines)):  # the EMA is linear: smoothed weights still sum to 1
        assert weights["a"][t] + weights["b"][t] == pytest.approx(1.0, rel=1e-12)
    doc = report.to_dict()
    assert doc["ema"] == alpha and doc["series_ema"]["half_life"] == pytest.approx(
        math.log(2) / -math.log(1 - alpha)
    )
    assert "series_ema" not in raw.to_dict() and raw.to_dict()["ema"] is None


def test_the_figures_draw_the_smoothed_series_over_the_faint_raw_ones() -> None:
    pytest.importorskip("matplotlib")
    from gradtool.render.plots import timeline_figures

    cosines = [0.5, -0.5, -0.8, 0.2, 0.6, -0.1]
    records = [
        make_record(10 * k, {"a": [1.0, 0.0], "b": [c, math.sqrt(1 - c * c)]})
        for k, c in enumerate(cosines)
    ]
    report = build_timeline(records, ema=0.5)
    assert report.series_ema is not None
    figures = dict(timeline_figures(report))
    ax = figures["cosine_pairs.png"].axes[0]
    assert "EMA 0.5" in ax.get_title()
    drawn = [list(line.get_ydata()) for line in ax.get_lines() if len(line.get_ydata()) == 6]
    assert cosines in [pytest.approx(ys) for ys in drawn]  # the raw records, faint
    smoothed = report.series_ema.cosine["a~b"]
    assert any(ys == pytest.approx(smoothed) for ys in drawn)
    mgda = figures["mgda_weights.png"].axes[0]
    assert "EMA 0.5" in mgda.get_title() and "faint" not in mgda.get_title()
