"""`--group NAME=GLOB` on inspect and pareto: a table and a JSON key per parameter group, and bad
input refused with one `Error:` line and a hint, exit 2 (before the gradfile runs where the text
alone shows it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _models import MULTITASK, invoke, strict_json
from typer.testing import CliRunner

GROUP_KEYS = {"name", "numel", "norms", "cosine", "dot", "parameters", "conflict"}


def _json(runner: CliRunner, *args: object) -> dict[str, Any]:
    result = invoke(runner, *args, "--json")
    assert result.exit_code == 0, result.output
    return strict_json(result.stdout)


def test_inspect_groups_in_the_json_document(runner: CliRunner) -> None:
    doc = _json(
        runner, "inspect", MULTITASK, "--group", "weights=*.weight", "--group", "trunk=trunk.*"
    )
    assert [g["name"] for g in doc["groups"]] == ["weights", "trunk"]
    for group in doc["groups"]:
        assert set(group) >= GROUP_KEYS
        assert set(group["norms"]) == set(doc["losses"])
    weights, trunk = doc["groups"]
    assert all(p.endswith(".weight") for p in weights["parameters"])
    assert len(weights["parameters"]) == 5
    assert trunk["parameters"] == [
        "trunk.0.weight",
        "trunk.0.bias",
        "trunk.2.weight",
        "trunk.2.bias",
    ]
    # the trunk group covers the same parameters as the two trunk layers: its Gramian is theirs
    layers = {x["name"]: x for x in doc["layers"]}
    for i, row in enumerate(trunk["dot"]):
        for j, value in enumerate(row):
            summed = layers["trunk.0"]["dot"][i][j] + layers["trunk.2"]["dot"][i][j]
            assert math.isclose(value, summed, rel_tol=1e-9, abs_tol=1e-15)
    assert doc["ungrouped"] == ["heads.depth.bias", "heads.segmentation.bias", "heads.normals.bias"]
    assert doc["meta"]["groups"] == {"weights": ["*.weight"], "trunk": ["trunk.*"]}


def test_no_group_no_key(runner: CliRunner) -> None:
    doc = _json(runner, "inspect", MULTITASK)
    assert "groups" not in doc and "ungrouped" not in doc


def test_repeating_a_name_adds_a_glob_to_its_group(runner: CliRunner) -> None:
    two = _json(runner, "inspect", MULTITASK, "--group", "t=trunk.0.*", "--group", "t=trunk.2.*")
    one = _json(runner, "inspect", MULTITASK, "--group", "t=trunk.*")
    (a,), (b,) = two["groups"], one["groups"]
    assert a["parameters"] == b["parameters"] and a["numel"] == b["numel"]
    assert two["meta"]["groups"] == {"t": ["trunk.0.*", "trunk.2.*"]}


def test_the_groups_table(runner: CliRunner) -> None:
    result = invoke(
        runner, "inspect", MULTITASK, "--group", "weights=*.weight", "--group", "trunk=trunk.*"
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Parameter groups" in out
    table = out[out.index("Parameter groups") : out.index("Unused parameters")]
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}
    assert rows["weights"][1:3] == ["5", "5,632"]
    assert rows["trunk"][1:3] == ["4", "5,248"]
    assert rows["all"][1:3] == ["10", "5,768"]
    assert "groups share parameters" in table
    assert "in no group: 3 of 10 parameter tensors" in table
    assert "-0.61!" in rows["trunk"]  # the trunk is where depth and normals conflict


def test_pareto_shows_the_groups_it_is_asked_for(runner: CliRunner) -> None:
    result = invoke(runner, "pareto", MULTITASK, "--group", "heads=heads.*")
    assert result.exit_code == 0, result.output
    assert "Parameter groups" in result.stdout
    assert "every one of the 10" not in result.stdout
    assert "in no group: 4 of 10 parameter tensors (trunk.0.*, trunk.2.*)" in result.stdout
    plain = invoke(runner, "pareto", MULTITASK)
    assert "Parameter groups" not in plain.stdout


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("trunk", "--group 'trunk' should be NAME=GLOB"),
        ("=trunk.*", "--group '=trunk.*' has no group name before '='"),
        ("trunk=", "--group 'trunk=' has no glob after '='"),
    ],
)
def test_malformed_group_is_refused_before_the_gradfile_runs(
    runner: CliRunner, write_gradfile: Callable[..., Path], tmp_path: Path, value: str, needle: str
) -> None:
    marker = tmp_path / "ran"
    gradfile = write_gradfile(
        f"""
        import pathlib
        import torch
        pathlib.Path({str(marker)!r}).write_text("ran")
        model = torch.nn.Linear(3, 1)
        def losses(model):
            y = model(torch.ones(2, 3))
            return {{"a": y.mean(), "b": (y ** 2).mean()}}
        """
    )
    result = invoke(runner, "inspect", gradfile, "--group", value)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["Error", "Hint"], lines
    assert lines[0] == f"Error: {needle}"
    assert result.stdout == ""
    assert not marker.exists()


def test_the_same_glob_twice_for_one_name_is_refused(runner: CliRunner) -> None:
    result = invoke(runner, "pareto", MULTITASK, "--group", "t=trunk.*", "--group", "t=trunk.*")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        "Error: --group 't=trunk.*' is given twice (the same glob again adds nothing)"
    )


def test_a_glob_matching_no_parameter_is_one_line_and_a_hint(runner: CliRunner) -> None:
    result = invoke(runner, "inspect", MULTITASK, "--group", "a=heads.*", "--group", "b=trunk")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (
        "Error: group 'b' (--group): the glob 'trunk' matched none of the 10 selected parameters"
    )
    assert lines[1].startswith("Hint: did you mean 'trunk.*'")
    assert len(lines) == 2 and result.stdout == ""


def test_groups_match_within_the_params_selection(runner: CliRunner) -> None:
    result = invoke(runner, "inspect", MULTITASK, "--params", "heads.*", "--group", "t=trunk.*")
    assert result.exit_code == 2
    assert "matched none of the 6 selected parameters" in result.stderr
    doc = _json(runner, "inspect", MULTITASK, "--params", "heads.*", "--group", "w=*.weight")
    assert doc["groups"][0]["parameters"] == [
        "heads.depth.weight",
        "heads.segmentation.weight",
        "heads.normals.weight",
    ]
