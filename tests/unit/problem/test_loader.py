"""The gradfile loader: each form the contract allows becomes the right `Problem`, and each
violation is an error of the right kind that says what was found and what was expected."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from _models import BATCH_LOSSES, HEADER, LOSSES, SAMPLE_NAMES, SAMPLES
from torch import nn

from gradtool.cli.errors import cli_option
from gradtool.engine import compute_gramians
from gradtool.errors import GradfileError, GradientError, LossError, UsageError, UserCodeError
from gradtool.problem import (
    LoadOptions,
    Problem,
    import_gradfile,
    load_problem,
    select_parameters,
    validate_losses,
)


def line_of(path: Path, marker: str) -> int:
    """Return the 1-based number of the first line of `path` containing `marker`."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if marker in line)


def names_of(problem: Problem) -> list[str]:
    return [n for n, _ in problem.parameters]


# --- model -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_source",
    [
        "model = nn.Linear(3, 2)",
        "class Net(nn.Linear):\n"
        "    def __init__(self):\n"
        "        super().__init__(3, 2)\n"
        "model = Net",
        "def model():\n    return nn.Linear(3, 2)",
    ],
    ids=["instance", "class", "function"],
)
def test_model_may_be_a_module_a_class_or_a_zero_argument_function(
    write_gradfile, model_source: str
) -> None:
    path = write_gradfile(HEADER + model_source + "\n" + LOSSES)
    problem = load_problem(path)
    assert isinstance(problem.model, nn.Linear)
    assert names_of(problem) == ["weight", "bias"]
    assert list(problem.evaluate(None)) == ["mean", "square"]


@pytest.mark.parametrize(
    ("model_source", "found"),
    [("model = 42", "int"), ("def model():\n    return {'net': nn.Linear(3, 2)}", "dict")],
    ids=["not-a-module", "function-returning-a-dict"],
)
def test_model_of_the_wrong_type_is_an_error_naming_the_type(
    write_gradfile, model_source: str, found: str
) -> None:
    path = write_gradfile(HEADER + model_source + "\n" + LOSSES)
    with pytest.raises(GradfileError, match=rf"nn\.Module.*found {found}"):
        load_problem(path)


def test_model_function_raising_is_a_user_code_error_with_the_users_frame(write_gradfile) -> None:
    path = write_gradfile(
        HEADER + "def model():\n    raise ValueError('no model today')  # here\n" + LOSSES
    )
    with pytest.raises(
        UserCodeError, match="model\\(\\) raised ValueError: no model today"
    ) as info:
        load_problem(path)
    assert f'File "{path}", line {line_of(path, "# here")}' in info.value.traceback
    assert "gradtool/loader.py" not in info.value.traceback


def test_each_load_runs_the_file_afresh(write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 2)\n" + LOSSES)
    first, second = load_problem(path), load_problem(path)
    assert first.model is not second.model


def test_seed_makes_a_class_built_model_reproducible(write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = lambda: nn.Linear(3, 2)\n" + LOSSES)
    a = load_problem(path, LoadOptions(seed=0)).model.weight
    b = load_problem(path, LoadOptions(seed=0)).model.weight
    c = load_problem(path, LoadOptions(seed=1)).model.weight
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_eval_option_puts_the_model_in_eval_mode(write_gradfile) -> None:
    path = write_gradfile(
        HEADER + "model = nn.Sequential(nn.Linear(3, 2), nn.Dropout())\n" + LOSSES
    )
    assert load_problem(path).model.training
    assert not load_problem(path, LoadOptions(eval_mode=True)).model.training


# --- losses ------------------------------------------------------------------------------------


def test_losses_that_is_not_callable_is_an_error_naming_the_type(write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 2)\nlosses = {'a': 1}\n")
    with pytest.raises(GradfileError, match=r"`losses` .* should be a function; found dict"):
        load_problem(path)


def test_losses_without_batch_argument_when_batches_exist_is_an_error(write_gradfile) -> None:
    path = write_gradfile(
        HEADER + "model = nn.Linear(3, 2)\nbatches = [torch.ones(4, 3)]\n" + LOSSES
    )
    with pytest.raises(GradfileError) as info:
        load_problem(path)
    assert "losses(model, batch)" in info.value.message
    assert "defines `batches`" in info.value.message
    assert "found losses(model)" in info.value.message


def test_losses_with_batch_argument_but_no_batches_is_an_error(write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 2)\n" + BATCH_LOSSES)
    with pytest.raises(GradfileError) as info:
        load_problem(path)
    assert "as losses(model)" in info.value.message
    assert "found losses(model, batch)" in info.value.message


def test_losses_with_a_defaulted_batch_argument_is_accepted_without_batches(
    write_gradfile,
) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.Linear(3, 2)\n"
        + "def losses(model, batch=None):\n"
        + "    return {'a': model(torch.ones(2, 3)).mean()}\n"
    )
    assert list(load_problem(path).evaluate(None)) == ["a"]


def test_validate_losses_keeps_the_order_they_were_returned_in() -> None:
    w = torch.ones(2, requires_grad=True)
    raw = {"zeta": w.sum(), "alpha": (w * 2).sum(), "mid": (w**2).sum()}
    assert list(validate_losses(raw)) == ["zeta", "alpha", "mid"]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda w: [w.sum()], ["mapping", "found list"]),
        (lambda w: {}, ["empty mapping"]),
        (lambda w: {1: w.sum()}, ["strings", "1", "int"]),
        (lambda w: {"plain": 3.0}, ["'plain'", "found float", ".item()"]),
        (lambda w: {"vector": w * 2}, ["'vector'", "shape (2,)", ".mean()"]),
        (lambda w: {"count": torch.tensor(3)}, ["'count'", "floating-point", "int64"]),
        (lambda w: {"frozen": w.sum().detach()}, ["'frozen'", "does not require grad", "detach"]),
        (lambda w: {"boom": w.sum() / 0.0}, ["'boom'", "not finite", "inf"]),
        (lambda w: {"nan": w.sum() * float("nan")}, ["'nan'", "not finite", "nan"]),
    ],
    ids=[
        "list",
        "empty",
        "non-string-name",
        "float",
        "vector",
        "integer",
        "detached",
        "infinite",
        "nan",
    ],
)
def test_invalid_losses_raise_a_loss_error_naming_the_problem(make, words: list[str]) -> None:
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(LossError) as info:
        validate_losses(make(w))
    text = info.value.message + " " + (info.value.hint or "")
    for word in words:
        assert word in text
    assert info.value.exit_code == 1


def test_loss_names_changing_between_batches_is_an_error(write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.Linear(3, 1)\n"
        + "batches = [0, 1]\n"
        + "def losses(model, batch):\n"
        + "    y = model(torch.ones(2, 3)).mean()\n"
        + "    return {'a': y, 'b': 2 * y} if batch == 0 else {'a': y, 'c': 2 * y}\n"
    )
    with pytest.raises(LossError, match=r"\['a', 'c'\].*\['a', 'b'\]"):
        compute_gramians(load_problem(path))


def test_losses_raising_is_a_user_code_error_with_the_users_frames(write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.Linear(3, 1)\n"
        + "def helper(model):\n"
        + "    return model(torch.ones(2, 5))  # here\n"
        + "def losses(model):\n"
        + "    return {'a': helper(model).mean()}\n"
    )
    problem = load_problem(path)
    with pytest.raises(UserCodeError, match=r"losses\(model\) raised RuntimeError") as info:
        problem.evaluate(None)
    trace = info.value.traceback
    frame = f'File "{path}", line {line_of(path, "# here")}, in helper'
    assert frame in trace
    assert "gradtool/" not in trace
    # raised inside torch (F.linear): the user's frames down to their last, then the exception
    assert "torch/" not in trace
    frames = [line for line in trace.splitlines() if line.lstrip().startswith("File ")]
    assert frames[-1].strip() == frame
    assert trace.rstrip().splitlines()[-1].startswith("RuntimeError: ")


def test_a_user_traceback_keeps_sibling_modules_and_drops_torch_internals(
    tmp_path: Path, write_gradfile
) -> None:
    models = f"models_{tmp_path.name.replace('-', '_')}"
    sibling = write_gradfile(
        "import torch\n"
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.inner = nn.Sequential(nn.Linear(3, 3), Block())\n"
        "    def forward(self, x):\n"
        "        return self.inner(x)  # outer\n"
        "class Block(nn.Module):\n"
        "    def forward(self, x):\n"
        "        raise ValueError('bad block')  # inner\n",
        f"{models}.py",
    )
    path = write_gradfile(
        HEADER
        + f"from {models} import Net\n"
        + "model = Net\n"
        + "def losses(model):\n"
        + "    y = model(torch.ones(2, 3))  # call\n"
        + "    return {'a': y.mean()}\n"
    )
    try:
        problem = load_problem(path)
        with pytest.raises(UserCodeError, match="ValueError: bad block") as info:
            problem.evaluate(None)
    finally:
        sys.modules.pop(models, None)
    trace = info.value.traceback
    frames = [line.strip() for line in trace.splitlines() if line.lstrip().startswith("File ")]
    assert frames == [
        f'File "{path}", line {line_of(path, "# call")}, in losses',
        f'File "{sibling}", line {line_of(sibling, "# outer")}, in forward',
        f'File "{sibling}", line {line_of(sibling, "# inner")}, in forward',
    ]
    assert "_call_impl" not in trace and "torch/nn/modules" not in trace


# --- batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batches_source",
    [
        "batches = [torch.ones(4, 3), torch.zeros(4, 3), torch.full((4, 3), 2.0)]",
        "def batches():\n    for v in (1.0, 0.0, 2.0):\n        yield torch.full((4, 3), v)",
        "batches = lambda: [torch.ones(4, 3), torch.zeros(4, 3), torch.full((4, 3), 2.0)]",
        "batches = (torch.full((4, 3), v) for v in (1.0, 0.0, 2.0))",
        "batches = torch.utils.data.DataLoader(torch.ones(12, 3), batch_size=4)",
    ],
    ids=["list", "generator-function", "callable", "generator", "dataloader"],
)
def test_batches_may_be_an_iterable_or_a_function_returning_one(
    write_gradfile, batches_source: str
) -> None:
    path = write_gradfile(
        HEADER + "model = nn.Linear(3, 1)\n" + batches_source + "\n" + BATCH_LOSSES
    )
    problem = load_problem(path)
    batches = list(problem.iter_batches())
    assert len(batches) == 3
    assert all(isinstance(b, torch.Tensor) and b.shape == (4, 3) for b in batches)
    assert compute_gramians(load_problem(path)).num_batches == 3


def test_max_batches_caps_without_pulling_a_batch_too_many(write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.Linear(3, 1)\n"
        + "PULLED = []\n"
        + "def batches():\n"
        + "    for i in range(10):\n"
        + "        PULLED.append(i)\n"
        + "        yield torch.full((4, 3), float(i))\n"
        + BATCH_LOSSES
    )
    problem = load_problem(path, LoadOptions(max_batches=2))
    assert compute_gramians(problem).num_batches == 2
    assert problem.losses.__globals__["PULLED"] == [0, 1]


@pytest.mark.parametrize(
    ("batches_source", "found"),
    [("batches = 3", "int"), ("batches = 'abc'", "str"), ("batches = {'a': 1}", "dict")],
)
def test_batches_that_is_not_an_iterable_of_batches_is_an_error(
    write_gradfile, batches_source: str, found: str
) -> None:
    path = write_gradfile(
        HEADER + "model = nn.Linear(3, 1)\n" + batches_source + "\n" + BATCH_LOSSES
    )
    with pytest.raises(GradfileError, match=f"`batches` .*iterable.*found {found}"):
        load_problem(path)


def test_empty_batches_is_an_error(write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 1)\nbatches = []\n" + BATCH_LOSSES)
    with pytest.raises(GradientError, match="produced no batch") as info:
        compute_gramians(load_problem(path))
    assert info.value.exit_code == 1


def test_batches_generator_raising_midway_is_a_user_code_error(write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.Linear(3, 1)\n"
        + "def batches():\n"
        + "    yield torch.ones(4, 3)\n"
        + "    raise KeyError('shard 2 missing')  # here\n"
        + BATCH_LOSSES
    )
    with pytest.raises(UserCodeError, match=r"KeyError while fetching batch #2") as info:
        compute_gramians(load_problem(path))
    assert f'File "{path}", line {line_of(path, "# here")}, in batches' in info.value.traceback
    assert "gradtool/" not in info.value.traceback


def test_max_batches_below_one_is_a_usage_error(write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 1)\nbatches = [1]\n" + BATCH_LOSSES)
    with pytest.raises(UsageError, match=r"^max_batches should be at least 1") as info:
        load_problem(path, LoadOptions(max_batches=0))
    assert info.value.worded(cli_option)[0].startswith("--batches should be at least 1")


# --- parameters --------------------------------------------------------------------------------

TWO_LAYERS = HEADER + "model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))\n" + LOSSES


@pytest.mark.parametrize(
    "parameters_source",
    [
        "def parameters(model):\n    return [model[1].weight, model[1].bias]",
        "def parameters(model):\n"
        "    return [('1.weight', model[1].weight), ('1.bias', model[1].bias)]",
        "def parameters(model):\n"
        "    return (x for x in model.named_parameters() if x[0].startswith('1.'))",
    ],
    ids=["bare-parameters", "pairs", "generator-of-pairs"],
)
def test_parameters_may_return_bare_parameters_or_name_parameter_pairs(
    write_gradfile, parameters_source: str
) -> None:
    path = write_gradfile(TWO_LAYERS + parameters_source + "\n")
    problem = load_problem(path)
    assert names_of(problem) == ["1.weight", "1.bias"]
    assert problem.parameters[0][1] is problem.model[1].weight


@pytest.mark.parametrize(
    ("parameters_source", "words"),
    [
        ("return None", ["iterable", "found NoneType"]),
        ("return model[0].weight", ["iterable", "found Parameter"]),
        ("return ['junk', 3]", ["(name, Parameter)", "'junk'"]),
        ("return [('w', 3.0)]", ["'w'", "not a tensor requiring grad"]),
        ("return [torch.ones(2, requires_grad=True)]", ["not a parameter of the model"]),
    ],
    ids=["none", "one-tensor", "strings", "not-a-tensor", "foreign-tensor"],
)
def test_parameters_returning_junk_is_an_error_saying_what_it_found(
    write_gradfile, parameters_source: str, words: list[str]
) -> None:
    path = write_gradfile(TWO_LAYERS + "def parameters(model):\n    " + parameters_source + "\n")
    with pytest.raises(GradfileError) as info:
        load_problem(path)
    for word in words:
        assert word in info.value.message


def test_parameters_returning_a_frozen_parameter_is_an_error_naming_it(write_gradfile) -> None:
    path = write_gradfile(
        TWO_LAYERS
        + "def parameters(model):\n"
        + "    model[0].bias.requires_grad_(False)\n"
        + "    return list(model.named_parameters())\n"
    )
    with pytest.raises(
        GradfileError, match=re.escape("'0.bias', which is not a tensor requiring grad")
    ):
        load_problem(path)


def test_default_selection_is_every_parameter_requiring_grad(write_gradfile) -> None:
    path = write_gradfile(
        HEADER
        + "model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))\n"
        + "model[0].requires_grad_(False)\n"
        + LOSSES
    )
    assert names_of(load_problem(path)) == ["1.weight", "1.bias"]


def test_a_model_with_every_parameter_frozen_is_an_error(write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 1).requires_grad_(False)\n" + LOSSES)
    with pytest.raises(GradfileError, match="no parameter to analyse"):
        load_problem(path)


TIED = (
    HEADER
    + (
        "class Tied(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.encode = nn.Linear(3, 3, bias=False)\n"
        "        self.decode = nn.Linear(3, 3, bias=False)\n"
        "        self.decode.weight = self.encode.weight\n"
        "    def forward(self, x):\n"
        "        return self.decode(self.encode(x))\n"
        "model = Tied\n"
    )
    + LOSSES
)


def test_tied_parameters_are_counted_once_by_default(write_gradfile) -> None:
    assert names_of(load_problem(write_gradfile(TIED))) == ["encode.weight"]


def test_tied_parameters_are_counted_once_when_parameters_lists_both_names(
    write_gradfile,
) -> None:
    source = TIED + (
        "def parameters(model):\n    return list(model.named_parameters(remove_duplicate=False))\n"
    )
    assert names_of(load_problem(write_gradfile(source))) == ["encode.weight"]


NAMED = [
    (name, nn.Parameter(torch.zeros(1)))
    for name in ("trunk.0.weight", "trunk.0.bias", "heads.a.weight", "heads.b.weight", "scale")
]


def test_select_parameters_takes_the_union_of_globs_in_model_order() -> None:
    kept = select_parameters(NAMED, ["heads.*", "trunk.0.weight", "heads.a.*"])
    assert [n for n, _ in kept] == ["trunk.0.weight", "heads.a.weight", "heads.b.weight"]


def test_select_parameters_without_patterns_keeps_everything() -> None:
    assert select_parameters(NAMED, []) == NAMED


def test_select_parameters_is_case_sensitive_and_anchored() -> None:
    assert [n for n, _ in select_parameters(NAMED, ["scale"])] == ["scale"]
    with pytest.raises(UsageError):
        select_parameters(NAMED, ["TRUNK.*"])
    with pytest.raises(UsageError):
        select_parameters(NAMED, ["weight"])


def test_select_parameters_matching_nothing_is_a_usage_error_listing_names() -> None:
    with pytest.raises(UsageError) as info:
        select_parameters(NAMED, ["decoder.*"])
    assert info.value.exit_code == 2
    assert "decoder.*" in info.value.message
    assert "5 parameters" in info.value.message
    assert "trunk.0.weight" in (info.value.hint or "")


def test_params_option_narrows_the_problem(write_gradfile) -> None:
    problem = load_problem(write_gradfile(TWO_LAYERS), LoadOptions(params=("0.*",)))
    assert names_of(problem) == ["0.weight", "0.bias"]


# --- the file itself ---------------------------------------------------------------------------


def test_missing_gradfile_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GradfileError, match=re.escape("absent.py does not exist")):
        import_gradfile(tmp_path / "absent.py")


def test_gradfile_that_is_not_python_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("model = 1\n")
    with pytest.raises(GradfileError, match=r"\.py"):
        import_gradfile(tmp_path / "notes.txt")


def test_gradfile_that_is_a_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "folder.py").mkdir()
    with pytest.raises(GradfileError, match="not a file"):
        import_gradfile(tmp_path / "folder.py")


def test_syntax_error_names_the_file_and_line(write_gradfile) -> None:
    path = write_gradfile("import torch\nx = 1\ndef f(:\n    pass\n")
    with pytest.raises(GradfileError) as info:
        import_gradfile(path)
    assert f"{path}, line 3" in info.value.message
    assert "def f(:" in info.value.message


def test_exception_at_import_time_is_a_user_code_error_with_the_users_frames(
    write_gradfile,
) -> None:
    path = write_gradfile("import torch\n\nraise RuntimeError('boom at import')  # here\n")
    with pytest.raises(UserCodeError, match="RuntimeError: boom at import") as info:
        import_gradfile(path)
    trace = info.value.traceback
    assert trace.startswith("Traceback (most recent call last):")
    assert f'File "{path}", line {line_of(path, "# here")}, in <module>' in trace
    assert "importlib" not in trace
    assert "gradtool/" not in trace


def test_sys_exit_at_import_time_is_a_user_code_error(write_gradfile) -> None:
    path = write_gradfile("import sys\nsys.exit(3)\n")
    with pytest.raises(UserCodeError, match="SystemExit"):
        import_gradfile(path)


@pytest.mark.parametrize(
    ("source", "missing", "found"),
    [
        ("net = nn.Linear(3, 1)\n" + LOSSES, "could not find `model` in", "Found: net, losses"),
        ("model = nn.Linear(3, 1)\ndef loss(m):\n    pass\n", "`losses`", "Found: model, loss"),
        ("net = 1\n", "`model` and `losses`", "Found: net"),
    ],
    ids=["model", "losses", "both"],
)
def test_missing_names_are_an_error_listing_what_the_file_defines(
    write_gradfile, source: str, missing: str, found: str
) -> None:
    header = "from __future__ import annotations\nfrom typing import Any\n" + HEADER
    path = write_gradfile(header + source)
    with pytest.raises(GradfileError) as info:
        load_problem(path)
    assert missing in info.value.message
    assert info.value.message.endswith(found)  # imports (torch, nn, Any) are not "found"
    assert "losses(model)" in (info.value.hint or "")


def test_a_gradfile_can_import_a_helper_module_next_to_it(tmp_path: Path, write_gradfile) -> None:
    helper = f"helper_{tmp_path.name.replace('-', '_')}"
    write_gradfile("import torch\ndef make():\n    return torch.nn.Linear(3, 1)\n", f"{helper}.py")
    path = write_gradfile(HEADER + f"from {helper} import make\nmodel = make\n" + LOSSES)
    before = list(sys.path)
    problem = load_problem(path)
    assert isinstance(problem.model, nn.Linear)
    assert sys.path == before  # the folder is on sys.path only while the file is imported
    sys.modules.pop(helper, None)


# --- checkpoint and device ---------------------------------------------------------------------


def test_checkpoint_is_loaded_into_the_model(tmp_path: Path, write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 1)\n" + LOSSES)
    state = {"weight": torch.full((1, 3), 0.5), "bias": torch.tensor([2.0])}
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        model = load_problem(path, LoadOptions(checkpoint=tmp_path / name)).model
        assert torch.equal(model.weight, state["weight"])
        assert torch.equal(model.bias, state["bias"])


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"encoder.weight": torch.ones(1)}, ["does not fit the model", "encoder.weight"]),
        ([torch.ones(1)], ["holds a list", "state dict"]),
        (b"not a checkpoint", ["cannot load checkpoint"]),
    ],
    ids=["wrong-keys", "a-list", "junk-bytes"],
)
def test_checkpoint_that_does_not_fit_is_a_gradfile_error(
    tmp_path: Path, write_gradfile, content: object, words: list[str]
) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 1)\n" + LOSSES)
    ckpt = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        ckpt.write_bytes(content)
    else:
        torch.save(content, ckpt)
    with pytest.raises(GradfileError) as info:
        load_problem(path, LoadOptions(checkpoint=ckpt))
    assert info.value.exit_code == 1
    for word in words:
        assert word in info.value.message


def test_missing_checkpoint_is_a_usage_error(tmp_path: Path, write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 1)\n" + LOSSES)
    with pytest.raises(UsageError, match=re.escape("none.pt does not exist")):
        load_problem(path, LoadOptions(checkpoint=tmp_path / "none.pt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_usage_error(write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 1)\n" + LOSSES)
    with pytest.raises(UsageError, match="CUDA is not available"):
        load_problem(path, LoadOptions(device="cuda"))


def test_unknown_device_is_a_usage_error(write_gradfile) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 1)\n" + LOSSES)
    with pytest.raises(UsageError, match="'toaster' is not a device"):
        load_problem(path, LoadOptions(device="toaster"))


# --- the user's model is left as found ---------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLE_NAMES)
def test_analysing_a_sample_leaves_the_model_as_found(sample: str) -> None:
    problem = load_problem(SAMPLES / f"{sample}.py")
    model = problem.model
    before = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    training = [m.training for m in model.modules()]
    compute_gramians(problem)
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key].detach(), value), key
    assert [m.training for m in model.modules()] == training
