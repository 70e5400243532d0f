"""The library face: analyze() on live tensors agrees with the engine and leaves training alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradtool
from gradtool.errors import GradientError


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
