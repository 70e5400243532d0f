"""Gramian algebra against vectors: every statistic computed from explicit gradients."""

from __future__ import annotations

import math

import pytest
import torch

from gradtool.analysis.convert import to_list
from gradtool.analysis.layers import group_by_module
from gradtool.linalg import gramian as gm


def vectors() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    j = torch.randn(4, 7, generator=g, dtype=torch.float64)
    j[3] = 0.0  # a zero gradient
    return j


def test_norms_dots_cosines_angles_from_vectors() -> None:
    j = vectors()
    g = j @ j.T
    n = gm.norms(g)
    cos = gm.cosine(g)
    for i in range(4):
        assert float(n[i]) == pytest.approx(float(j[i].norm()), rel=1e-12)
    for i in range(3):
        for k in range(3):
            expected = float(j[i] @ j[k] / (j[i].norm() * j[k].norm()))
            assert float(cos[i, k]) == pytest.approx(expected, abs=1e-12)
            angle = math.degrees(math.acos(max(-1.0, min(1.0, expected))))
            assert float(gm.angle_deg(cos)[i, k]) == pytest.approx(angle, abs=1e-5)
    assert torch.isnan(cos[3]).all() and torch.isnan(cos[:, 3]).all()


def test_magnitude_similarity_closed_form() -> None:
    j = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    ms = gm.magnitude_similarity(j @ j.T)
    assert float(ms[0, 1]) == pytest.approx(2 * 3 * 1 / (9 + 1))
    assert float(ms[0, 0]) == 1.0
    assert float(ms[0, 2]) == 0.0  # one zero gradient: fully dominated
    assert math.isnan(float(ms[2, 2]))  # 0 / 0


def test_cosine_is_scale_invariant_and_permutation_equivariant() -> None:
    j = vectors()[:3]
    g = j @ j.T
    scale = torch.tensor([2.0, 0.5, 10.0], dtype=torch.float64)
    torch.testing.assert_close(gm.cosine(gm.normalized(g, 1 / scale)), gm.cosine(g))
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(gm.cosine(g[perm][:, perm]), gm.cosine(g)[perm][:, perm])


def test_group_by_module_depth() -> None:
    names = ["trunk.0.weight", "trunk.0.bias", "trunk.2.weight", "heads.a.weight", "scale"]
    full = group_by_module(names, None)
    assert [(x.name, x.indices) for x in full] == [
        ("trunk.0", (0, 1)),
        ("trunk.2", (2,)),
        ("heads.a", (3,)),
        ("(root)", (4,)),
    ]
    one = group_by_module(names, 1)
    assert [(x.name, x.indices) for x in one] == [
        ("trunk", (0, 1, 2)),
        ("heads", (3,)),
        ("(root)", (4,)),
    ]
    with pytest.raises(ValueError, match="depth"):
        group_by_module(names, 0)


def test_batch_cosine_stats_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    js = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    grams = torch.stack([j @ j.T for j in js])
    mean, std, frac = gm.batch_cosine_stats(grams)
    for a in range(3):
        for b in range(3):
            cs = [
                float(js[k, a] @ js[k, b] / (js[k, a].norm() * js[k, b].norm())) for k in range(5)
            ]
            mu = sum(cs) / 5
            assert float(mean[a, b]) == pytest.approx(mu, abs=1e-12)
            assert float(std[a, b]) == pytest.approx(
                math.sqrt(sum((c - mu) ** 2 for c in cs) / 5), abs=1e-9
            )
            assert float(frac[a, b]) == pytest.approx(sum(c < 0 for c in cs) / 5)


def test_to_list_turns_nan_into_none() -> None:
    assert to_list(torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]])) == [
        [1.0, None],
        [None, 2.0],
    ]


def test_as_gramian_rejects_non_square() -> None:
    with pytest.raises(ValueError, match=r"square matrix; found shape \(2, 3\)"):
        gm.as_gramian(torch.zeros(2, 3))


def test_conflict_fraction_counts_over_every_batch() -> None:
    """A batch where a cosine is undefined (a zero gradient) is not a conflict, but it counts."""
    j_conflict = torch.tensor([[1.0, 0.0], [-1.0, 0.1]], dtype=torch.float64)
    j_zero = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    grams = torch.stack([j_conflict @ j_conflict.T] + [j_zero @ j_zero.T] * 3)
    mean, _, frac = gm.batch_cosine_stats(grams)
    assert float(frac[0, 1]) == pytest.approx(1 / 4)
    assert float(mean[0, 1]) == pytest.approx(float(gm.cosine(grams[0])[0, 1]))
