"""Through the CLI: conflicts reported only when material (`--conflict-threshold`), the JSON
stating the threshold beside the raw numbers, near-convergence with `--tol`, and names from a
gradfile or a run log printed inert (no escape sequence reaches the terminal)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _models import MULTITASK, ROOT, invoke, strict_json
from _runlog_samples import make_record, write_run
from typer.testing import CliRunner

BATCHES = ROOT / "samples" / "batches.py"

WEIRD_NAMES = """
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
x = torch.randn(16, 4)
NAMES = ["red\\x1b[31m", "cr\\r", "new\\nline", "tab\\t", "f ", "f", "[bold]g[/bold]"]


def losses(model):
    out = model(x)
    return {n: (out[:, k % 3] * (k + 1)).pow(2).mean() for k, n in enumerate(NAMES)}
"""
SHOWN = ["'red\\x1b[31m'", "'cr\\r'", "'new\\nline'", "'tab\\t'", "'f '", "[bold]g[/bold]"]


def test_cli_defaults_agree_with_the_library() -> None:
    from gradtool.analysis.report import DEFAULT_CONFLICT_THRESHOLD
    from gradtool.cli import options
    from gradtool.linalg.pareto import STATIONARY_TOL

    assert options.DEFAULT_CONFLICT_THRESHOLD == DEFAULT_CONFLICT_THRESHOLD
    assert options.DEFAULT_TOL == STATIONARY_TOL


def test_inspect_json_states_the_threshold_and_keeps_raw_cosines(runner: CliRunner) -> None:
    doc = strict_json(invoke(runner, "inspect", MULTITASK, "--json").stdout)
    assert doc["conflict_threshold"] == 0.05
    names = doc["losses"]
    d, s, n = (names.index(k) for k in ("depth", "segmentation", "normals"))
    assert doc["cosine"][d][n] < -0.05 and doc["conflict"][d][n] and doc["conflict"][n][d]
    trunk0 = next(layer for layer in doc["layers"] if layer["name"] == "trunk.0")
    # depth ~ segmentation in trunk.0: slightly negative, kept raw, not a conflict
    assert -0.05 < trunk0["cosine"][d][s] < 0 and not trunk0["conflict"][d][s]


def test_tables_mark_only_material_conflicts(runner: CliRunner) -> None:
    out = invoke(runner, "inspect", MULTITASK).stdout
    trunk0 = next(line for line in out.splitlines() if line.split()[:1] == ["trunk.0"])
    cells = trunk0.split()
    assert "-0.01" in cells and "-0.01!" not in cells and "-0.71!" in cells
    assert "» depth and normals conflict (cos -0.43, 115°)" in out


def test_batches_sample_states_the_standard_error_and_the_denominator(runner: CliRunner) -> None:
    doc = strict_json(invoke(runner, "inspect", BATCHES, "--json").stdout)
    stats = doc["batch_stats"]
    n, std, stderr = stats["defined"][0][1], stats["cosine_std"][0][1], stats["cosine_stderr"][0][1]
    # the population std of the contract, and the sample std (n - 1) in the standard error
    assert n == 8 and stderr == pytest.approx(std * math.sqrt(n / (n - 1)) / math.sqrt(n))
    assert not stats["conflict"][0][1]  # the mean is far above -0.05
    below = stats["below_threshold"][0][1]
    assert 0 < below < 8
    line = next(x for x in doc["verdict"] if "batches" in x)
    assert f"in {below} of the 8 batches where the cosine is defined" in line
    assert "no conflict on average" in line


def test_conflict_threshold_changes_what_is_a_conflict(runner: CliRunner) -> None:
    doc = strict_json(
        invoke(runner, "inspect", MULTITASK, "--conflict-threshold", "0.5", "--json").stdout
    )
    assert doc["conflict_threshold"] == 0.5
    assert not any(any(row) for row in doc["conflict"])  # -0.43 is above -0.5
    assert doc["verdict"][0].startswith("no pair of losses conflicts on the mean gradient")
    out = invoke(runner, "pareto", MULTITASK, "--conflict-threshold", "0").stdout
    assert "-0.43!" in out and "! and red: a conflict, cos < 0\n" in out


def test_report_conflict_threshold(runner: CliRunner) -> None:
    run = ROOT / "docs" / "runs" / "multitask.jsonl"
    default = strict_json(invoke(runner, "report", run, "--json").stdout)
    loose = strict_json(invoke(runner, "report", run, "--conflict-threshold", "0", "--json").stdout)
    assert default["conflict_threshold"] == 0.05 and loose["conflict_threshold"] == 0.0
    for a, b in zip(default["pairs"], loose["pairs"], strict=True):
        assert a["conflict_records"] <= b["conflict_records"]
        cosines = [c for c in default["series"]["cosine"][f"{a['a']}~{a['b']}"] if c is not None]
        assert a["conflict_records"] == sum(c < -0.05 for c in cosines)
        assert b["conflict_records"] == sum(c < 0 for c in cosines)
        assert a["defined_records"] == len(cosines)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("inspect", "--conflict-threshold", "1.5"), "--conflict-threshold"),
        (("inspect", "--conflict-threshold", "nan"), "--conflict-threshold"),
        (("pareto", "--conflict-threshold", "-0.1"), "--conflict-threshold"),
        (("pareto", "--tol", "-1"), "--tol"),
        (("pareto", "--tol", "inf"), "--tol"),
    ],
)
def test_bad_threshold_or_tol_exits_2_before_the_gradfile_runs(
    runner: CliRunner, write_gradfile, args: tuple[str, ...], flag: str
) -> None:
    marker = write_gradfile("").parent / "ran"
    path = write_gradfile(f"open({str(marker)!r}, 'w').close()\n")
    result = invoke(runner, args[0], path, *args[1:])
    assert result.exit_code == 2 and result.stdout == ""
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and flag in errors[0]
    assert not marker.exists()


def test_bad_threshold_for_report_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    run = ROOT / "docs" / "runs" / "multitask.jsonl"
    result = invoke(runner, "report", run, "--conflict-threshold", "2", "-o", tmp_path / "o.json")
    assert result.exit_code == 2 and "--conflict-threshold" in result.stderr
    assert not (tmp_path / "o.json").exists()


def test_pareto_tol_and_the_relative_min_norm(runner: CliRunner) -> None:
    doc = strict_json(invoke(runner, "pareto", MULTITASK, "--json").stdout)
    p = doc["pareto"]
    largest = max(g["norm"] for g in doc["gradients"].values())
    assert p["relative_min_norm"] == pytest.approx(p["min_norm"] / largest, rel=1e-9)
    assert p["tol"] == 1e-6 and p["stationary"] is False
    ratio = p["relative_min_norm"]
    loose = strict_json(
        invoke(runner, "pareto", MULTITASK, "--tol", str(ratio * 1.01), "--json").stdout
    )
    assert loose["pareto"]["stationary"] is True
    out = invoke(runner, "pareto", MULTITASK).stdout
    assert f"Pareto-stationary no (|d| / max_i |g_i| = {ratio:.3g} > tol 1e-06)" in out


def test_gradfile_names_are_printed_inert(runner: CliRunner, write_gradfile) -> None:
    path = write_gradfile(WEIRD_NAMES)
    for command in ("inspect", "pareto"):
        result = invoke(runner, command, path)
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert "\x1b" not in out and "\r" not in out and "\t" not in out
        for shown in SHOWN:
            assert shown in out, shown
        assert "new\nline" not in out
    doc = json.loads(invoke(runner, "inspect", path, "--json").stdout)
    assert doc["losses"][0] == "red\x1b[31m"  # the JSON keeps the names as they are


def test_run_log_names_and_metadata_are_printed_inert(runner: CliRunner, tmp_path: Path) -> None:
    records = []
    for k, c in enumerate([-0.5, 0.3, -0.2]):
        vectors = {"x\x1b[2J": [1.0, 0.0], "y ": [c, math.sqrt(1 - c * c)]}
        records.append(make_record(10 * k, vectors, layers={"trunk\r": vectors}))
    path = write_run(tmp_path / "run.jsonl", records)
    header, *rest = path.read_text(encoding="utf-8").splitlines()
    meta = json.loads(header)
    meta["metadata"] = {"note\x1b]0;title\x07": "v\x1b[5m"}
    path.write_text("\n".join([json.dumps(meta), *rest]) + "\n", encoding="utf-8")
    result = invoke(runner, "report", path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "'x\\x1b[2J' ~ 'y '" in out and "'trunk\\r'" in out
    assert "'note\\x1b]0;title\\x07' v\\x1b[5m" in out
