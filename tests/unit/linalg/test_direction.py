"""Direction statistics of d = J^T w from the Gramian alone, against the vectors themselves."""

from __future__ import annotations

import pytest
import torch

from gradtool.linalg.direction import direction_stats


def test_mean_direction_of_a_conflict_raises_a_loss() -> None:
    j = torch.tensor([[1.0, 0.0], [-3.0, 0.1]], dtype=torch.float64)
    stats = direction_stats(j @ j.T, torch.tensor([0.5, 0.5], dtype=torch.float64))
    d = j.T @ torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert stats.directional_derivatives[0] == pytest.approx(float(j[0] @ d))
    assert stats.directional_derivatives[0] < 0 and not stats.decreases_all


def test_zero_direction_and_zero_gradient_have_no_cosine() -> None:
    j = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [0.0, 0.0]], dtype=torch.float64)
    stats = direction_stats(j @ j.T, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert stats.norm == 0.0 and stats.cosine == [None, None, None]
    assert stats.decreases_all  # every rate is exactly 0: flat, not increasing
    stats = direction_stats(j @ j.T, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert stats.cosine[0] == pytest.approx(1.0) and stats.cosine[2] is None


def test_round_off_rates_are_zero_and_do_not_count_as_conflicts() -> None:
    # d = g_0 projected off g_1, so <g_1, d> = 0 in exact arithmetic, -1.1e-16 in float64.
    j = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g = j @ j.T
    w = torch.tensor([1.0, float(-g[0, 1] / g[1, 1])], dtype=torch.float64)
    assert float((g @ w)[1]) < 0  # the raw rate reads as a (tiny) conflict
    stats = direction_stats(g, w)
    assert stats.directional_derivatives[1] == 0.0 and stats.cosine[1] == 0.0
    assert stats.decreases_all
    w[1] *= 0.999  # a real (if small) conflict stays one
    assert not direction_stats(g, w).decreases_all
