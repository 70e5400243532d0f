"""Every usage error is one `Error:` line and a `Hint:` line, exit 2: the command line's own
(typer's: a value out of range, an unknown option, a missing argument) and gradtool's."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _models import MULTITASK, ROOT, invoke
from typer.testing import CliRunner

CASES = [
    (["inspect", MULTITASK, "--batches", "0"], "--batches"),
    (["inspect", MULTITASK, "--depth", "0"], "--depth"),
    (["inspect", MULTITASK, "--strategy", "bogus"], "--strategy"),
    (["inspect", MULTITASK, "--bogus"], "--bogus"),
    (["inspect"], "gradfile"),
    (["pareto", MULTITASK, "--method", "bogus"], "unknown method 'bogus'"),
    (["pareto", MULTITASK, "--method", ","], "no method given"),
    (["pareto", MULTITASK, "--preference", "1,1,1"], "none of --method mgda takes one"),
    (["pareto", MULTITASK, "--tol", "-1"], "--tol"),
    (["inspect", MULTITASK, "--conflict-threshold", "1.5"], "--conflict-threshold"),
]


@pytest.mark.parametrize(("args", "needle"), CASES)
def test_a_usage_error_is_one_error_line_and_a_hint(
    runner: CliRunner, args: list[object], needle: str
) -> None:
    result = invoke(runner, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["Error", "Hint"], lines
    assert needle in lines[0]
    assert "Traceback" not in result.output and "╭" not in result.output
    assert result.stdout == ""


def test_usage_errors_in_a_real_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gradtool", "inspect", str(MULTITASK), "--batches", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: Invalid value for '--batches'")
    assert "gradtool inspect --help lists the options" in proc.stderr


def test_help_and_version_still_exit_0(runner: CliRunner) -> None:
    assert invoke(runner, "--version").exit_code == 0
    result = invoke(runner, "inspect", "--help")
    assert result.exit_code == 0 and "--conflict-threshold" in result.stdout


def test_pareto_takes_a_plot_like_inspect(runner: CliRunner, tmp_path) -> None:
    out = tmp_path / "pareto.svg"
    result = invoke(runner, "pareto", MULTITASK, "--plot", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"<?xml")


def test_report_plot_into_an_impossible_folder_fails_before_the_tables(
    runner: CliRunner, tmp_path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = ROOT / "docs" / "runs" / "multitask.jsonl"
    result = invoke(runner, "report", run, "--plot", blocker / "figs")
    assert result.exit_code == 2
    assert result.stdout == ""  # nothing printed before the error
    assert "cannot create the folder" in result.stderr


def test_an_option_missing_its_value_points_to_its_commands_help(runner: CliRunner) -> None:
    result = invoke(runner, "report", ROOT / "docs" / "runs" / "multitask.jsonl", "--run")
    assert result.exit_code == 2
    assert "Error: Option '--run' requires an argument." in result.stderr
    assert "Hint: gradtool report --help" in result.stderr
