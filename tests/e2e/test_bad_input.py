"""Bad input through the command line: a model on the meta device, empty, truncated or wrong
checkpoints, a model's output returned as losses, a `--params` glob matching nothing. Each is one
`Error:` line and a `Hint:` line with the right exit code, never a traceback; an exception in the
user's code shows the user's frames (the gradfile and modules next to it), not torch's. And what
works: save_pretrained folders with tied weights, lazily imported sibling modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _models import HEADER, LOSSES, ROOT, invoke
from torch import nn
from typer.testing import CliRunner, Result

save_file = pytest.importorskip("safetensors.torch").save_file

LINEAR = HEADER + "model = nn.Linear(3, 1)\n" + LOSSES
GOOD_STATE = {"weight": torch.full((1, 3), 0.5), "bias": torch.tensor([1.0])}


def assert_one_error(result: Result, code: int) -> tuple[str, str]:
    """Return the (Error, Hint) lines of a clean failure: its exit code, nothing on stdout, no
    traceback, exactly one line of each."""
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    hints = [line for line in result.stderr.splitlines() if line.startswith("Hint:")]
    assert len(errors) == 1 and len(hints) == 1, result.stderr
    return errors[0], hints[0]


def whole_then_cut(path: Path, save: Callable[[Path], None], keep: int) -> Path:
    whole = path.with_name("whole" + path.suffix)
    save(whole)
    data = whole.read_bytes()
    path.write_bytes(data[:keep])  # a negative `keep` cuts from the end
    return path


def make_checkpoint(tmp_path: Path, case: str) -> Path:
    """Write the bad checkpoint `case` into tmp_path; return its path."""
    if case == "empty-file":
        (path := tmp_path / "empty.pt").touch()
    elif case == "truncated-torch-save":
        path = whole_then_cut(tmp_path / "cut.pt", lambda p: torch.save(GOOD_STATE, p), 200)
    elif case == "truncated-safetensors":
        path = whole_then_cut(tmp_path / "cut.safetensors", lambda p: save_file(GOOD_STATE, p), -5)
    elif case == "non-string-keys":
        torch.save({0: torch.ones(1, 3), 1: torch.ones(1)}, path := tmp_path / "ints.pt")
    elif case == "a-tensor":
        torch.save(torch.ones(1, 3), path := tmp_path / "tensor.pt")
    elif case == "shapes-differ":
        torch.save({"weight": torch.ones(2, 3), "bias": torch.ones(2)}, path := tmp_path / "w.pt")
    elif case == "meta-values":
        meta = {k: torch.empty(v.shape, device="meta") for k, v in GOOD_STATE.items()}
        torch.save(meta, path := tmp_path / "meta.pt")
    elif case == "missing-keys":
        torch.save({"weight": torch.ones(1, 3)}, path := tmp_path / "half.pt")
    elif case == "whole-module":
        torch.save(nn.Linear(3, 1), path := tmp_path / "module.pt")
    elif case == "folder-without-weights":
        (path := tmp_path / "folder").mkdir()
        (path / "config.json").write_text("{}")
    else:
        raise AssertionError(case)
    return path


CHECKPOINTS = {
    "empty-file": "is empty (0 bytes)",
    "truncated-torch-save": "is truncated",
    "truncated-safetensors": "cannot read checkpoint",
    "non-string-keys": "has a key 0 (int) that is not a string",
    "a-tensor": "holds a single tensor, not a state dict",
    "shapes-differ": "weight: (2, 3) in the checkpoint, (1, 3) in the model",
    "meta-values": "holds tensors on the meta device",
    "missing-keys": "1 of the model's 2 tensors are not in it: bias",
    "whole-module": "holds a pickled torch.nn.modules.linear.Linear object",
    "folder-without-weights": "holds no weights file",
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_bad_checkpoint_is_one_error_line_and_exit_1(
    runner: CliRunner, write_gradfile, tmp_path: Path, case: str
) -> None:
    gradfile = write_gradfile(LINEAR)
    out = tmp_path / "out.json"
    out.write_text("{}")  # an earlier run's document: it must not pass for this run's
    result = invoke(
        runner,
        "inspect",
        gradfile,
        "--checkpoint",
        make_checkpoint(tmp_path, case),
        "--json",
        "-o",
        out,
    )
    error, _ = assert_one_error(result, 1)
    assert CHECKPOINTS[case] in error, error
    assert not out.exists()


def test_a_model_on_the_meta_device_says_how_to_fix_it(runner: CliRunner, write_gradfile) -> None:
    gradfile = write_gradfile(
        HEADER + "with torch.device('meta'):\n    model = nn.Linear(3, 1)\n" + LOSSES
    )
    error, hint = assert_one_error(invoke(runner, "inspect", gradfile), 1)
    assert "is on the meta device" in error and "weight, bias" in error
    assert "to_empty" in hint and "--checkpoint" in hint


def test_a_meta_model_with_a_checkpoint_is_analysed(
    runner: CliRunner, write_gradfile, tmp_path: Path
) -> None:
    gradfile = write_gradfile(
        HEADER + "with torch.device('meta'):\n    model = nn.Linear(3, 1)\n" + LOSSES
    )
    save_file(GOOD_STATE, tmp_path / "model.safetensors")
    result = invoke(runner, "inspect", gradfile, "--checkpoint", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["loss_values"]["mean"] == pytest.approx(2.5)


MODEL_OUTPUT = """
class CausalLMOutput(OrderedDict):
    pass
def losses(model):
    y = model(torch.ones(4, 3))
    return CausalLMOutput(loss=y.pow(2).mean(), logits=y)
"""


def test_returning_a_model_output_hints_to_return_its_loss(
    runner: CliRunner, write_gradfile
) -> None:
    gradfile = write_gradfile(
        "from collections import OrderedDict\n"
        + HEADER
        + "model = nn.Linear(3, 1)\n"
        + MODEL_OUTPUT
    )
    error, hint = assert_one_error(invoke(runner, "inspect", gradfile), 1)
    assert "losses returned a CausalLMOutput (a model's output)" in error
    assert "return its `.loss`" in hint


def test_params_matching_nothing_suggests_the_closest_module_paths(
    runner: CliRunner, write_gradfile
) -> None:
    gradfile = write_gradfile(
        HEADER
        + "model = nn.Sequential()\n"
        + "model.add_module('encoder', nn.Sequential(nn.Linear(3, 3), nn.Tanh()))\n"
        + "model.add_module('head', nn.Linear(3, 1))\n"
        + LOSSES
    )
    error, hint = assert_one_error(invoke(runner, "inspect", gradfile, "--params", "encodr.*"), 2)
    assert "--params encodr.*" in error and "matched none of the 4 parameters" in error
    assert "did you mean 'encoder.*'" in hint
    error, hint = assert_one_error(invoke(runner, "inspect", gradfile, "--params", "weight"), 2)
    assert "'*.weight'" in hint  # globs are anchored


TIED_LM = """
class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.norm = nn.LayerNorm(3)
        self.norm.requires_grad_(False)
    def forward(self, ids):
        return self.head(self.norm(self.embed(ids)))
model = TiedLM
def losses(model):
    logits = model(torch.tensor([0, 1, 2, 3]))
    return {"lm": logits.logsumexp(-1).mean(), "first": -logits[:, 0].mean()}
"""


def test_a_save_pretrained_folder_with_a_tied_head_loads(
    runner: CliRunner, write_gradfile, tmp_path: Path
) -> None:
    gradfile = write_gradfile(HEADER + TIED_LM)
    folder = tmp_path / "pretrained"
    folder.mkdir()
    embed = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    state = {"embed.weight": embed, "norm.weight": torch.ones(3), "norm.bias": torch.zeros(3)}
    save_file({**state, "pooler.dense": torch.ones(2)}, folder / "model.safetensors")
    result = invoke(runner, "inspect", gradfile, "--checkpoint", folder, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["meta"]["tied_parameters"] == [["embed.weight", ["head.weight"]]]
    assert doc["meta"]["frozen_parameters"] == {"count": 2, "numel": 6}
    assert doc["meta"]["checkpoint"]["tied"] == ["head.weight"]
    assert "pooler.dense" in result.stderr  # the left-out key: a warning, not an error
    # independent: the loss of the loaded weights, computed here
    normed = nn.functional.layer_norm(embed[:4], (3,))
    logits = normed @ embed.T
    assert doc["loss_values"]["lm"] == pytest.approx(float(logits.logsumexp(-1).mean()), rel=1e-6)


def test_a_sibling_module_imported_inside_losses_is_found(
    runner: CliRunner, write_gradfile, tmp_path: Path
) -> None:
    helper = f"lazy_cli_{tmp_path.name.replace('-', '_')}"
    write_gradfile("def double(x):\n    return 2 * x\n", f"{helper}.py")
    gradfile = write_gradfile(
        HEADER
        + "model = nn.Linear(3, 1)\n"
        + "def losses(model):\n"
        + f"    from {helper} import double\n"
        + "    y = model(torch.ones(4, 3))\n"
        + "    return {'a': double(y).mean(), 'b': y.mean()}\n"
    )
    try:
        result = invoke(runner, "inspect", gradfile, "--json")
    finally:
        sys.modules.pop(helper, None)
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)["loss_values"]
    assert values["a"] == pytest.approx(2 * values["b"], rel=1e-12)


def test_an_exception_in_the_users_forward_shows_their_frames_not_torchs(tmp_path: Path) -> None:
    (tmp_path / "models.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.layer = nn.Linear(3, 2)\n"
        "    def forward(self, x):\n"
        "        return self.layer(x)  # in models.py\n"
    )
    gradfile = tmp_path / "train.py"
    gradfile.write_text(
        "import torch\n"
        "from models import Net\n"
        "model = Net\n"
        "def losses(model):\n"
        "    y = model(torch.ones(2, 5))  # in the gradfile\n"
        "    return {'a': y.mean(), 'b': y.pow(2).mean()}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GRADTOOL_DEBUG", "FORCE_COLOR")}
    done = subprocess.run(
        [sys.executable, "-m", "gradtool", "inspect", str(gradfile)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    frames = [ln.strip() for ln in done.stderr.splitlines() if ln.lstrip().startswith("File ")]
    assert len(frames) == 2, done.stderr
    assert frames[0].startswith(f'File "{gradfile}", line 5, in losses')
    assert frames[1].startswith(f'File "{tmp_path / "models.py"}", line 7, in forward')
    assert "torch/nn/modules" not in done.stderr and "gradtool/" not in done.stderr
    lines = done.stderr.splitlines()
    exception = next(i for i, ln in enumerate(lines) if ln.startswith("RuntimeError: mat1"))
    assert lines[exception + 1].startswith("Error: losses(model) raised RuntimeError")
