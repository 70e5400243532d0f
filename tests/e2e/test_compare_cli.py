"""`gradtool pareto --method/--compare/--preference` through the CLI. The comparison itself:
tests/unit/analysis/test_compare.py."""

from __future__ import annotations

import json
import math

import pytest
from _models import MULTITASK, invoke, strict_json
from typer.testing import CliRunner

from gradtool.analysis import ParetoOptions
from gradtool.api import InspectRequest, run_gradfile
from gradtool.weightings import WEIGHTINGS


def test_cli_compare_prints_one_table_with_every_method(runner: CliRunner) -> None:
    result = invoke(runner, "pareto", MULTITASK, "--compare")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Weighting methods" in out
    for name in WEIGHTINGS:
        assert f"\n {name} " in out
    assert "lowers" in out and "yes" in out and "no" in out


def test_cli_method_list_json_has_one_entry_per_method(runner: CliRunner) -> None:
    result = invoke(runner, "pareto", MULTITASK, "--method", "mgda,mean,imtl-g", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert [m["method"] for m in body["methods"]] == ["mgda", "mean", "imtl_g"]
    assert body["pareto"]["method"] == "mgda"
    mean = body["methods"][1]
    # The multitask sample's depth and normals conflict: the mean raises normals.
    assert mean["directional_derivatives"]["normals"] < 0 and mean["decreases_all"] is False
    assert body["methods"][0]["decreases_all"] is True
    assert (
        "to first order mean raises normals; the 2 other methods lower every loss"
        in (body["verdict"])
    )
    for m in body["methods"]:
        assert all(c is None or -1 <= c <= 1 for c in m["cosine"].values())
        assert math.isfinite(m["norm"])


def test_cli_default_pareto_still_lists_mgda_alone(runner: CliRunner) -> None:
    report = run_gradfile(InspectRequest(MULTITASK, command="pareto", pareto=ParetoOptions()))
    assert report.methods is not None and [m.method for m in report.methods] == ["mgda"]
    result = invoke(runner, "pareto", MULTITASK)
    assert result.exit_code == 0 and "Weighting methods" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "mgda,nope"], "unknown method 'nope'"),
        (["--preference", "1,1,1"], "none of --method mgda takes one"),
        (["--method", "upgrad", "--preference", "1,x"], "comma-separated numbers"),
        (["--method", "upgrad", "--preference", "1,-1,1"], "positive"),
        (["--method", "upgrad", "--preference", "1,1"], "2 values but there are 3 losses"),
    ],
)
def test_cli_bad_method_or_preference_exits_2(
    runner: CliRunner, args: list[str], message: str
) -> None:
    result = invoke(runner, "pareto", MULTITASK, *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_compare_shows_each_methods_certificate(runner: CliRunner) -> None:
    result = invoke(runner, "pareto", MULTITASK, "--compare", "--json")
    assert result.exit_code == 0, result.output
    doc = strict_json(result.stdout)
    for entry in doc["methods"]:
        assert entry["certified"] is True and 0 <= entry["residual"] <= 1e-8, entry["method"]
    pcgrad = next(e for e in doc["methods"] if e["method"] == "pcgrad")
    assert set(pcgrad["diagnostics"]["removed"]) == set(doc["losses"])
    table = invoke(runner, "pareto", MULTITASK, "--compare").stdout
    assert "resid." in table and "pcgrad's projections removed" in table
