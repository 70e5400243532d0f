"""The library face: analyze() on live tensors agrees with the engine and leaves training alone;
the use cases report what loading did (checkpoint, tied and frozen parameters)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import gradtool
from gradtool.api import InspectRequest, run_gradfile
from gradtool.errors import GradientError, UsageError
from gradtool.problem import LoadOptions


def model_and_losses(seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    out = model(torch.randn(16, 4))
    return model, {"a": out[:, 0].pow(2).mean(), "b": (out[:, 1] - out[:, 0]).mean()}


def test_analyze_matches_an_explicit_jacobian_and_keeps_the_graph() -> None:
    model, losses = model_and_losses()
    params = list(model.parameters())
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, params, retain_graph=True)])
        for v in losses.values()
    ]
    j = torch.stack(rows).double()
    report = gradtool.analyze(model, losses, pareto=gradtool.ParetoOptions())
    torch.testing.assert_close(torch.tensor(report.dot, dtype=torch.float64), j @ j.T)
    assert report.command == "analyze" and report.pareto is not None
    assert all(p.grad is None for p in params)
    (losses["a"] + losses["b"]).backward()  # the user's own backward still works
    assert all(p.grad is not None for p in params)


def test_analyze_after_the_users_backward_is_a_clear_error() -> None:
    model, losses = model_and_losses()
    (losses["a"] + losses["b"]).backward()
    with pytest.raises(GradientError, match="already freed"):
        gradtool.analyze(model, losses)


def test_analyze_validates_losses_like_the_cli() -> None:
    model, losses = model_and_losses()
    with pytest.raises(gradtool.GradtoolError, match="loss 'c' does not require grad"):
        gradtool.analyze(model, {**losses, "c": losses["a"].detach()})


@pytest.mark.parametrize(
    ("pareto", "weighted"),
    [(None, False), (False, False), (True, True), (gradtool.ParetoOptions(), True)],
    ids=["none", "false", "true", "options"],
)
def test_analyze_takes_pareto_as_a_flag_or_options(pareto: object, weighted: bool) -> None:
    model, losses = model_and_losses()
    report = gradtool.analyze(model, losses, pareto=pareto)  # type: ignore[arg-type]
    assert (report.pareto is not None) == weighted
    if weighted:
        assert report.pareto is not None
        assert sum(report.pareto.weights.values()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("pareto", ["x", 1, "mgda"])
def test_analyze_refuses_another_pareto_value_naming_the_option(pareto: object) -> None:
    model, losses = model_and_losses()
    with pytest.raises(
        UsageError, match=r"pareto should be True, False or a ParetoOptions"
    ) as info:
        gradtool.analyze(model, losses, pareto=pareto)  # type: ignore[arg-type]
    assert info.value.option == "pareto"


def test_run_gradfile_reports_checkpoint_ties_and_left_out_keys(tmp_path: Path) -> None:
    gradfile = tmp_path / "tied.py"
    gradfile.write_text(
        "import torch\nfrom torch import nn\n"
        "model = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 4, bias=False), nn.Linear(4, 1))\n"
        "model[1].weight = model[0].weight\n"
        "model[2].bias.requires_grad_(False)\n"
        "def losses(model):\n"
        "    y = model(torch.tensor([0, 1, 2]))\n"
        "    return {'a': y.mean(), 'b': y.pow(2).mean()}\n"
    )
    state = {"0.weight": torch.ones(4, 3), "2.weight": torch.ones(1, 4), "2.bias": torch.zeros(1)}
    torch.save({**state, "pooler.weight": torch.ones(2)}, tmp_path / "ckpt.pt")
    request = InspectRequest(gradfile, load=LoadOptions(checkpoint=tmp_path / "ckpt.pt"))
    report = run_gradfile(request)
    # every row of the embedding is ones: y = 2.weight @ (1.weight @ 1) = 4 * 3 = 12
    assert report.loss_values["a"] == pytest.approx(12.0, rel=1e-6)
    assert report.meta["tied_parameters"] == [["0.weight", ["1.weight"]]]
    assert report.meta["frozen_parameters"] == {"count": 1, "numel": 1}
    checkpoint = report.meta["checkpoint"]
    assert checkpoint["tied"] == ["1.weight"] and checkpoint["unexpected"] == ["pooler.weight"]
    assert any("pooler.weight" in w and "left out" in w for w in report.warnings)
    assert json.loads(report.to_json())["meta"]["checkpoint"]["loaded"] == 3
