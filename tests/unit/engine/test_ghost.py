"""The row forms of a layer's Gramian against the Gramian of its formed gradients."""

from __future__ import annotations

import pytest
import torch

from gradtool.engine import ghost
from gradtool.engine.ghost import LayerRows


def rows(n: int, s: int, r: int, m: int, seed: int = 0, transposed: bool = True) -> LayerRows:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, s, dtype=torch.float64, generator=g)
    d = torch.randn(m, n, r, dtype=torch.float64, generator=g)
    return LayerRows("linear", x, d, transposed)


def formed(layer: LayerRows, shape: tuple[int, ...]) -> torch.Tensor:
    a = ghost.materialise(layer, torch.Size(shape), torch.float64)
    return a @ a.T


@pytest.mark.parametrize(("n", "s", "r"), [(3, 40, 30), (60, 4, 5), (17, 17, 1), (1, 9, 2)])
def test_both_forms_equal_the_formed_gradients(n: int, s: int, r: int) -> None:
    layer = rows(n, s, r, m=4)
    expected = formed(layer, (r, s))
    torch.testing.assert_close(ghost.gramian(layer), expected, rtol=1e-12, atol=1e-12)
    # the materialised weight gradient is D_i^T X, checked entry by entry
    a = ghost.materialise(layer, torch.Size((r, s)), torch.float64).reshape(4, r, s)
    torch.testing.assert_close(a[2], layer.grads[2].T @ layer.shared)


def test_chunked_conversion_gives_the_same_gramian(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = rows(7, 11, 13, m=3)
    whole = ghost.gramian(layer)
    monkeypatch.setattr(ghost, "CHUNK", 5)  # one column of D at a time
    torch.testing.assert_close(ghost.gramian(layer), whole, rtol=1e-13, atol=1e-13)


def test_untransposed_product_and_concatenated_uses() -> None:
    one, two = (
        rows(4, 6, 5, m=3, seed=1, transposed=False),
        rows(9, 6, 5, m=3, seed=2, transposed=False),
    )
    both = ghost.concat([one, two])
    a = ghost.materialise(one, torch.Size((6, 5)), torch.float64)
    b = ghost.materialise(two, torch.Size((6, 5)), torch.float64)
    torch.testing.assert_close(ghost.gramian(both), (a + b) @ (a + b).T)


@pytest.mark.parametrize("scale", [1e-150, 1e-30, 1.0, 1e30, 1e150])
def test_scale_over_many_orders_of_magnitude(scale: float) -> None:
    layer = rows(5, 8, 6, m=3)
    big = LayerRows("linear", layer.shared * scale, layer.grads, True)
    torch.testing.assert_close(
        ghost.gramian(big) / scale**2, ghost.gramian(layer), rtol=1e-12, atol=0
    )


def test_permuted_and_duplicated_losses() -> None:
    layer = rows(6, 5, 4, m=3)
    g = ghost.gramian(layer)
    perm = torch.tensor([2, 0, 1])
    permuted = LayerRows("linear", layer.shared, layer.grads[perm], True)
    torch.testing.assert_close(ghost.gramian(permuted), g[perm][:, perm])
    dup = LayerRows("linear", layer.shared, torch.cat([layer.grads, layer.grads[:1]]), True)
    gd = ghost.gramian(dup)
    torch.testing.assert_close(gd[3], gd[0])


def test_zero_rows_give_a_zero_gramian_exactly() -> None:
    layer = rows(5, 4, 3, m=2)
    zero = LayerRows("linear", layer.shared, torch.zeros_like(layer.grads), True)
    assert torch.count_nonzero(ghost.gramian(zero)) == 0


def test_embedding_rows_sum_repeated_ids() -> None:
    ids = torch.tensor([3, 1, 3, 3, 0])
    d = torch.randn(2, 5, 4, dtype=torch.float64)
    layer = LayerRows("embedding", ids, d)
    dense = torch.zeros(2, 6, 4, dtype=torch.float64)
    dense.index_add_(1, ids, d)
    flat = dense.reshape(2, -1)
    torch.testing.assert_close(ghost.gramian(layer), flat @ flat.T)
    torch.testing.assert_close(ghost.materialise(layer, torch.Size((6, 4)), torch.float64), flat)


def test_float32_rows_keep_float64_accuracy_under_cancellation() -> None:
    """Rows whose sum cancels (a near-stationary mean gradient): the row form is taken in
    float64, so the error is float32's rounding of the rows, not squared by the cancellation."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, dtype=torch.float64, generator=g)
    d = torch.randn(2, 64, 16, dtype=torch.float64, generator=g)
    d[:, 32:] = -d[:, :32] + 1e-3 * d[:, 32:]  # rows cancel pairwise to 1e-3
    x[32:] = x[:32]
    exact = ghost.gramian(LayerRows("linear", x, d))
    got = ghost.gramian(LayerRows("linear", x.float(), d.float()))
    norms = exact.diagonal().sqrt()
    rel = (got - exact).abs() / torch.outer(norms, norms)
    assert float(rel.max()) < 1e-3  # float32 rows with a 1e3 cancellation: about 1e-4
