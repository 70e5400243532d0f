"""Figures: each is a valid, non-trivial PNG; a missing matplotlib is a clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from _models import PNG_SIGNATURE
from _runlog_samples import conflict_run, make_record, unit

import gradtool
from gradtool.analysis import build_timeline
from gradtool.errors import GradtoolError
from gradtool.render.plots import TIMELINE_FIGURES, plot_snapshot, plot_timeline


@pytest.fixture
def mpl() -> None:
    """Skip the test where matplotlib (the `plot` extra) is not installed."""
    pytest.importorskip("matplotlib")


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"
    assert data.endswith(b"IEND\xaeB`\x82"), path  # the PNG's closing chunk: not truncated


def test_timeline_figures_are_valid_pngs(tmp_path: Path, mpl: None) -> None:
    paths = plot_timeline(build_timeline(conflict_run()), tmp_path / "figures")
    assert [p.name for p in paths] == list(TIMELINE_FIGURES)
    for path in paths:
        assert_png(path)


def test_three_losses_with_stored_weights_draw_every_figure(tmp_path: Path, mpl: None) -> None:
    vectors = {"a": unit(0), "b": unit(100), "c": unit(200, 0.5)}
    weights = {"a": 0.2, "b": 0.5, "c": 0.3}
    records = [
        make_record(s, vectors, layers={"l1": vectors, "l2": vectors}, pareto=weights)
        for s in range(0, 50, 5)
    ]
    paths = plot_timeline(build_timeline(records), tmp_path)
    assert len(paths) == 4
    for path in paths:
        assert_png(path)


def test_one_loss_draws_only_the_norms(tmp_path: Path, mpl: None) -> None:
    records = [make_record(s, {"only": unit(0, 1.0 + s)}) for s in range(3)]
    paths = plot_timeline(build_timeline(records), tmp_path)
    assert [p.name for p in paths] == ["grad_norms.png"]
    assert_png(paths[0])


def test_a_single_record_still_plots(tmp_path: Path, mpl: None) -> None:
    paths = plot_timeline(build_timeline(conflict_run()[:1]), tmp_path)
    assert len(paths) == 4
    for path in paths:
        assert_png(path)


def test_snapshot_figure_of_a_live_report_is_a_valid_png(tmp_path: Path, mpl: None) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    out = model(torch.randn(6, 3))
    report = gradtool.analyze(
        model, {"first": out[:, 0].mean(), "second": -out[:, 1].pow(2).mean(), "sum": out.sum()}
    )
    path = plot_snapshot(report, tmp_path / "snapshot.png")
    assert path == tmp_path / "snapshot.png"
    assert_png(path)


def test_missing_matplotlib_is_a_gradtool_error_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(GradtoolError, match="needs matplotlib") as e:
        plot_timeline(build_timeline(conflict_run()), tmp_path)
    assert e.value.hint == "pip install 'gradtool[plot]'"
    assert not list(tmp_path.iterdir())
