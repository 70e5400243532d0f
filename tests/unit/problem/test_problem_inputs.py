"""What a library caller or a gradfile hands the Problem: parameters (listed twice, bare, as a
mapping, computed, frozen), what `losses` returns (a model's output instead of losses), and the
gradfile's folder on sys.path while its code runs."""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from _models import HEADER, LOSSES
from torch import nn

import gradtool
from gradtool.errors import LossError, UsageError
from gradtool.problem import (
    Problem,
    closest_patterns,
    frozen_parameters,
    gradfile_folder_on_path,
    load_problem,
    tied_parameters,
    validate_losses,
)


def model_and_losses() -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    out = model(torch.randn(5, 3))
    return model, {"a": out[:, 0].pow(2).mean(), "b": out[:, 1].mean()}


def names(problem: Problem) -> list[str]:
    return [n for n, _ in problem.parameters]


# --- parameters ---------------------------------------------------------------------------------


def test_a_parameter_listed_twice_counts_once_in_any_form() -> None:
    model, losses = model_and_losses()
    w, b = model[0].weight, model[0].bias
    for given in (
        [("0.weight", w), ("0.weight", w), ("0.bias", b)],
        [w, w, b],
        [("0.weight", w), w, b, ("again", b)],
        {"0.weight": w, "0.bias": b},
    ):
        assert names(Problem.live(model, losses, given)) == ["0.weight", "0.bias"]


def test_analyze_counts_a_parameter_listed_twice_once_with_the_same_gramian() -> None:
    model, losses = model_and_losses()
    w = model[2].weight
    rows = [torch.autograd.grad(v, w, retain_graph=True)[0].reshape(-1) for v in losses.values()]
    j = torch.stack(rows).double()
    report = gradtool.analyze(model, losses, parameters=[w, ("2.weight", w), w])
    assert report.parameters == {"count": 1, "numel": 8}
    torch.testing.assert_close(torch.tensor(report.dot, dtype=torch.float64), j @ j.T)


def test_a_monitor_counts_a_parameter_listed_twice_once(tmp_path: Path) -> None:
    model, losses = model_and_losses()
    params = [*model[0].named_parameters(prefix="0"), *model[0].named_parameters(prefix="0")]
    with gradtool.Monitor(tmp_path / "run.jsonl", every=1, parameters=params) as monitor:
        record = monitor.step(model, losses)
    assert record is not None and record.parameters == {"count": 2, "numel": 16}


def test_bare_parameters_take_their_names_in_the_model() -> None:
    model, losses = model_and_losses()
    problem = Problem.live(model, losses, [model[2].bias, model[0].weight])
    assert names(problem) == ["2.bias", "0.weight"]


def test_a_tied_parameter_given_bare_takes_its_first_name() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    model[1].weight = model[0].weight
    loss = model(torch.ones(1, 2)).sum()
    problem = Problem.live(model, {"a": loss}, [model[1].weight])
    assert names(problem) == ["0.weight"]


def test_a_computed_tensor_is_refused_naming_how_it_was_computed() -> None:
    model, losses = model_and_losses()
    doubled = model[0].weight * 2
    with pytest.raises(UsageError) as info:
        Problem.live(model, losses, [model[0].bias, doubled])
    message = info.value.message
    assert "non-leaf tensor of shape (4, 3)" in message and "MulBackward0" in message
    assert info.value.option == "parameters"
    with pytest.raises(UsageError, match=r"'w2', which is not a leaf tensor.*MulBackward0"):
        gradtool.analyze(model, losses, parameters=[("w2", doubled)])
    with pytest.raises(ValueError, match="non-leaf"):  # a UsageError is a ValueError
        gradtool.analyze(model, losses, parameters=[doubled])


def test_a_tensor_outside_the_model_needs_a_name() -> None:
    model, losses = model_and_losses()
    outside = nn.Parameter(torch.ones(2))
    with pytest.raises(UsageError, match=r"tensor of shape \(2,\) that is not a parameter"):
        Problem.live(model, losses, [outside])
    assert names(Problem.live(model, losses, [("scale", outside)])) == ["scale"]


def test_a_frozen_or_non_tensor_parameter_is_refused_by_name() -> None:
    model, losses = model_and_losses()
    model[0].bias.requires_grad_(False)
    with pytest.raises(
        UsageError, match=r"'0\.bias', which is not a tensor requiring grad"
    ) as info:
        Problem.live(model, losses, list(model.named_parameters()))
    assert info.value.parameter == "0.bias"
    with pytest.raises(UsageError, match=r"'x'.*\(float\)"):
        Problem.live(model, losses, [("x", 1.0)])
    with pytest.raises(UsageError, match="should hold \\(name, Parameter\\) pairs"):
        Problem.live(model, losses, ["0.weight"])


def test_an_empty_selection_is_refused() -> None:
    model, losses = model_and_losses()
    with pytest.raises(UsageError, match="selects no parameter"):
        gradtool.analyze(model, losses, parameters=[])


def test_tied_and_frozen_parameters_are_summarised() -> None:
    model = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 4, bias=False), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    model[2].requires_grad_(False)
    selected = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert tied_parameters(model, selected) == [["0.weight", ["1.weight"]]]
    assert frozen_parameters(model) == {"count": 2, "numel": 20}


def test_analyze_reports_tied_and_frozen_parameters_in_meta() -> None:
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False), nn.Linear(3, 1))
    model[1].weight = model[0].weight
    model[2].bias.requires_grad_(False)
    out = model(torch.ones(2, 3))
    report = gradtool.analyze(model, {"a": out.mean(), "b": out.pow(2).mean()})
    assert report.meta["tied_parameters"] == [["0.weight", ["1.weight"]]]
    assert report.meta["frozen_parameters"] == {"count": 1, "numel": 1}
    assert report.parameters["count"] == 2  # 0.weight (tied, once) and 2.weight


# --- what `losses` returns ----------------------------------------------------------------------


class CausalLMOutput(OrderedDict):
    """Shaped like transformers' ModelOutput: an OrderedDict with attribute access."""

    def __getattr__(self, name: str) -> object:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Outputs:
    def __init__(self, loss: torch.Tensor) -> None:
        self.loss = loss
        self.logits = torch.ones(2, 3)


class LossOutput(dict):
    """A user's own mapping of losses whose class name happens to end with 'Output'."""


def test_a_model_output_gets_the_hint_to_return_its_loss() -> None:
    loss = torch.ones((), requires_grad=True) * 2
    for returned in (CausalLMOutput(loss=loss, logits=torch.ones(2, 5)), Outputs(loss)):
        with pytest.raises(LossError) as info:
            validate_losses(returned)
        assert "(a model's output)" in info.value.message
        assert type(returned).__name__ in info.value.message
        assert "return its `.loss`" in (info.value.hint or "")
    with pytest.raises(LossError) as info:
        validate_losses({"lm": CausalLMOutput(loss=loss, logits=torch.ones(2)), "b": loss})
    assert "loss 'lm' should be a scalar tensor; found CausalLMOutput" in info.value.message
    assert info.value.loss == "lm"
    assert "return its `.loss`" in (info.value.hint or "")


def test_other_wrong_returns_keep_their_own_hints() -> None:
    loss = torch.ones((), requires_grad=True) * 2
    with pytest.raises(LossError) as info:
        validate_losses((loss, loss))
    assert "`.loss`" not in (info.value.hint or "")
    with pytest.raises(LossError) as info:
        validate_losses({"a": 1.5})
    assert "loss.item()" in (info.value.hint or "")


def test_a_users_mapping_named_output_holding_scalar_losses_is_accepted() -> None:
    loss = torch.ones((), requires_grad=True) * 2
    assert list(validate_losses(LossOutput(a=loss, b=loss * 3))) == ["a", "b"]


def test_a_loss_on_the_meta_device_is_an_error_naming_it() -> None:
    meta = torch.ones((), device="meta", requires_grad=True) * 2
    with pytest.raises(LossError, match="loss 'a' is a tensor on the meta device"):
        validate_losses({"a": meta})


# --- the gradfile's folder on sys.path ------------------------------------------------------------


def test_the_folder_is_first_on_sys_path_only_inside_the_block(tmp_path: Path) -> None:
    before = list(sys.path)
    with gradfile_folder_on_path(tmp_path):
        assert sys.path[0] == str(tmp_path.resolve())
        with gradfile_folder_on_path(tmp_path):  # nested: not added twice
            assert sys.path.count(str(tmp_path.resolve())) == 1
        assert sys.path[0] == str(tmp_path.resolve())
    assert sys.path == before


def test_the_folder_entry_is_taken_out_even_when_user_code_moved_it(tmp_path: Path) -> None:
    before = list(sys.path)
    with gradfile_folder_on_path(tmp_path):
        sys.path.insert(0, "/elsewhere")
    assert sys.path == ["/elsewhere", *before]
    sys.path.remove("/elsewhere")


def test_a_sibling_module_imported_inside_losses_is_found(tmp_path: Path, write_gradfile) -> None:
    helper = f"lazy_{tmp_path.name.replace('-', '_')}"
    write_gradfile("def scale(x):\n    return 3 * x\n", f"{helper}.py")
    path = write_gradfile(
        HEADER
        + "model = nn.Linear(3, 1)\n"
        + "def losses(model):\n"
        + f"    import {helper}\n"
        + "    y = model(torch.ones(4, 3))\n"
        + f"    return {{'a': {helper}.scale(y).mean(), 'b': y.mean()}}\n"
    )
    before = list(sys.path)
    try:
        problem = load_problem(path)
        values = problem.evaluate(None)
        assert sys.path == before
        torch.testing.assert_close(values["a"].detach(), 3 * values["b"].detach())
    finally:
        sys.modules.pop(helper, None)


def test_a_sibling_module_imported_inside_batches_and_model_is_found(
    tmp_path: Path, write_gradfile
) -> None:
    helper = f"lazy_data_{tmp_path.name.replace('-', '_')}"
    write_gradfile(
        "import torch\nWIDTH = 3\ndef data():\n    return torch.ones(2, 3)\n", f"{helper}.py"
    )
    path = write_gradfile(
        HEADER
        + "def model():\n"
        + f"    import {helper}\n"
        + f"    return nn.Linear({helper}.WIDTH, 1)\n"
        + "def batches():\n"
        + "    for _ in range(2):\n"
        + f"        import {helper}\n"
        + f"        yield {helper}.data()\n"
        + "def losses(model, batch):\n"
        + "    y = model(batch)\n"
        + "    return {'a': y.mean(), 'b': y.pow(2).mean()}\n"
    )
    try:
        problem = load_problem(path)
        assert len(list(problem.iter_batches())) == 2
    finally:
        sys.modules.pop(helper, None)


# --- suggestions for a selection matching nothing -------------------------------------------------


NAMES = [
    "bert.embeddings.word.weight",
    "bert.encoder.layer.0.attn.weight",
    "bert.encoder.layer.0.attn.bias",
    "classifier.weight",
]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("encoder.*", "*.encoder.*"),  # anchored globs: the pattern matches inside the names
        ("weight", "*.weight"),
        ("bert.encodr.*", "bert.encoder.*"),  # a typo: the closest module path
        ("clasifier.weight", "classifier.weight"),  # the closest parameter name
    ],
)
def test_closest_patterns_suggest_globs_that_match(pattern: str, expected: str) -> None:
    suggested = closest_patterns([pattern], NAMES)
    assert expected in suggested
    assert len(suggested) <= 4


def test_a_selection_matching_nothing_suggests_the_closest_in_its_hint(write_gradfile) -> None:
    source = (
        HEADER
        + "model = nn.Sequential()\n"
        + "model.add_module('encoder', nn.Linear(3, 3))\n"
        + "model.add_module('head', nn.Linear(3, 1))\n"
        + LOSSES
    )
    with pytest.raises(UsageError) as info:
        load_problem(write_gradfile(source), gradtool.LoadOptions(params=("encodr.*",)))
    assert "did you mean 'encoder.*'" in (info.value.hint or "")


def test_a_tied_parameter_is_selected_by_any_of_its_names(write_gradfile) -> None:
    source = (
        HEADER
        + "model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))\n"
        + "model[1].weight = model[0].weight\n"
        + LOSSES
    )
    problem = load_problem(write_gradfile(source), gradtool.LoadOptions(params=("1.*",)))
    assert names(problem) == ["0.weight"]
    second_name = source + "def parameters(model):\n    return [('1.weight', model[1].weight)]\n"
    problem = load_problem(write_gradfile(second_name), gradtool.LoadOptions(params=("0.*",)))
    assert names(problem) == ["1.weight"]
