"""The round-off tolerance of the direction statistics is per loss and scale-free: a huge weight on
a zero gradient (an uncertified solve) changes nothing, and a zero direction is recognised."""

from __future__ import annotations

import pytest
import torch

from gradtool.linalg.direction import direction_stats


def test_a_huge_weight_on_a_zero_gradient_leaves_the_other_rates_exact() -> None:
    g = torch.tensor([[4.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([0.5, 4e60], dtype=torch.float64)
    stats = direction_stats(g, w)
    assert stats.norm == pytest.approx(1.0)
    assert stats.directional_derivatives[0] == pytest.approx(2.0)
    assert stats.cosine[0] == pytest.approx(1.0) and stats.cosine[1] is None
    assert stats.decreases_all and not stats.zero


def test_exactly_opposed_gradients_give_a_zero_direction() -> None:
    g = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    for scale in (1e-12, 1.0, 1e12):
        stats = direction_stats(scale * g, torch.tensor([0.5, 0.5], dtype=torch.float64))
        assert stats.zero and stats.cosine == [None, None]
        assert stats.directional_derivatives == [0.0, 0.0]


def test_a_real_conflict_of_a_small_loss_is_not_rounded_away() -> None:
    # loss 1 is 1e-6 the size of loss 0; d raises it by 1e-7 of its own scale
    g0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g1 = torch.tensor([-1e-7 * 1e-6, 1e-6], dtype=torch.float64)
    j = torch.stack([g0, g1])
    stats = direction_stats(j @ j.T, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert stats.directional_derivatives[1] < 0 and not stats.decreases_all
