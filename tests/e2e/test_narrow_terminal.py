"""The tables in an 80-column terminal (and the 20-loss cosine grid at 100): no line longer than
the width, no cell cut to '…', no trailing spaces, every loss name in full."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _models import MULTITASK, ROOT
from typer.testing import CliRunner, Result

from gradtool.cli import app

RUN_LOG = ROOT / "docs" / "runs" / "multitask.jsonl"
MULTITASK_LOSSES = ("depth", "segmentation", "normals")

TWENTY_LOSSES = """
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 20))
x, y = torch.randn(32, 6), torch.randn(32, 20)
NAMES = [f"task_{k:02d}_objective" for k in range(20)]


def losses(model):
    out = model(x)
    return {name: ((out[:, k] - y[:, k]) ** 2).mean() for k, name in enumerate(NAMES)}
"""


def run_at(runner: CliRunner, width: int, *args: object) -> Result:
    """Run the CLI in-process as if in a terminal `width` columns wide, without colour."""
    env = {"COLUMNS": str(width), "NO_COLOR": "1", "TERM": "dumb"}
    return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def assert_fits(result: Result, width: int, names: tuple[str, ...] | list[str]) -> None:
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "…" not in out
    for line in out.splitlines():
        assert len(line) <= width, line
        assert line == line.rstrip(), repr(line)
    lines = out.splitlines()
    for name in names:
        # a name in full, bounded by a non-name character (not cut, not folded)
        assert any(f" {name} " in f" {line} " or f"] {name}" in line for line in lines), name


@pytest.mark.parametrize(
    "args",
    [
        ("inspect", MULTITASK),
        ("pareto", MULTITASK),
        ("pareto", MULTITASK, "--compare"),
        ("pareto", MULTITASK, "--method", "mgda,mean,sum", "--normalize", "l2"),
        ("report", RUN_LOG),
        ("affinity", MULTITASK, "--lr", "0.1"),
    ],
    ids=["inspect", "pareto", "pareto-compare", "pareto-methods-normalised", "report", "affinity"],
)
def test_multitask_outputs_fit_eighty_columns(runner: CliRunner, args: tuple[object, ...]) -> None:
    result = run_at(runner, 80, *args)
    assert_fits(result, 80, MULTITASK_LOSSES)


def test_pareto_compare_at_eighty_columns_shows_every_method(runner: CliRunner) -> None:
    result = run_at(runner, 80, "pareto", MULTITASK, "--compare", "--json")
    methods = [m["method"] for m in json.loads(result.stdout)["methods"]]
    assert {"mgda", "mean", "sum"} <= set(methods)
    tables = run_at(runner, 80, "pareto", MULTITASK, "--compare").stdout
    for method in methods:
        assert sum(line.split()[:1] == [method] for line in tables.splitlines()) >= 2, method


def test_inspect_on_batches_fits_eighty_columns(runner: CliRunner) -> None:
    result = run_at(runner, 80, "inspect", ROOT / "samples" / "batches.py")
    assert_fits(result, 80, ("expert", "crowd"))
    assert "cos < -0.05" in result.stdout


@pytest.mark.parametrize("width", [80, 100])
def test_twenty_loss_cosine_grid_fits(runner: CliRunner, write_gradfile, width: int) -> None:
    path: Path = write_gradfile(TWENTY_LOSSES)
    result = run_at(runner, width, "inspect", path)
    names = [f"task_{k:02d}_objective" for k in range(20)]
    assert_fits(result, width, names)
    for k in range(20):
        assert f"[{k}]" in result.stdout


def test_piped_output_without_columns_keeps_the_wide_layout(runner: CliRunner) -> None:
    result = runner.invoke(app, ["inspect", str(MULTITASK)], env={"NO_COLOR": "1", "COLUMNS": None})
    assert result.exit_code == 0
    assert "(continued)" not in result.stdout  # 200 columns: one table per section
