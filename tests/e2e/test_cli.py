"""The `gradtool` command line: the JSON contract on every sample, the options, and for each bad
input a one-line error with a hint, the right exit code, no gradtool traceback, and no output file.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _models import (
    BATCH_LOSSES,
    CONTRACT_KEYS,
    HEADER,
    LOSSES,
    ROOT,
    SAMPLE_NAMES,
    SAMPLES,
    invoke,
    strict_json,
)
from typer.testing import CliRunner, Result

import gradtool
from gradtool.problem import LoadOptions, load_problem

GRADTOOL_DIR = str(Path(gradtool.__file__).resolve().parent)
PARETO_KEYS = (
    "method",
    "normalize",
    "weights",
    "min_norm",
    "directional_derivatives",
    "stationary",
)

LINEAR = HEADER + "model = nn.Linear(3, 1)\n"
GOOD = LINEAR + LOSSES


@pytest.fixture(autouse=True)
def _no_debug_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADTOOL_DEBUG", raising=False)


def run_json(runner: CliRunner, command: str, gradfile: Path, *options: object) -> dict[str, Any]:
    result = invoke(runner, command, gradfile, "--json", *options)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return strict_json(result.stdout)


def check_matrix(matrix: Any, m: int, *, nullable: bool = False) -> None:
    assert isinstance(matrix, list) and len(matrix) == m
    for row in matrix:
        assert isinstance(row, list) and len(row) == m
        for x in row:
            if x is None:
                assert nullable
            else:
                assert isinstance(x, (int, float)) and math.isfinite(x)


def check_contract(doc: dict[str, Any], command: str) -> None:
    """Assert `doc` has every fixed key of the JSON contract (DESIGN.md), with the right shapes."""
    for key in CONTRACT_KEYS:
        assert key in doc, key
    assert doc["schema_version"] == 1
    assert doc["command"] == command
    names = doc["losses"]
    m = len(names)
    assert m >= 1 and all(isinstance(n, str) for n in names)
    assert list(doc["loss_values"]) == names
    assert all(math.isfinite(v) for v in doc["loss_values"].values())
    assert isinstance(doc["num_batches"], int) and doc["num_batches"] >= 1
    assert set(doc["parameters"]) >= {"count", "numel"}
    assert doc["parameters"]["count"] >= 1
    assert doc["parameters"]["numel"] >= doc["parameters"]["count"]
    assert list(doc["gradients"]) == names
    for stats in doc["gradients"].values():
        assert set(stats) >= {"norm", "max_abs", "nonfinite"}
        assert stats["norm"] >= 0 and stats["max_abs"] >= 0
        assert stats["nonfinite"] == 0
    assert list(doc["unused"]) == names
    assert all(isinstance(p, str) for params in doc["unused"].values() for p in params)
    check_matrix(doc["dot"], m)
    for key in ("cosine", "angle_deg", "magnitude_similarity"):
        check_matrix(doc[key], m, nullable=True)
    for i in range(m):
        for j in range(m):
            assert doc["dot"][i][j] == pytest.approx(doc["dot"][j][i])
            c = doc["cosine"][i][j]
            assert c is None or -1.0 <= c <= 1.0
    assert doc["layers"]
    for layer in doc["layers"]:
        assert set(layer) >= {"name", "numel", "norms", "cosine"}
        assert isinstance(layer["name"], str) and layer["numel"] >= 1
        assert list(layer["norms"]) == names
        check_matrix(layer["cosine"], m, nullable=True)
    assert sum(layer["numel"] for layer in doc["layers"]) == doc["parameters"]["numel"]
    if doc["num_batches"] > 1:
        stats = doc["batch_stats"]
        for key in ("cosine_mean", "cosine_std", "conflict_fraction"):
            check_matrix(stats[key], m, nullable=True)
    else:
        assert "batch_stats" not in doc
    if command == "pareto":
        pareto = doc["pareto"]
        for key in PARETO_KEYS:
            assert key in pareto, key
        assert list(pareto["weights"]) == names
        assert all(w >= 0 for w in pareto["weights"].values())
        assert sum(pareto["weights"].values()) == pytest.approx(1.0, abs=1e-9)
        assert list(pareto["directional_derivatives"]) == names
        assert pareto["min_norm"] >= 0
        assert isinstance(pareto["stationary"], bool)
    else:
        assert "pareto" not in doc


def error_line(result: Result) -> str:
    """Return the one `Error:` line on stderr."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_no_output_file(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*.tmp"))


def assert_clean_failure(result: Result, code: int, out: Path) -> None:
    """An expected failure: its exit code, nothing on stdout, no traceback, no -o file left."""
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert_no_output_file(out)


def index(doc: dict[str, Any], name: str) -> int:
    return doc["losses"].index(name)


# --- the samples through `--json` --------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "pareto"])
@pytest.mark.parametrize("sample", SAMPLE_NAMES)
def test_every_sample_gives_one_json_document_with_the_contract_keys(
    runner: CliRunner, sample: str, command: str
) -> None:
    result = invoke(runner, command, SAMPLES / f"{sample}.py", "--json")
    assert result.exit_code == 0, result.output
    assert "Error" not in result.stderr and "Traceback" not in result.stderr
    check_contract(strict_json(result.stdout), command)


def test_multitask_losses_keep_their_order_and_depth_conflicts_with_normals(
    runner: CliRunner,
) -> None:
    doc = run_json(runner, "inspect", SAMPLES / "multitask.py")
    assert doc["losses"] == ["depth", "segmentation", "normals"]
    assert doc["cosine"][index(doc, "depth")][index(doc, "normals")] < 0
    assert doc["cosine"][index(doc, "normals")][index(doc, "depth")] < 0
    assert doc["angle_deg"][index(doc, "depth")][index(doc, "normals")] > 90


def test_checkpointed_reports_the_probe_head_unused_and_each_loss_missing_the_other_head(
    runner: CliRunner,
) -> None:
    doc = run_json(runner, "inspect", SAMPLES / "checkpointed.py")
    probe = {"probe.weight", "probe.bias"}
    for name in ("classification", "regression"):
        assert probe <= set(doc["unused"][name])
    assert {"regressor.weight", "regressor.bias"} <= set(doc["unused"]["classification"])
    assert {"classifier.weight", "classifier.bias"} <= set(doc["unused"]["regression"])
    assert not any(p.startswith("classifier.") for p in doc["unused"]["classification"])
    assert not any(
        p.startswith("stem.") or p.startswith("blocks.") for p in doc["unused"]["regression"]
    )
    assert set(doc["unreached"]) == probe


def test_actor_critic_analyses_only_the_actor(runner: CliRunner) -> None:
    doc = run_json(runner, "inspect", SAMPLES / "actor_critic.py", "--depth", "1")
    assert doc["parameters"]["count"] == 4
    assert [layer["name"] for layer in doc["layers"]] == ["actor"]


def test_batches_sample_has_eight_batches_and_conflicts_in_some_of_them(
    runner: CliRunner,
) -> None:
    doc = run_json(runner, "inspect", SAMPLES / "batches.py")
    assert doc["num_batches"] == 8
    fraction = doc["batch_stats"]["conflict_fraction"]
    assert 0 < fraction[0][1] < 1
    assert fraction[0][1] == fraction[1][0]
    assert fraction[0][0] == 0


def test_meta_sample_has_three_losses(runner: CliRunner) -> None:
    doc = run_json(runner, "pareto", SAMPLES / "meta.py")
    assert doc["losses"] == ["support", "query", "query_after_step"]
    assert len(doc["pareto"]["weights"]) == 3


def test_losses_are_reported_in_the_order_losses_returned_them(
    runner: CliRunner, write_gradfile
) -> None:
    path = write_gradfile(
        LINEAR
        + "def losses(model):\n"
        + "    y = model(torch.ones(4, 3))\n"
        + "    return {'zeta': y.mean(), 'alpha': (y ** 2).mean(), 'mid': y.sum()}\n"
    )
    doc = run_json(runner, "pareto", path)
    assert doc["losses"] == ["zeta", "alpha", "mid"]
    assert list(doc["loss_values"]) == ["zeta", "alpha", "mid"]
    assert list(doc["pareto"]["weights"]) == ["zeta", "alpha", "mid"]


def test_zero_gradient_gives_null_cosines_and_a_warning_on_stderr(
    runner: CliRunner, write_gradfile
) -> None:
    path = write_gradfile(
        LINEAR
        + "def losses(model):\n"
        + "    y = model(torch.ones(4, 3))\n"
        + "    return {'live': y.mean(), 'flat': (model.bias * 0).sum()}\n"
    )
    result = invoke(runner, "inspect", path, "--json")
    assert result.exit_code == 0, result.output
    doc = strict_json(result.stdout)
    assert doc["cosine"][0][1] is None and doc["cosine"][1][1] is None
    assert doc["gradients"]["flat"]["norm"] == 0
    assert "Warning:" in result.stderr and "'flat'" in result.stderr


# --- options -----------------------------------------------------------------------------------


def test_output_file_holds_the_same_document_as_json_prints(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    result = invoke(runner, "pareto", SAMPLES / "multitask.py", "--json", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_text() == result.stdout
    check_contract(strict_json(out.read_text()), "pareto")
    assert not list(tmp_path.glob(".report.json.*.tmp"))


def test_output_without_json_prints_tables_and_writes_the_file(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    result = invoke(runner, "inspect", SAMPLES / "multitask.py", "--output", out)
    assert result.exit_code == 0, result.output
    assert "Losses" in result.stdout and "segmentation" in result.stdout
    check_contract(strict_json(out.read_text()), "inspect")
    assert "wrote" in result.stderr


def test_output_overwrites_an_existing_file(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    out.write_text("old")
    assert invoke(runner, "inspect", SAMPLES / "meta.py", "--json", "-o", out).exit_code == 0
    check_contract(strict_json(out.read_text()), "inspect")


def test_params_glob_narrows_the_analysis_to_the_trunk(runner: CliRunner) -> None:
    doc = run_json(runner, "inspect", SAMPLES / "multitask.py", "--params", "trunk.*")
    assert doc["parameters"]["count"] == 4
    assert all(layer["name"].startswith("trunk.") for layer in doc["layers"])
    assert all(params == [] for params in doc["unused"].values())


def test_repeated_params_take_the_union(runner: CliRunner) -> None:
    doc = run_json(
        runner,
        "inspect",
        SAMPLES / "multitask.py",
        "--params",
        "trunk.0.*",
        "--params",
        "heads.depth.*",
    )
    assert [layer["name"] for layer in doc["layers"]] == ["trunk.0", "heads.depth"]
    assert doc["parameters"]["count"] == 4


@pytest.mark.parametrize("n", [1, 2])
def test_batches_option_caps_the_number_of_batches(runner: CliRunner, n: int) -> None:
    doc = run_json(runner, "inspect", SAMPLES / "batches.py", "--batches", n)
    assert doc["num_batches"] == n
    check_contract(doc, "inspect")  # batch_stats only with more than one batch
    assert ("batch_stats" in doc) == (n > 1)


def test_depth_one_groups_layers_by_top_level_module(runner: CliRunner) -> None:
    doc = run_json(runner, "inspect", SAMPLES / "multitask.py", "--depth", "1")
    assert [layer["name"] for layer in doc["layers"]] == ["trunk", "heads"]
    assert sum(layer["numel"] for layer in doc["layers"]) == doc["parameters"]["numel"]


def test_eval_option_runs_the_model_in_eval_mode(runner: CliRunner, write_gradfile) -> None:
    path = write_gradfile(
        LINEAR
        + "def losses(model):\n"
        + "    y = model(torch.ones(4, 3)).mean()\n"
        + "    return {'a': y ** 2 + 1, 'mode': y * (2.0 if model.training else 1.0) + 5}\n"
    )
    train = run_json(runner, "inspect", path)
    evaluated = run_json(runner, "inspect", path, "--eval")
    assert evaluated["meta"]["eval_mode"] is True
    assert evaluated["loss_values"]["a"] == train["loss_values"]["a"]
    assert evaluated["loss_values"]["mode"] != train["loss_values"]["mode"]


def without_meta(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "meta"}


def test_seed_is_accepted_and_changes_nothing_for_a_fixed_initialisation(
    runner: CliRunner,
) -> None:
    plain = run_json(runner, "pareto", SAMPLES / "multitask.py")
    seeded = run_json(runner, "pareto", SAMPLES / "multitask.py", "--seed", "123")
    assert seeded["meta"]["seed"] == 123
    assert without_meta(seeded) == without_meta(plain)


def test_seed_makes_a_seed_dependent_sample_reproducible(runner: CliRunner) -> None:
    first = run_json(runner, "inspect", SAMPLES / "meta.py", "--seed", "5")
    again = run_json(runner, "inspect", SAMPLES / "meta.py", "--seed", "5")
    other = run_json(runner, "inspect", SAMPLES / "meta.py", "--seed", "6")
    assert without_meta(first) == without_meta(again)
    assert first["loss_values"] != other["loss_values"]


def test_checkpoint_of_the_samples_own_model_round_trips(runner: CliRunner, tmp_path: Path) -> None:
    sample = SAMPLES / "meta.py"  # its initialisation depends on the seed
    ckpt = tmp_path / "model.pt"
    # the CLI seeds with 0 by default; a library caller asks for it
    torch.save(load_problem(sample, LoadOptions(seed=0)).model.state_dict(), ckpt)
    plain = run_json(runner, "inspect", sample)
    restored = run_json(runner, "inspect", sample, "--seed", "9", "--checkpoint", ckpt)
    assert restored["loss_values"] == pytest.approx(plain["loss_values"], rel=1e-12)
    for row, expected in zip(restored["dot"], plain["dot"], strict=True):
        assert row == pytest.approx(expected, rel=1e-9)


def test_perturbed_checkpoint_changes_the_loss_values(runner: CliRunner, tmp_path: Path) -> None:
    sample = SAMPLES / "multitask.py"
    state = load_problem(sample).model.state_dict()
    ckpt = tmp_path / "perturbed.pt"
    torch.save({k: v + 0.05 for k, v in state.items()}, ckpt)
    plain = run_json(runner, "inspect", sample)
    perturbed = run_json(runner, "inspect", sample, "--checkpoint", ckpt)
    for name in plain["losses"]:
        assert perturbed["loss_values"][name] != pytest.approx(plain["loss_values"][name])


def test_tables_show_the_loss_names_and_the_conflict_verdict(runner: CliRunner) -> None:
    result = invoke(runner, "inspect", SAMPLES / "multitask.py")
    assert result.exit_code == 0, result.output
    for name in ("depth", "segmentation", "normals"):
        assert name in result.stdout
    assert "conflict" in result.stdout
    assert "Traceback" not in result.output
    assert not result.stdout.lstrip().startswith("{")


def test_pareto_tables_show_the_weights(runner: CliRunner) -> None:
    result = invoke(runner, "pareto", SAMPLES / "batches.py")
    assert result.exit_code == 0, result.output
    assert "Pareto" in result.stdout and "weight" in result.stdout
    assert "expert" in result.stdout and "crowd" in result.stdout


# --- bad gradfiles and bad data: exit 1 --------------------------------------------------------

RAISE_AT_IMPORT = HEADER + "\nraise RuntimeError('boom at import')  # here\n"
RAISE_IN_LOSSES = (
    LINEAR
    + "def helper(model):\n"
    + "    return model(torch.ones(2, 5))  # here\n"
    + "def losses(model):\n"
    + "    return {'a': helper(model).mean()}\n"
)
RAISE_IN_MODEL = HEADER + "def model():\n    raise ValueError('no model today')  # here\n" + LOSSES
RAISE_IN_BATCHES = (
    LINEAR + "def batches():\n    raise KeyError('no shard')  # here\n" + BATCH_LOSSES
)
RAISE_WHILE_ITERATING = (
    LINEAR
    + "def batches():\n"
    + "    yield torch.ones(4, 3)\n"
    + "    raise OSError('shard 2 unreadable')  # here\n"
    + BATCH_LOSSES
)
RAISE_IN_PARAMETERS = (
    GOOD + "def parameters(model):\n    return [('w', model.encoder.weight)]  # here\n"
)


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (RAISE_AT_IMPORT, ["RuntimeError: boom at import"]),
        (RAISE_IN_LOSSES, ["losses(model) raised RuntimeError"]),
        (RAISE_IN_MODEL, ["model() raised ValueError: no model today"]),
        (RAISE_IN_BATCHES, ["batches() raised KeyError"]),
        (RAISE_WHILE_ITERATING, ["`batches` raised OSError", "shard 2 unreadable"]),
        (RAISE_IN_PARAMETERS, ["parameters(model) raised AttributeError", "encoder"]),
    ],
    ids=["import", "losses", "model", "batches", "batches-iteration", "parameters"],
)
def test_exception_in_user_code_shows_the_users_frames_not_gradtools(
    runner: CliRunner, write_gradfile, tmp_path: Path, source: str, words: list[str]
) -> None:
    path = write_gradfile(source)
    out = tmp_path / "out.json"
    result = invoke(runner, "inspect", path, "--json", "-o", out)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert_no_output_file(out)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "# here" in text)
    assert result.stderr.count("Traceback (most recent call last):") == 1
    assert f'File "{path}", line {line}' in result.stderr
    assert GRADTOOL_DIR not in result.stderr
    assert "gradtool/loader.py" not in result.stderr
    assert "importlib" not in result.stderr
    message = error_line(result)
    for word in words:
        assert word in message
    assert result.stderr.index("Traceback") < result.stderr.index("Error:")


NOT_SCALAR = LINEAR + (
    "def losses(model):\n"
    "    y = model(torch.ones(2, 3))\n"
    "    return {'fine': y.mean(), 'vector': y.squeeze(-1)}\n"
)
DETACHED = {
    "item": "torch.tensor(y.mean().item())",
    "detach": "y.mean().detach()",
    "no_grad": "model(torch.ones(2, 3)).mean()",
}


def detached(expr: str, in_no_grad: bool) -> str:
    body = (
        "    with torch.no_grad():\n        frozen = " + expr + "\n"
        if in_no_grad
        else "    frozen = " + expr + "\n"
    )
    return LINEAR + (
        "def losses(model):\n    y = model(torch.ones(2, 3))\n"
        + body
        + "    return {'fine': y.mean(), 'frozen': frozen}\n"
    )


NAN_GRAD_SQRT = LINEAR + (
    "def losses(model):\n"
    "    y = model(torch.ones(4, 3)).mean()\n"
    "    return {'fine': y ** 2, 'kink': torch.sqrt(y - y)}\n"
)
NAN_GRAD_WHERE = LINEAR + (
    "def losses(model):\n"
    "    y = model(torch.ones(4, 3)).mean()\n"
    "    guarded = torch.where(y > 1e9, torch.log(y - y), torch.zeros(()))\n"
    "    return {'fine': y ** 2, 'kink': guarded}\n"
)


def one_loss_source(expr: str, name: str = "bad") -> str:
    return LINEAR + (
        "def losses(model):\n"
        "    y = model(torch.ones(2, 3))\n"
        f"    return {{'fine': y.mean(), '{name}': {expr}}}\n"
    )


BAD_DATA = {
    "not-scalar": (NOT_SCALAR, ["'vector'", "shape (2,)"], [".mean()"]),
    "detached-item": (
        detached(DETACHED["item"], False),
        ["'frozen'", "does not require grad"],
        [".item()", ".detach()", "no_grad"],
    ),
    "detached-detach": (
        detached(DETACHED["detach"], False),
        ["'frozen'", "does not require grad"],
        [".detach()"],
    ),
    "detached-no-grad": (
        detached(DETACHED["no_grad"], True),
        ["'frozen'", "does not require grad"],
        ["no_grad"],
    ),
    "python-float": (one_loss_source("y.mean().item()"), ["'bad'", "float"], [".item()"]),
    "empty-mapping": (LINEAR + "def losses(model):\n    return {}\n", ["empty mapping"], []),
    "not-a-mapping": (
        LINEAR + "def losses(model):\n    return [model(torch.ones(2, 3)).mean()]\n",
        ["mapping", "found list"],
        [],
    ),
    "infinite-value": (
        one_loss_source("y.mean() / 0.0", "exploded"),
        ["'exploded'", "not finite"],
        [],
    ),
    "nan-value": (
        one_loss_source("y.mean() * float('nan')", "undefined"),
        ["'undefined'", "not finite"],
        [],
    ),
    "names-change": (
        LINEAR
        + "batches = [0, 1]\n"
        + "def losses(model, batch):\n"
        + "    y = model(torch.ones(2, 3)).mean()\n"
        + "    return {'a': y, 'b': 2 * y} if batch == 0 else {'a': y, 'c': 2 * y}\n",
        ["['a', 'c']", "['a', 'b']"],
        ["same loss names"],
    ),
    "nan-gradient-sqrt": (NAN_GRAD_SQRT, ["'kink'", "non-finite", "weight", "bias"], ["log(0)"]),
    "nan-gradient-where": (NAN_GRAD_WHERE, ["'kink'", "non-finite", "weight", "bias"], []),
    "missing-file": (None, ["absent.py", "does not exist"], ["`model`", "`losses"]),
    "not-python": ("model = 1\n", ["should be a Python file ending in .py"], []),
    "syntax-error": ("import torch\nx = 1\ndef f(:\n    pass\n", ["syntax error", "line 3"], []),
    "model-missing": (
        HEADER + "net = nn.Linear(3, 1)\n" + LOSSES,
        ["could not find `model`", "Found: net, losses"],
        ["`model` and `losses(model)`"],
    ),
    "losses-missing": (
        LINEAR + "def loss(model):\n    return {}\n",
        ["could not find `losses`", "Found: model, loss"],
        ["`losses(model)`"],
    ),
    "model-not-a-module": (HEADER + "model = 42\n" + LOSSES, ["`model`", "nn.Module", "int"], []),
    "losses-not-callable": (LINEAR + "losses = {'a': 1}\n", ["`losses`", "function", "dict"], []),
    "arity-batches": (
        LINEAR + "batches = [torch.ones(4, 3)]\n" + LOSSES,
        ["losses(model, batch)", "`batches`", "found losses(model)"],
        [],
    ),
    "arity-no-batches": (
        GOOD.replace("def losses(model)", "def losses(model, batch)"),
        ["losses(model)", "found losses(model, batch)"],
        [],
    ),
    "empty-batches": (
        LINEAR + "batches = []\n" + BATCH_LOSSES,
        ["`batches` produced no batch"],
        ["empty"],
    ),
    "batches-not-iterable": (
        LINEAR + "batches = 3\n" + BATCH_LOSSES,
        ["`batches`", "found int"],
        [],
    ),
    "parameters-none": (
        GOOD + "def parameters(model):\n    return None\n",
        ["parameters(model)", "found NoneType"],
        ["named_parameters"],
    ),
    "parameters-strings": (
        GOOD + "def parameters(model):\n    return ['weight', 'bias']\n",
        ["(name, Parameter)", "'weight'"],
        [],
    ),
    "parameters-foreign": (
        GOOD + "def parameters(model):\n    return [torch.ones(3, requires_grad=True)]\n",
        ["not a parameter of the model"],
        ["(name, parameter)"],
    ),
    "all-frozen": (
        HEADER + "model = nn.Linear(3, 1).requires_grad_(False)\n" + LOSSES,
        ["no parameter to analyse"],
        [],
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_gradfile_or_data_is_exit_1_with_a_one_line_error_and_a_hint(
    runner: CliRunner, write_gradfile, tmp_path: Path, case: str
) -> None:
    source, words, hints = BAD_DATA[case]
    if source is None:
        path = tmp_path / "absent.py"
    else:
        path = write_gradfile(source, "notes.txt" if case == "not-python" else "gradfile.py")
    out = tmp_path / "out.json"
    for json_flag in ("--json", None):
        args = ["inspect", path, "-o", out] + ([json_flag] if json_flag else [])
        result = invoke(runner, *args)
        assert_clean_failure(result, 1, out)
        message = error_line(result)
        for word in words:
            assert word in message or word in result.stderr, word
        assert "Hint:" in result.stderr
        for hint in hints:
            assert hint in result.stderr, hint


def test_nonfinite_gradients_print_no_table_and_no_numbers(
    runner: CliRunner, write_gradfile
) -> None:
    path = write_gradfile(NAN_GRAD_SQRT)
    for command in ("inspect", "pareto"):
        result = invoke(runner, command, path)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert "nan" not in result.stderr.lower().replace("(nan or inf)", "")


@pytest.mark.parametrize("strategy", ["auto", "structured", "loop", "backward"])
def test_nonfinite_gradients_name_only_the_loss_that_has_them(
    runner: CliRunner, write_gradfile, strategy: str
) -> None:
    result = invoke(runner, "inspect", write_gradfile(NAN_GRAD_SQRT), "--strategy", strategy)
    assert result.exit_code == 1
    assert "'kink'" in error_line(result)
    assert "'fine'" not in error_line(result)


# --- bad usage: exit 2 -------------------------------------------------------------------------


@pytest.fixture
def good_gradfile(write_gradfile) -> Path:
    """A valid gradfile that leaves a marker next to itself when it is run."""
    return write_gradfile(
        "from pathlib import Path\nPath(__file__).with_name('ran.marker').touch()\n" + GOOD
    )


def assert_not_run(gradfile: Path) -> None:
    assert not gradfile.with_name("ran.marker").exists()


USAGE = {
    "params-match-nothing": (
        ["--params", "decoder.*"],
        ["decoder.*", "matched none"],
        ["weight, bias"],
    ),
    "batches-zero": (["--batches", "0"], ["--batches"], []),
    "depth-zero": (["--depth", "0"], ["--depth"], []),
    "unknown-device": (["--device", "toaster"], ["toaster"], ["cpu"]),
    "checkpoint-missing": (["--checkpoint", "{tmp}/none.pt"], ["none.pt", "does not exist"], []),
    "output-folder-missing": (["-o", "{tmp}/nowhere/out.json"], ["nowhere", "does not exist"], []),
    "output-is-a-folder": (["-o", "{tmp}"], ["is a directory"], []),
    "unknown-option": (["--bogus"], ["--bogus"], []),
    "unknown-strategy": (["--strategy", "fast"], ["--strategy"], []),
}


@pytest.mark.parametrize("case", list(USAGE))
def test_bad_usage_is_exit_2_with_a_clear_message(
    runner: CliRunner, good_gradfile: Path, tmp_path: Path, case: str
) -> None:
    options, words, hints = USAGE[case]
    options = [o.format(tmp=tmp_path) for o in options]
    out = tmp_path / "out.json"
    extra = [] if "-o" in options else ["-o", out]
    result = invoke(runner, "inspect", good_gradfile, "--json", *extra, *options)
    assert_clean_failure(result, 2, out)
    for word in words + hints:
        assert word in result.stderr, word
    if case != "params-match-nothing":
        assert_not_run(good_gradfile)  # checked before the file runs


def test_output_into_a_missing_folder_computes_nothing(
    runner: CliRunner, good_gradfile: Path, tmp_path: Path
) -> None:
    out = tmp_path / "nowhere" / "out.json"
    result = invoke(runner, "pareto", good_gradfile, "-o", out)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert_not_run(good_gradfile)
    assert not out.parent.exists()


def test_params_matching_nothing_lists_example_names(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = invoke(runner, "inspect", SAMPLES / "multitask.py", "--params", "decoder.*", "-o", out)
    assert_clean_failure(result, 2, out)
    assert "10 parameters" in error_line(result)
    assert "trunk.0.weight" in result.stderr and "'trunk.*'" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_exit_2(
    runner: CliRunner, good_gradfile: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.json"
    result = invoke(runner, "inspect", good_gradfile, "--device", "cuda", "-o", out)
    assert_clean_failure(result, 2, out)
    assert "CUDA is not available" in error_line(result)
    assert "--device cpu" in result.stderr
    assert_not_run(good_gradfile)


def test_checkpoint_with_wrong_keys_is_exit_1(
    runner: CliRunner, good_gradfile: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.ones(2)}, ckpt)
    out = tmp_path / "out.json"
    result = invoke(runner, "inspect", good_gradfile, "--checkpoint", ckpt, "-o", out)
    assert_clean_failure(result, 1, out)
    assert "does not fit the model" in error_line(result)
    assert "encoder.weight" in error_line(result)
    assert "state_dict" in result.stderr


def test_unknown_pareto_normalisation_is_exit_2(runner: CliRunner, good_gradfile: Path) -> None:
    result = invoke(runner, "pareto", good_gradfile, "--normalize", "max")
    assert result.exit_code == 2
    assert "--normalize" in result.stderr
    assert_not_run(good_gradfile)


def test_missing_gradfile_argument_and_unknown_command_are_exit_2(runner: CliRunner) -> None:
    missing = invoke(runner, "inspect")
    assert missing.exit_code == 2 and "Missing argument" in missing.stderr
    unknown = invoke(runner, "frobnicate", SAMPLES / "multitask.py")
    assert unknown.exit_code == 2 and "frobnicate" in unknown.stderr


# --- real processes ----------------------------------------------------------------------------


def run_process(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("GRADTOOL_DEBUG", "FORCE_COLOR")}
    environ.update(env)
    return subprocess.run(
        list(args), capture_output=True, text=True, cwd=ROOT, env=environ, timeout=120, check=False
    )


def entry_point() -> str:
    found = Path(sys.executable).parent / "gradtool"
    return str(found) if found.exists() else str(shutil.which("gradtool"))


def test_version_as_a_module_process() -> None:
    proc = run_process(sys.executable, "-m", "gradtool", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"gradtool {gradtool.__version__}"


def test_help_through_the_entry_point() -> None:
    proc = run_process(entry_point(), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "inspect" in proc.stdout and "pareto" in proc.stdout


def test_help_and_version_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from gradtool.cli import app\n"
        "for args in (['--help'], ['--version'], ['inspect', '--help']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), exc.code\n"
        "print('torch' in sys.modules)\n"
    )
    proc = run_process(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("command", ["inspect", "pareto"])
def test_json_process_prints_pure_json(command: str) -> None:
    proc = run_process(entry_point(), command, "samples/multitask.py", "--json")
    assert proc.returncode == 0, proc.stderr
    check_contract(strict_json(proc.stdout), command)
    assert "Traceback" not in proc.stderr


def test_no_color_process_output_has_no_ansi_escapes() -> None:
    proc = run_process(
        sys.executable, "-m", "gradtool", "pareto", "samples/multitask.py", NO_COLOR="1"
    )
    assert proc.returncode == 0, proc.stderr
    assert "conflict" in proc.stdout
    assert "\x1b" not in proc.stdout and "\x1b" not in proc.stderr


def test_error_process_exits_1_with_the_users_traceback_only(write_gradfile) -> None:
    path = write_gradfile(RAISE_IN_LOSSES)
    proc = run_process(sys.executable, "-m", "gradtool", "inspect", str(path), NO_COLOR="1")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("Traceback") == 1
    assert str(path) in proc.stderr and GRADTOOL_DIR not in proc.stderr
    assert "Error: losses(model) raised RuntimeError" in proc.stderr
    assert "\x1b" not in proc.stderr


def test_failed_run_removes_an_earlier_document_at_the_output_path(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    ok = invoke(runner, "inspect", str(SAMPLES / "multitask.py"), "-o", str(out))
    assert ok.exit_code == 0 and strict_json(out.read_text())["command"] == "inspect"
    failed = invoke(
        runner, "inspect", str(SAMPLES / "multitask.py"), "--params", "zz*", "-o", str(out)
    )
    assert failed.exit_code == 2
    assert not out.exists(), "a stale document from the earlier run was left at -o PATH"
    assert "removed the earlier" in failed.stderr
