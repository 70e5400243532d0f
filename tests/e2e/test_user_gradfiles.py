"""Gradfiles as users write them: prints, sys.exit, argparse, odd names, Lightning checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from _models import HEADER, SAMPLES, invoke
from torch import nn


def test_prints_in_the_gradfile_go_to_stderr_so_json_stays_pure(runner, write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "print('loading config')\n"
        + "model = nn.Linear(3, 1)\n"
        + "def losses(model):\n"
        + "    print('computing losses')\n"
        + "    y = model(torch.ones(2, 3))\n"
        + "    return {'a': y.mean(), 'b': (y ** 2).mean()}\n"
    )
    result = invoke(runner, "pareto", path, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["command"] == "pareto"
    assert "loading config" in result.stderr and "computing losses" in result.stderr


def test_sys_exit_inside_losses_is_a_user_code_error(runner, write_gradfile) -> None:
    path = write_gradfile(
        "import sys\n" + HEADER + "model = nn.Linear(2, 1)\ndef losses(model):\n    sys.exit(0)\n"
    )
    result = invoke(runner, "inspect", path, "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "SystemExit" in result.stderr and "Error:" in result.stderr


def test_argparse_in_the_gradfile_sees_only_the_file(runner, write_gradfile) -> None:
    path = write_gradfile(
        "import argparse\n"
        + HEADER
        + "args = argparse.ArgumentParser().parse_args()\n"
        + "model = nn.Linear(2, 1)\n"
        + "def losses(model):\n"
        + "    y = model(torch.ones(2, 2))\n"
        + "    return {'a': y.mean(), 'b': y.pow(2).mean()}\n"
    )
    result = invoke(runner, "inspect", path, "--depth", "1", "--json")
    assert result.exit_code == 0, result.output


def test_empty_parameters_selection_names_parameters_as_the_cause(runner, write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.Linear(2, 1)\n"
        + "def parameters(model):\n    return []\n"
        + "def losses(model):\n    return {'a': model(torch.ones(1, 2)).sum()}\n"
    )
    result = invoke(runner, "inspect", path)
    assert result.exit_code == 1
    assert "parameters(model)" in result.stderr and "selected no parameter" in result.stderr


def test_model_class_needing_arguments_prints_no_empty_traceback(runner, write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "class Net(nn.Module):\n"
        + "    def __init__(self, width):\n        super().__init__()\n"
        + "model = Net\n"
        + "def losses(model):\n    return {}\n"
    )
    result = invoke(runner, "inspect", path)
    assert result.exit_code == 1
    assert "model() raised TypeError" in result.stderr
    assert "Traceback" not in result.stderr  # no frame of the user's to show: no empty header


def test_lightning_style_prefixed_checkpoint_loads(runner, write_gradfile, tmp_path: Path) -> None:
    path = write_gradfile(
        HEADER
        + "torch.manual_seed(0)\n"
        + "model = nn.Linear(2, 1)\n"
        + "def losses(model):\n"
        + "    y = model(torch.ones(3, 2))\n"
        + "    return {'a': y.mean(), 'b': y.pow(2).mean()}\n"
    )
    state = {f"model.{k}": torch.full_like(v, 0.5) for k, v in nn.Linear(2, 1).state_dict().items()}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, ckpt)
    result = invoke(runner, "inspect", path, "--checkpoint", ckpt, "--json")
    assert result.exit_code == 0, result.output
    # y = 0.5 * 2 + 0.5 = 1.5 for every row
    assert json.loads(result.stdout)["loss_values"]["a"] == 1.5


def test_loss_names_with_markup_are_shown_as_written(runner, write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.Linear(2, 1)\n"
        + "def losses(model):\n"
        + "    y = model(torch.ones(3, 2))\n"
        + "    return {'[red]x[/red]': y.mean(), 'b': -y.mean()}\n"
    )
    result = invoke(runner, "inspect", path)
    assert result.exit_code == 0
    assert "[red]x[/red]" in result.stdout


def test_layer_table_tells_a_zero_gradient_from_no_path(runner, write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.ModuleDict({'a': nn.Linear(2, 1), 'b': nn.Linear(2, 1)})\n"
        + "def losses(model):\n"
        + "    x = torch.ones(3, 2)\n"
        + "    return {'real': model['a'](x).pow(2).mean(), 'zero': 0.0 * model['a'](x).sum()}\n"
    )
    result = invoke(runner, "inspect", path, "--json")
    layers = {layer["name"]: layer for layer in json.loads(result.stdout)["layers"]}
    assert layers["a"]["reached"] == {"real": True, "zero": True}
    assert layers["a"]["norms"]["zero"] == 0.0
    assert layers["b"]["reached"] == {"real": False, "zero": False}
    table = invoke(runner, "inspect", path).stdout
    row_a = next(line for line in table.splitlines() if line.strip().startswith("a "))
    row_b = next(line for line in table.splitlines() if line.strip().startswith("b "))
    assert row_a.split()[-2:] != ["--", "--"] and " 0 " in f"{row_a} "
    assert row_b.split()[2:4] == ["--", "--"]


def test_trivial_stationarity_from_a_zero_gradient_loss_is_called_out(
    runner, write_gradfile
) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.ModuleDict({'a': nn.Linear(2, 1), 'b': nn.Linear(2, 1)})\n"
        + "def parameters(model):\n    return model['a'].named_parameters(prefix='a')\n"
        + "def losses(model):\n"
        + "    x = torch.ones(3, 2)\n"
        + "    return {'main': model['a'](x).pow(2).mean(), 'aux': model['b'](x).pow(2).mean()}\n"
    )
    result = invoke(runner, "pareto", path, "--json")
    doc = json.loads(result.stdout)
    assert doc["pareto"]["stationary"] is True
    assert any("only trivially: aux" in line for line in doc["verdict"])


def test_complex_loss_is_an_error_naming_it(runner, write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.Linear(2, 1)\n"
        + "def losses(model):\n"
        + "    y = model(torch.ones(3, 2)).mean()\n"
        + "    return {'a': y, 'phase': y * (1 + 1j)}\n"
    )
    result = invoke(runner, "inspect", path)
    assert result.exit_code == 1
    assert "loss 'phase' should be a real floating-point tensor" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_error_inside_the_backward_is_one_line_naming_the_loss(runner, write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.Linear(2, 2)\n"
        + "def losses(model):\n"
        + "    y = torch.sigmoid(model(torch.ones(3, 2)))\n"
        + "    z = y.sum()\n"
        + "    y.mul_(2)  # modifies a tensor sigmoid's backward needs\n"
        + "    return {'a': z, 'b': y.mean()}\n"
    )
    result = invoke(runner, "inspect", path, "--json")
    assert result.exit_code == 1
    assert "differentiating loss 'a' failed" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_output_path_equal_to_the_gradfile_is_refused(runner, write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(2, 1)\ndef losses(model):\n    return {}\n")
    before = path.read_text()
    result = invoke(runner, "inspect", path, "-o", path)
    assert result.exit_code == 2
    assert path.read_text() == before


def test_output_file_is_readable_like_any_new_file(runner, tmp_path: Path) -> None:
    import os
    import stat

    out = tmp_path / "report.json"
    result = invoke(runner, "inspect", SAMPLES / "actor_critic.py", "-o", out)
    assert result.exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
