"""Lookahead affinity on low-precision parameters: a step that rounds away is not measured."""

from __future__ import annotations

import copy

import pytest
import torch
from _models import TwoHeads
from torch import nn

from gradtool.analysis import lookahead_affinity
from gradtool.analysis.affinity import STEP_ATOL, STEP_RTOL
from gradtool.problem import Problem

X = torch.linspace(-1, 1, 64).reshape(16, 4)
Y = X.sum(dim=1)


def make_model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return TwoHeads(nn.Linear(4, 8), nn.Tanh()).to(dtype)


def losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """Both losses in float32 from the model's outputs, whatever the model's dtype."""
    dtype = next(model.parameters()).dtype
    a, b = model(X.to(dtype))
    return {
        "fit": ((a.float().squeeze(-1) - Y) ** 2).mean(),
        "anti": ((b.float().squeeze(-1) + Y) ** 2).mean(),
    }


def problem(model: nn.Module) -> Problem:
    return Problem(model=model, losses=losses, parameters=list(model.named_parameters()))


def gradients(model: nn.Module) -> list[list[torch.Tensor]]:
    """Per loss, the gradient of every parameter (zeros where unused), by plain autograd."""
    values = losses(model)
    params = list(model.parameters())
    out = []
    for loss in values.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        out.append(
            [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        )
    return out


def inner(u: list[torch.Tensor], v: list[torch.Tensor]) -> float:
    return sum(float((a.double() * b.double()).sum()) for a, b in zip(u, v, strict=True))


def by_hand(model: nn.Module, lr: float) -> dict[str, torch.Tensor]:
    """Return, independently of gradtool, per (i, j): `z` the measured affinity of an SGD step on
    a copy whose parameters are stepped in float32 and rounded once to their dtype; `z1` =
    lr G_ij / L_j; `shift` = <e_i, g_j>, the first-order effect of the rounding error
    e_i = round(theta - lr g_i) - theta + lr g_i; `lost` whether the module docstring's rule
    calls the entry not measurable: |shift| > STEP_RTOL max(lr |G_ij|, STEP_ATOL lr |g_i| |g_j|).
    """
    grads = gradients(model)
    base = [float(v.detach()) for v in losses(model).values()]
    m = len(grads)
    out = {key: torch.zeros(m, m, dtype=torch.float64) for key in ("z", "z1", "shift", "lost")}
    for i in range(m):
        work = copy.deepcopy(model)
        errors = []
        with torch.no_grad():
            for p, g in zip(work.parameters(), grads[i], strict=True):
                want = -lr * g.float()
                moved = (p.float() + want).to(p.dtype)
                errors.append(moved.float() - p.float() - want)
                p.copy_(moved)
            stepped = [float(v) for v in losses(work).values()]
        for j in range(m):
            dot = inner(grads[i], grads[j])
            bound = lr * (inner(grads[i], grads[i]) * inner(grads[j], grads[j])) ** 0.5
            shift = inner(errors, grads[j])
            out["z"][i, j] = 1 - stepped[j] / base[j]
            out["z1"][i, j] = lr * dot / base[j]
            out["shift"][i, j] = shift
            out["lost"][i, j] = abs(shift) > STEP_RTOL * max(lr * abs(dot), STEP_ATOL * bound)
    return out


def test_a_bf16_step_that_rounds_away_is_not_measured_and_gets_no_curvature_verdict() -> None:
    model = make_model(torch.bfloat16)
    report = lookahead_affinity(problem(model), 1e-4)
    hand = by_hand(model, 1e-4)
    assert bool(hand["lost"].all())
    assert all(v is None for row in report.affinity for v in row)
    assert all(v is None for row in report.loss_change for v in row)
    assert torch.allclose(
        torch.tensor(report.affinity_first_order, dtype=torch.float64), hand["z1"]
    )
    (warning,) = report.warnings
    assert "at lr 0.0001" in warning and "bfloat16 parameters" in warning and "null" in warning
    assert not any("curvature" in line or "within half" in line for line in report.verdict)
    for step in report.methods_step:
        assert all(v is None for v in step.affinity.values())
        assert not step.lowers_every_loss
    assert "one step of mgda cannot be measured at this lr for fit and anti" in report.verdict[0]


def test_the_same_model_in_float32_measures_what_bf16_cannot() -> None:
    report = lookahead_affinity(problem(make_model(torch.float32)), 1e-4)
    assert report.warnings == []
    z, z1 = report.affinity, report.affinity_first_order
    for i in range(2):
        for j in range(2):
            assert z[i][j] is not None and z1[i][j] is not None
            assert z[i][j] == pytest.approx(z1[i][j], rel=0.1, abs=1e-6)  # a tiny step: first order


def test_a_bf16_step_large_enough_is_measured_as_the_rounded_step_by_hand() -> None:
    model = make_model(torch.bfloat16)
    report = lookahead_affinity(problem(model), 0.1)
    hand = by_hand(model, 0.1)
    assert not bool(hand["lost"].any()) and report.warnings == []
    for i in range(2):
        for j in range(2):
            assert report.affinity[i][j] == pytest.approx(float(hand["z"][i, j]), rel=1e-5)
    assert any("within half of every measured affinity" in line for line in report.verdict)


def test_exactly_the_entries_whose_step_rounds_away_are_left_out() -> None:
    model = make_model(torch.bfloat16)
    report = lookahead_affinity(problem(model), 1e-3)
    hand = by_hand(model, 1e-3)
    missing = [[v is None for v in row] for row in report.affinity]
    assert missing == hand["lost"].bool().tolist()
    assert 0 < sum(map(sum, missing)) < 4  # some entries measured, some not
    for i in range(2):
        for j in range(2):
            if not missing[i][j]:
                assert report.affinity[i][j] == pytest.approx(float(hand["z"][i, j]), rel=1e-5)
    assert any("2 measured affinities (2 of 4 are not measured)" in v for v in report.verdict)
