"""`gradtool report RUN.jsonl` and `gradtool inspect --plot`, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _models import MULTITASK, PNG_SIGNATURE, invoke, strict_json
from _runlog_samples import conflict_run, write_run
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def _plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADTOOL_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run.jsonl", conflict_run())


def test_report_prints_the_tables_over_time(runner: CliRunner, run_log: Path) -> None:
    result = invoke(runner, "report", run_log)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for title in (
        "Gradient cosine over training",
        "Gradient norms over training",
        "MGDA min-norm weights over training",
        "Layers: where conflict concentrates",
    ):
        assert title in out
    assert "a ~ b" in out
    assert "-0.80!" in out  # the minimum cosine, marked as a conflict without colour
    assert "50%" in out  # two of four records in conflict
    assert (
        "» a and b conflict in 50% of the 4 records where the cosine is defined, from step 10"
        in out
    )
    assert result.stderr == ""


def test_report_json_is_one_strict_document_on_stdout(runner: CliRunner, run_log: Path) -> None:
    result = invoke(runner, "report", run_log, "--json")
    assert result.exit_code == 0, result.output
    doc = strict_json(result.stdout)
    assert doc["schema_version"] == 1 and doc["command"] == "report"
    assert doc["losses"] == ["a", "b"]
    (pair,) = doc["pairs"]
    assert pair["first_conflict_step"] == 10
    assert pair["conflict_fraction"] == pytest.approx(0.5)
    assert doc["series"]["steps"] == [0, 10, 20, 30]


def test_report_output_file_matches_stdout(
    runner: CliRunner, run_log: Path, tmp_path: Path
) -> None:
    out = tmp_path / "timeline.json"
    result = invoke(runner, "report", run_log, "--json", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == result.stdout


def test_report_plot_writes_the_four_figures(
    runner: CliRunner, run_log: Path, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    folder = tmp_path / "figures"
    result = invoke(runner, "report", run_log, "--plot", folder)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["cosine_pairs.png", "grad_norms.png", "layer_conflict.png", "mgda_weights.png"]
    for path in folder.iterdir():
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        assert f"wrote {path}" in result.stderr


def test_report_on_a_truncated_run_warns_and_succeeds(runner: CliRunner, run_log: Path) -> None:
    with open(run_log, "a", encoding="utf-8") as fh:
        fh.write('{"schema_version":1,"kind":"gradtool.record","step":40,"los')
    result = invoke(runner, "report", run_log)
    assert result.exit_code == 0, result.output
    assert "Warning:" in result.stderr and "line 6" in result.stderr
    assert "truncated" in result.stderr
    assert "4 records" in result.stdout


def test_report_of_a_missing_file_is_one_error_line(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "report", tmp_path / "nope.jsonl")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: run log")
    assert "does not exist" in result.stderr and "Hint:" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_report_of_another_schema_version_is_a_clear_error(
    runner: CliRunner, tmp_path: Path
) -> None:
    doc = json.loads(conflict_run()[0].to_json())
    doc["schema_version"] = 2
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    result = invoke(runner, "report", path)
    assert result.exit_code == 1
    assert "schema_version 2" in result.stderr and "this gradtool reads 1" in result.stderr


def test_report_plot_onto_a_file_is_a_usage_error(runner: CliRunner, run_log: Path) -> None:
    result = invoke(runner, "report", run_log, "--plot", run_log)
    assert result.exit_code == 2
    assert "is a file" in result.stderr


def test_report_of_a_run_written_by_the_monitor(runner: CliRunner, tmp_path: Path) -> None:
    import torch

    import gradtool

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(16, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.jsonl"
    with gradtool.Monitor(path, every=2) as monitor:
        for _ in range(6):
            out = model(x)
            losses = {"up": -out[:, 0].mean(), "down": out[:, 0].mean() + out[:, 1].pow(2).mean()}
            monitor.step(model, losses)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    result = invoke(runner, "report", path, "--json")
    assert result.exit_code == 0, result.output
    doc = strict_json(result.stdout)
    assert doc["num_records"] == 3 and doc["series"]["steps"] == [0, 2, 4]
    assert doc["pairs"][0]["cos_start"] < 0  # "up" and "down" pull against each other


def test_inspect_plot_writes_the_snapshot_figure(runner: CliRunner, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "snapshot.png"
    result = invoke(runner, "inspect", MULTITASK, "--plot", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert "Gradient cosine" in result.stdout
    assert f"wrote {png}" in result.stderr


def test_inspect_plot_with_an_unknown_image_type_is_a_usage_error_before_any_work(
    runner: CliRunner,
    tmp_path: Path,
) -> None:
    result = invoke(runner, "inspect", tmp_path / "missing.py", "--plot", tmp_path / "figure.txt")
    assert result.exit_code == 2  # checked before the (missing) gradfile is even loaded
    assert "should end in one of .png" in result.stderr


def test_inspect_plot_into_a_missing_folder_is_a_usage_error(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = invoke(runner, "inspect", MULTITASK, "--plot", tmp_path / "no" / "f.png")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
