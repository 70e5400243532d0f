"""Pareto analysis: reference values, normalisations checked against explicit vectors."""

from __future__ import annotations

import math

import pytest
import torch

from gradtool.errors import LossError
from gradtool.linalg.pareto import normalization_scale, pareto_solution

J_REF = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
G_REF = torch.tensor([[18.0, -22.0], [-22.0, 38.0]], dtype=torch.float64)


def test_reference_gramian_gives_design_values() -> None:
    torch.testing.assert_close(J_REF @ J_REF.T, G_REF)
    sol = pareto_solution(G_REF, [1.0, 1.0], ["a", "b"])
    torch.testing.assert_close(sol.weights, torch.tensor([0.6, 0.4], dtype=torch.float64))
    direction = J_REF.T @ sol.loss_weights
    torch.testing.assert_close(direction, torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))
    assert sol.min_norm == pytest.approx(math.sqrt(2.0), rel=1e-12)
    # (G w)_i = <g_i, d> = 2 for both: MGDA equalises the decrease rates on the support
    torch.testing.assert_close(sol.directional_derivatives, J_REF @ direction)
    assert not sol.stationary and sol.unique and sol.kkt_residual < 1e-12


def test_seed_snippet_sign_error_is_not_repeated() -> None:
    g0, g1 = J_REF
    wrong = float(torch.clamp((g1 - g0) @ g0 / (g1 - g0).norm() ** 2, 0, 1))
    right = float(torch.clamp((g1 - g0) @ g1 / (g1 - g0).norm() ** 2, 0, 1))
    sol = pareto_solution(G_REF, [1.0, 1.0], ["a", "b"])
    assert float(sol.weights[0]) == pytest.approx(right)
    assert wrong == 0.0 and right == pytest.approx(0.6)


@pytest.mark.parametrize("normalize", ["l2", "loss", "loss+"])
def test_normalised_weights_match_explicitly_scaled_gradients(normalize: str) -> None:
    g = torch.Generator().manual_seed(0)
    j = torch.randn(3, 6, generator=g, dtype=torch.float64) * torch.tensor([[1.0], [5.0], [0.2]])
    losses = [0.5, 2.0, 3.0]
    sol = pareto_solution(j @ j.T, losses, ["a", "b", "c"], normalize=normalize)
    n = j.norm(dim=1)
    scale = {"l2": n, "loss": torch.tensor(losses), "loss+": torch.tensor(losses) * n}[normalize]
    scaled = j / scale.double()[:, None]
    plain = pareto_solution(scaled @ scaled.T, [1.0] * 3, ["a", "b", "c"])
    torch.testing.assert_close(sol.weights, plain.weights, rtol=1e-9, atol=1e-12)
    direction = j.T @ sol.loss_weights
    torch.testing.assert_close(direction, scaled.T @ plain.weights, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sol.directional_derivatives, j @ direction)
    assert sol.min_norm == pytest.approx(float(direction.norm()), rel=1e-9)


def test_opposed_gradients_are_pareto_stationary() -> None:
    j = torch.tensor([[1.0, 2.0], [-2.0, -4.0]], dtype=torch.float64)
    sol = pareto_solution(j @ j.T, [1.0, 1.0], ["a", "b"])
    assert sol.stationary
    assert sol.min_norm == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(sol.weights, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))


def test_stationarity_is_scale_free() -> None:
    j = torch.tensor([[1.0, 0.0], [-1.0, 1e-9]], dtype=torch.float64)
    for c in (1e-6, 1.0, 1e6):
        g = (c * j) @ (c * j).T
        assert pareto_solution(g, [1.0, 1.0], ["a", "b"]).stationary


def test_loss_normalisation_needs_positive_losses() -> None:
    with pytest.raises(LossError, match=r"loss 'b' is -0\.5"):
        normalization_scale(G_REF, [1.0, -0.5], "loss", ["a", "b"])


def test_l2_normalisation_keeps_zero_gradients_finite() -> None:
    g = torch.tensor([[4.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    scale = normalization_scale(g, [1.0, 1.0], "l2", ["a", "b"])
    torch.testing.assert_close(scale, torch.tensor([2.0, 1.0], dtype=torch.float64))
    sol = pareto_solution(g, [1.0, 1.0], ["a", "b"], normalize="l2")
    assert sol.stationary and float(sol.weights[1]) == 1.0
