"""`gradtool affinity` through the CLI: the JSON document and verdict on the samples, the tables,
bad usage, holdout with an output file. The lookahead itself: tests/unit/analysis/test_affinity.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _models import MULTITASK, SAMPLES, invoke
from typer.testing import CliRunner


def test_multitask_sample_verdict_compares_mgda_and_mean(runner: CliRunner) -> None:
    result = invoke(runner, "affinity", MULTITASK, "--lr", "0.1", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    for key in (
        "schema_version",
        "command",
        "losses",
        "loss_values",
        "num_batches",
        "parameters",
        "lr",
        "holdout",
        "affinity",
        "affinity_first_order",
        "loss_change",
        "loss_change_first_order",
        "methods_step",
        "verdict",
    ):
        assert key in body, key
    assert body["command"] == "affinity" and body["lr"] == 0.1 and body["holdout"] is False
    m = len(body["losses"])
    assert len(body["affinity"]) == m and all(len(row) == m for row in body["affinity_first_order"])
    steps = {s["method"]: s for s in body["methods_step"]}
    assert steps["mgda"]["lowers_every_loss"] is True
    assert steps["mean"]["lowers_every_loss"] is False
    assert (
        body["verdict"][0] == "one step of mgda lowers every loss; one step of mean raises normals"
    )
    depth, normals = body["losses"].index("depth"), body["losses"].index("normals")
    assert body["affinity"][depth][normals] < 0  # the conflicting pair


def test_cli_renders_the_grid_and_the_method_steps(runner: CliRunner) -> None:
    result = invoke(runner, "affinity", MULTITASK, "--lr", "0.1", "--method", "mgda,upgrad")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Lookahead affinity Z[i->j]" in out and "step on" in out
    assert "upgrad" in out and "lowers all" in out
    assert "one step of mgda lowers every loss" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0"], "--lr should be a positive number"),
        (["--lr", "-0.5"], "--lr should be a positive number"),
        (["--lr", "0.1", "--holdout"], "at least 2 batches"),
        (["--lr", "0.1", "--method", "nope"], "unknown method 'nope'"),
    ],
)
def test_cli_bad_usage_exits_2_without_output(
    runner: CliRunner, args: list[str], message: str, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    result = invoke(runner, "affinity", MULTITASK, *args, "-o", out)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and result.stdout == ""


def test_cli_missing_lr_exits_2(runner: CliRunner) -> None:
    result = invoke(runner, "affinity", MULTITASK)
    assert result.exit_code == 2


def test_cli_holdout_on_batches_and_output_file(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "affinity.json"
    result = invoke(
        runner,
        "affinity",
        SAMPLES / "batches.py",
        "--lr",
        "0.1",
        "--holdout",
        "--batches",
        "4",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    body = json.loads(out.read_text())
    assert body["holdout"] is True and body["num_batches"] == 4
    assert "next batch (holdout)" in result.stdout


def test_losses_that_differentiate_inside_still_run(runner: CliRunner) -> None:
    # samples/meta.py takes an inner SGD step with autograd.grad(create_graph=True) in `losses`.
    result = invoke(runner, "affinity", SAMPLES / "meta.py", "--lr", "0.05", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert all(v is not None for row in body["affinity"] for v in row)


def test_nonfinite_gradients_are_named_not_a_solver_failure(runner: CliRunner, tmp_path) -> None:
    path = tmp_path / "nan.py"
    path.write_text(
        "import torch\n"
        "model = torch.nn.Linear(2, 1)\n"
        "def losses(m):\n"
        "    out = m(torch.ones(1, 2)).sum()\n"
        "    bad = torch.sqrt((m.weight - m.weight.detach()).sum().abs())\n"
        "    return {'ok': out, 'bad': bad + out}\n"
    )
    result = invoke(runner, "affinity", path, "--lr", "0.1")
    assert result.exit_code == 1
    assert "non-finite gradients" in result.stderr and "'bad'" in result.stderr


def test_affinity_states_the_engine_it_ran(runner: CliRunner) -> None:
    doc = json.loads(invoke(runner, "affinity", MULTITASK, "--lr", "0.1", "--json").stdout)
    assert doc["meta"]["strategy"] in ("loop", "batched", "backward")
    verbose = invoke(runner, "affinity", MULTITASK, "--lr", "0.1", "-v").stdout
    assert f"strategy {doc['meta']['strategy']}" in verbose
    forced = invoke(runner, "affinity", MULTITASK, "--lr", "0.1", "--strategy", "loop", "--json")
    assert json.loads(forced.stdout)["meta"]["strategy"] == "loop"
