"""Figures of many losses stay a sensible size and show the right subset (the most conflicting
pairs, the largest norms, the heaviest MGDA weights); matplotlib's warnings stay quiet; a figure
that cannot be written is one `UsageError` naming the path, and destroys nothing."""

from __future__ import annotations

import itertools
import logging
import math
import random
import struct
import warnings
from pathlib import Path

import pytest
import torch
from _runlog_samples import make_record

import gradtool
from gradtool.analysis import build_timeline
from gradtool.errors import UsageError
from gradtool.render.plots import (
    DPI,
    MAX_BANDS,
    MAX_CURVES,
    MAX_HEIGHT,
    MAX_PAIRS,
    MAX_WIDTH,
    plot_snapshot,
    plot_timeline,
    snapshot_figure,
    timeline_figures,
)
from gradtool.results.timeline import TimelineReport

pytest.importorskip("matplotlib")

M = 20  # losses
STEPS = range(0, 50, 10)
LAYERS = 30


def vectors_at(step: int, names: list[str]) -> dict[str, list[float]]:
    """Return each loss's gradient at `step`: random 6-d vectors of norms spread over 1e-2..1e2."""
    rng = random.Random(1000 + step)
    return {
        name: [rng.gauss(0.0, 1.0) * 10 ** (4 * k / (len(names) - 1) - 2) for _ in range(6)]
        for k, name in enumerate(names)
    }


def many_losses_run(names: list[str]) -> tuple[TimelineReport, dict[int, dict[str, list[float]]]]:
    """Return the timeline of a 20-loss run with 30 layers and stored MGDA weights, and the
    gradient vectors per step the records were built from."""
    per_step = {s: vectors_at(s, names) for s in STEPS}
    rng = random.Random(7)
    raw = [rng.random() for _ in names]
    weights = {n: w / sum(raw) for n, w in zip(names, raw, strict=True)}
    records = [
        make_record(
            s,
            v,
            layers={f"block{k}.linear": v for k in range(LAYERS)},
            pareto=weights,
        )
        for s, v in per_step.items()
    ]
    return build_timeline(records), per_step


def cosine(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True)) / (math.hypot(*u) * math.hypot(*v))


def png_size(path: Path) -> tuple[int, int]:
    """Return (width, height) in pixels from the PNG's IHDR chunk."""
    data = path.read_bytes()[:24]
    assert data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_bounded(fig: object, name: str) -> None:
    width, height = fig.get_size_inches()  # type: ignore[attr-defined]
    assert 0 < width <= MAX_WIDTH and 0 < height <= MAX_HEIGHT, (name, width, height)


NAMES = [f"loss_{k:02d}" for k in range(M)]


@pytest.fixture(scope="module")
def run20() -> tuple[TimelineReport, dict[int, dict[str, list[float]]]]:
    return many_losses_run(NAMES)


def test_timeline_figures_of_twenty_losses_stay_within_bounds(
    run20: tuple[TimelineReport, dict[int, dict[str, list[float]]]], tmp_path: Path
) -> None:
    report, _ = run20
    figures = dict(timeline_figures(report))
    assert list(figures) == [
        "cosine_pairs.png",
        "grad_norms.png",
        "mgda_weights.png",
        "layer_conflict.png",
    ]
    for name, fig in figures.items():
        assert_bounded(fig, name)
    for path in plot_timeline(report, tmp_path):
        width, height = png_size(path)
        assert width <= MAX_WIDTH * DPI and height <= MAX_HEIGHT * DPI, (path.name, width, height)


def test_the_cosine_figure_draws_the_most_conflicting_pairs(
    run20: tuple[TimelineReport, dict[int, dict[str, list[float]]]],
) -> None:
    report, per_step = run20
    lowest = {
        f"{a}~{b}": min(cosine(per_step[s][a], per_step[s][b]) for s in STEPS)
        for a, b in itertools.combinations(NAMES, 2)
    }
    expected = sorted(lowest, key=lowest.__getitem__)[:MAX_PAIRS]
    fig = dict(timeline_figures(report))["cosine_pairs.png"]
    (ax,) = fig.axes
    drawn = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert sorted(drawn) == sorted(expected)
    assert f"the {MAX_PAIRS} most conflicting of {M * (M - 1) // 2} pairs" in ax.get_title()


def test_the_norms_figure_names_the_largest_and_greys_the_rest(
    run20: tuple[TimelineReport, dict[int, dict[str, list[float]]]],
) -> None:
    report, per_step = run20
    largest = sorted(NAMES, key=lambda n: -max(math.hypot(*per_step[s][n]) for s in STEPS))
    fig = dict(timeline_figures(report))["grad_norms.png"]
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == set(NAMES)  # every loss is drawn
    grey = {n for n, line in lines.items() if line.get_color() == "0.62"}
    assert grey == set(largest[MAX_CURVES:])
    labels = {t.get_text() for t in ax.texts}
    assert set(largest[:MAX_CURVES]) <= labels and f"{M - MAX_CURVES} others" in labels


def test_the_mgda_figure_groups_the_lightest_losses_into_one_band(
    run20: tuple[TimelineReport, dict[int, dict[str, list[float]]]],
) -> None:
    report, _ = run20
    weights = {n: report.series.mgda_weights[n][0] for n in NAMES}  # stored: the same each step
    heaviest = sorted(NAMES, key=lambda n: -weights[n])[: MAX_BANDS - 1]
    fig = dict(timeline_figures(report))["mgda_weights.png"]
    (ax,) = fig.axes
    bands = [c.get_label() for c in ax.collections]
    assert bands == [n for n in NAMES if n in heaviest] + [f"{M - MAX_BANDS + 1} others"]


def test_a_snapshot_of_twenty_losses_stays_within_bounds_and_shows_ten_pairs(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 4) for _ in range(12)]
    model = torch.nn.Sequential(
        *itertools.chain.from_iterable((x, torch.nn.Tanh()) for x in layers)
    )
    out = model(torch.randn(8, 4))
    directions = torch.randn(M, 4)
    report = gradtool.analyze(model, {n: (out * directions[k]).sum() for k, n in enumerate(NAMES)})
    fig = snapshot_figure(report)
    assert_bounded(fig, "snapshot")
    whole, per_layer = fig.axes[:2]
    pairs = sorted(itertools.combinations(range(M), 2), key=lambda ij: report.cosine[ij[0]][ij[1]])[
        :MAX_PAIRS
    ]
    expected = [f"{NAMES[i]} ~\n{NAMES[j]}" for i, j in sorted(pairs)]
    assert [t.get_text() for t in per_layer.get_xticklabels()] == expected
    assert [t.get_text() for t in whole.get_yticklabels()] == NAMES
    path = plot_snapshot(report, tmp_path / "snapshot.png")
    width, height = png_size(path)
    assert width <= MAX_WIDTH * DPI and height <= MAX_HEIGHT * DPI


def test_matplotlib_warnings_and_log_lines_stay_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    from matplotlib.figure import Figure

    names = [f"损失{k}" for k in range(M)]  # no glyph for these in matplotlib's default font
    with warnings.catch_warnings(record=True) as plain:
        warnings.simplefilter("always")
        fig = Figure()
        fig.subplots().set_title(names[0])
        fig.savefig(tmp_path / "plain.png")
    assert any("Glyph" in str(w.message) for w in plain), "the input should provoke a warning"
    capfd.readouterr()
    logger = logging.getLogger("matplotlib")
    level, filters = logger.level, list(warnings.filters)
    report, _ = many_losses_run(names)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        paths = plot_timeline(report, tmp_path / "figures")
    assert len(paths) == 4
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("matplotlib")] == []
    assert capfd.readouterr().err == ""
    assert logger.level == level and warnings.filters == filters  # nothing global left changed


def test_a_snapshot_into_a_missing_folder_is_a_usage_error_naming_the_path(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    out = model(torch.randn(4, 3))
    report = gradtool.analyze(model, {"a": out[:, 0].sum(), "b": -out[:, 1].sum()})
    path = tmp_path / "gone" / "fig.png"
    with pytest.raises(UsageError, match="cannot write the figure") as e:
        plot_snapshot(report, path)
    assert e.value.reason == "plot_failed" and str(path) in e.value.message
    assert "\n" not in e.value.message
    with pytest.raises(UsageError, match="cannot write the figure"):
        plot_snapshot(report, tmp_path / "fig.unknown-type")


def test_timeline_figures_onto_a_file_is_a_usage_error_and_the_file_is_kept(
    run20: tuple[TimelineReport, dict[int, dict[str, list[float]]]], tmp_path: Path
) -> None:
    report, _ = run20
    existing = tmp_path / "notes.txt"
    existing.write_bytes(b"keep me\n")
    with pytest.raises(UsageError, match="cannot write the figure") as e:
        plot_timeline(report, existing)
    assert e.value.reason == "plot_failed"
    assert existing.read_bytes() == b"keep me\n"


def test_curve_names_are_apart_and_inside_the_axes(
    run20: tuple[TimelineReport, dict[int, dict[str, list[float]]]],
) -> None:
    report, _ = run20
    for name in ("cosine_pairs.png", "grad_norms.png"):
        (ax,) = dict(timeline_figures(report))[name].axes
        log = ax.get_yscale() == "log"
        low, high = (math.log10(v) if log else v for v in ax.get_ylim())
        ys = sorted(math.log10(t.xy[1]) if log else t.xy[1] for t in ax.texts if hasattr(t, "xy"))
        assert len(ys) >= MAX_PAIRS
        gaps = [b - a for a, b in itertools.pairwise(ys)]
        assert min(gaps) >= min(0.06, 1 / len(ys)) * (high - low) * (1 - 1e-6), name
        assert low - 1e-9 <= ys[0] and ys[-1] <= high + 1e-9, name
