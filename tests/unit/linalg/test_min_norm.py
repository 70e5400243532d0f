"""Tests of gradtool.min_norm against closed forms and independent (brute-force) computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gradtool.linalg.min_norm import (
    MinNormSolution,
    _kkt_residual,
    _solve,
    min_norm_two,
    min_norm_weights,
)

F64 = torch.float64


def gramian_of(jacobian: list[list[float]] | torch.Tensor) -> torch.Tensor:
    j = torch.as_tensor(jacobian, dtype=F64)
    return j @ j.T


def random_jacobian(gen: torch.Generator, m: int, n: int, kind: str) -> torch.Tensor:
    if kind == "gauss":
        return torch.randn(m, n, generator=gen, dtype=F64)
    if kind == "offset":  # gradients sharing a common component: sparse supports
        common = torch.randn(1, n, generator=gen, dtype=F64)
        return torch.randn(m, n, generator=gen, dtype=F64) + 1.5 * common
    if kind == "integer":  # small integers: exact ties and degenerate faces
        return torch.randint(-2, 3, (m, n), generator=gen).to(F64)
    raise AssertionError(kind)


def check_simplex(solution: MinNormSolution, m: int) -> None:
    w = solution.weights
    assert w.dtype == F64
    assert w.shape == (m,)
    assert bool((w >= 0).all())
    assert abs(float(w.sum()) - 1.0) <= 1e-14
    assert solution.support == tuple(int(i) for i in torch.nonzero(w > 0).flatten())


def brute_force(gramian: torch.Tensor) -> tuple[float, list[np.ndarray]]:
    """Return (min of w^T G w, the distinct feasible minimisers found), by enumerating supports.

    For every non-empty S, solve [G_S 1; 1^T 0] [w_S; -lam] = [0; 1] by least squares (numpy) and
    keep the feasible solutions. Every vertex of the set of minimisers is the unique solution on
    its (affinely independent) support, so the minimisers are unique iff one point is found.
    """
    g = gramian.numpy()
    m = g.shape[0]
    scale = max(float(np.max(np.diag(g))), 1e-300)
    candidates: list[tuple[float, np.ndarray]] = []
    for k in range(1, m + 1):
        for subset in itertools.combinations(range(m), k):
            idx = list(subset)
            kkt = np.zeros((k + 1, k + 1))
            kkt[:k, :k] = g[np.ix_(idx, idx)]
            kkt[:k, k] = 1.0
            kkt[k, :k] = 1.0
            rhs = np.zeros(k + 1)
            rhs[k] = 1.0
            sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
            if np.linalg.norm(kkt @ sol - rhs) > 1e-9 * max(scale, 1.0):
                continue
            if sol[:k].min() < -1e-12:
                continue
            w = np.zeros(m)
            w[idx] = np.clip(sol[:k], 0.0, None)
            w /= w.sum()
            candidates.append((float(w @ g @ w), w))
    best = min(value for value, _ in candidates)
    minimisers: list[np.ndarray] = []
    for value, w in candidates:
        if value <= best + 1e-11 * scale and all(np.abs(w - o).max() > 1e-7 for o in minimisers):
            minimisers.append(w)
    return best, minimisers


# --------------------------------------------------------------------------------------------
# Two losses: the closed form


def test_reference_two_losses() -> None:
    jacobian = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
    gramian = jacobian @ jacobian.T
    assert gramian.tolist() == [[18.0, -22.0], [-22.0, 38.0]]
    solution = min_norm_weights(gramian)
    torch.testing.assert_close(
        solution.weights, torch.tensor([0.6, 0.4], dtype=F64), atol=1e-12, rtol=0
    )
    direction = jacobian.T @ solution.weights
    torch.testing.assert_close(
        direction, torch.tensor([0.0, 1.0, 1.0], dtype=F64), atol=1e-12, rtol=0
    )
    assert solution.min_norm == pytest.approx(math.sqrt(2.0), abs=1e-12)
    assert solution.unique
    assert solution.support == (0, 1)
    assert solution.kkt_residual <= 1e-15
    w0, w1 = min_norm_two(18.0, -22.0, 38.0)
    assert w0 == pytest.approx(0.6, abs=1e-15)
    assert w1 == pytest.approx(0.4, abs=1e-15)


def test_closed_form_sign_error_formula_is_wrong() -> None:
    g00, g01, g11 = 18.0, -22.0, 38.0
    denominator = g00 - 2 * g01 + g11  # |g1 - g0|^2
    right = min(max((g11 - g01) / denominator, 0.0), 1.0)  # <g1 - g0, g1> / |g1 - g0|^2
    wrong = min(max((g01 - g00) / denominator, 0.0), 1.0)  # <g1 - g0, g0> / |g1 - g0|^2
    assert right == pytest.approx(0.6)
    assert wrong == 0.0  # -0.4 clamped: it gives w = [0, 1], i.e. just g1
    gramian = torch.tensor([[g00, g01], [g01, g11]], dtype=F64)

    def objective(w0: float) -> float:
        w = torch.tensor([w0, 1.0 - w0], dtype=F64)
        return float(w @ gramian @ w)

    assert objective(right) == pytest.approx(2.0)
    assert objective(wrong) == pytest.approx(38.0)
    scale = 38.0
    right_w = torch.tensor([right, 1 - right], dtype=F64)
    wrong_w = torch.tensor([wrong, 1 - wrong], dtype=F64)
    assert _kkt_residual(gramian, right_w, scale) <= 1e-15
    assert _kkt_residual(gramian, wrong_w, scale) == pytest.approx((38.0 + 22.0) / 38.0)
    # Against a fine grid of the segment.
    grid = torch.linspace(0, 1, 100001, dtype=F64)
    values = grid**2 * g00 + 2 * grid * (1 - grid) * g01 + (1 - grid) ** 2 * g11
    assert float(grid[torch.argmin(values)]) == pytest.approx(right, abs=1e-5)


def test_min_norm_two_cases() -> None:
    assert min_norm_two(1.0, 3.0, 10.0) == (1.0, 0.0)  # g0 = (1, 0), g1 = (3, 1): vertex g0
    assert min_norm_two(10.0, 3.0, 1.0) == (0.0, 1.0)
    assert min_norm_two(2.0, 2.0, 2.0) == (0.5, 0.5)  # identical gradients
    assert min_norm_two(0.0, 0.0, 0.0) == (0.5, 0.5)
    w0, w1 = min_norm_two(1.0, 0.0, 1.0)  # orthonormal
    assert (w0, w1) == (0.5, 0.5)
    with pytest.raises(ValueError, match="finite"):
        min_norm_two(float("nan"), 0.0, 1.0)


def test_identical_two_losses_not_unique() -> None:
    solution = min_norm_weights(gramian_of([[1.0, 2.0], [1.0, 2.0]]))
    assert solution.weights.tolist() == [0.5, 0.5]
    assert not solution.unique
    assert solution.min_norm == pytest.approx(math.sqrt(5.0))


def test_opposed_gradients() -> None:
    g = [1.0, -2.0, 3.0]
    jacobian = torch.tensor([g, [-2 * x for x in g]], dtype=F64)
    gramian = jacobian @ jacobian.T
    solution = min_norm_weights(gramian)
    torch.testing.assert_close(
        solution.weights, torch.tensor([2 / 3, 1 / 3], dtype=F64), atol=1e-12, rtol=0
    )
    scale = float(gramian.diagonal().max())
    # min_norm comes from the Gramian: its square is zero to rounding (relative to max G_ii).
    assert solution.min_norm**2 <= 1e-12 * scale
    assert float((jacobian.T @ solution.weights).norm()) <= 1e-12 * math.sqrt(scale)
    assert solution.unique
    # With a third, unrelated gradient the origin is still the min-norm point, on the same pair.
    jacobian3 = torch.cat([jacobian, torch.tensor([[0.5, 1.0, 4.0]], dtype=F64)])
    solution3 = min_norm_weights(jacobian3 @ jacobian3.T)
    torch.testing.assert_close(
        solution3.weights, torch.tensor([2 / 3, 1 / 3, 0.0], dtype=F64), atol=1e-12, rtol=0
    )
    assert solution3.weights[2] == 0.0
    assert solution3.min_norm**2 <= 1e-12 * float((jacobian3 @ jacobian3.T).diagonal().max())
    assert solution3.unique


# --------------------------------------------------------------------------------------------
# m >= 3: against brute force


@pytest.mark.parametrize("kind", ["gauss", "offset", "integer"])
@pytest.mark.parametrize("m", [3, 4, 5, 6])
def test_brute_force(m: int, kind: str) -> None:
    gen = torch.Generator().manual_seed(1000 * m + len(kind))
    for n in (1, 2, m, 10):
        for _ in range(3):
            jacobian = random_jacobian(gen, m, n, kind)
            gramian = jacobian @ jacobian.T
            scale = max(float(gramian.diagonal().max()), 1e-300)
            solution = min_norm_weights(gramian)
            check_simplex(solution, m)
            best, minimisers = brute_force(gramian)
            value = float(solution.weights @ gramian @ solution.weights)
            assert abs(value - best) <= 1e-10 * scale, (m, n, kind)
            assert abs(solution.min_norm**2 - max(value, 0.0)) <= 1e-14 * scale
            assert solution.kkt_residual <= 1e-9
            assert _kkt_residual(gramian, solution.weights, scale) == pytest.approx(
                solution.kkt_residual, rel=1e-6, abs=1e-15
            )
            assert solution.unique == (len(minimisers) == 1), (m, n, kind, minimisers)
            if solution.unique:
                np.testing.assert_allclose(solution.weights.numpy(), minimisers[0], atol=1e-7)


def test_projected_gradient_m5() -> None:
    """Compare with a long run of projected gradient descent (sort-based simplex projection)."""

    def project(v: torch.Tensor) -> torch.Tensor:
        u, _ = torch.sort(v, descending=True)
        css = torch.cumsum(u, 0) - 1.0
        ks = torch.arange(1, v.numel() + 1, dtype=F64)
        rho = int(torch.nonzero(u - css / ks > 0).flatten()[-1])
        return torch.clamp(v - css[rho] / (rho + 1), min=0.0)

    gen = torch.Generator().manual_seed(5)
    for kind in ("gauss", "offset"):
        jacobian = random_jacobian(gen, 5, 8, kind)
        gramian = jacobian @ jacobian.T
        step = 1.0 / (2.0 * float(torch.linalg.eigvalsh(gramian)[-1]))
        w = torch.full((5,), 0.2, dtype=F64)
        for _ in range(1500):
            w = project(w - step * 2.0 * (gramian @ w))
        solution = min_norm_weights(gramian)
        torch.testing.assert_close(solution.weights, w, atol=1e-8, rtol=0)
        assert float(w @ gramian @ w) >= solution.min_norm**2 - 1e-12


# --------------------------------------------------------------------------------------------
# Properties


def test_permutation_equivariance() -> None:
    gen = torch.Generator().manual_seed(11)
    for kind in ("gauss", "offset"):
        jacobian = random_jacobian(gen, 6, 10, kind)
        gramian = jacobian @ jacobian.T
        solution = min_norm_weights(gramian)
        assert solution.unique
        for _ in range(3):
            perm = torch.randperm(6, generator=gen)
            permuted = min_norm_weights(gramian[perm][:, perm])
            torch.testing.assert_close(permuted.weights, solution.weights[perm], atol=1e-12, rtol=0)
            assert permuted.min_norm == pytest.approx(solution.min_norm, rel=1e-12)


@pytest.mark.parametrize("c", [1e-6, 0.3, 7.0, 1e8])
def test_scaling(c: float) -> None:
    gen = torch.Generator().manual_seed(12)
    jacobian = random_jacobian(gen, 5, 7, "offset")
    gramian = jacobian @ jacobian.T
    solution = min_norm_weights(gramian)
    scaled = min_norm_weights(c * gramian)
    torch.testing.assert_close(scaled.weights, solution.weights, atol=1e-12, rtol=0)
    assert scaled.support == solution.support
    assert scaled.min_norm == pytest.approx(math.sqrt(c) * solution.min_norm, rel=1e-12)
    assert scaled.kkt_residual <= 1e-9


def test_duplicated_loss() -> None:
    gen = torch.Generator().manual_seed(13)
    cases = [torch.eye(3, dtype=F64), random_jacobian(gen, 4, 6, "gauss")]
    for jacobian in cases:
        solution = min_norm_weights(jacobian @ jacobian.T)
        assert solution.unique
        i = solution.support[0]
        duplicated = torch.cat([jacobian, jacobian[i : i + 1]])
        dup = min_norm_weights(duplicated @ duplicated.T)
        m = jacobian.shape[0]
        check_simplex(dup, m + 1)
        assert not dup.unique
        assert dup.kkt_residual <= 1e-9
        assert float(dup.weights[i] + dup.weights[m]) == pytest.approx(
            float(solution.weights[i]), abs=1e-12
        )
        others = [k for k in range(m) if k != i]
        torch.testing.assert_close(
            dup.weights[others], solution.weights[others], atol=1e-12, rtol=0
        )
        assert dup.min_norm == pytest.approx(solution.min_norm, rel=1e-12)
    dup = min_norm_weights(gramian_of(torch.eye(3, dtype=F64)[[0, 1, 1, 2]]))
    assert float(dup.weights[0]) == pytest.approx(1 / 3, abs=1e-14)


def test_duplicated_loss_off_support_is_still_unique() -> None:
    # g0 is the min-norm point; g1 (twice) lies on the supporting hyperplane <g0, y> = |g0|^2.
    jacobian = torch.tensor([[1.0, 0.0], [1.0, 3.0], [1.0, 3.0], [2.0, -1.0]], dtype=F64)
    solution = min_norm_weights(jacobian @ jacobian.T)
    assert solution.weights.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert solution.unique


def test_zero_gradient() -> None:
    jacobian = torch.tensor(
        [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, -1.0, 2.0], [0.5, 0.5, 0.5]], dtype=F64
    )
    solution = min_norm_weights(jacobian @ jacobian.T)
    assert solution.weights.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert solution.min_norm == 0.0
    assert solution.support == (1,)
    assert solution.kkt_residual == 0.0
    assert solution.unique  # 0 is not in the convex hull of the other three gradients
    # If 0 is also a convex combination of the others, the weights are not unique.
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]], dtype=F64)
    solution = min_norm_weights(jacobian @ jacobian.T)
    assert solution.weights.tolist() == [0.0, 1.0, 0.0]
    assert not solution.unique
    # All gradients zero.
    solution = min_norm_weights(torch.zeros(4, 4, dtype=F64))
    check_simplex(solution, 4)
    assert solution.weights.max() == 1.0
    assert solution.min_norm == 0.0
    assert not solution.unique


def test_vertex_solution_is_exact() -> None:
    solution = min_norm_weights(gramian_of([[1.0, 0.0], [3.0, 1.0]]))
    assert solution.weights.tolist() == [1.0, 0.0]
    assert solution.unique
    assert solution.min_norm == 1.0
    jacobian = [[1.0, 0.0, 0.0], [3.0, 1.0, 0.0], [2.0, 0.0, 1.0], [1.5, -2.0, 1.0]]
    solution = min_norm_weights(gramian_of(jacobian))
    assert solution.weights.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert solution.support == (0,)
    assert solution.unique
    assert solution.kkt_residual == 0.0
    # A small gradient aligned with a large one.
    solution = min_norm_weights(gramian_of([[0.1, 0.2, 0.0], [10.0, 20.0, 0.0], [0.3, 0.5, 1.0]]))
    assert solution.weights.tolist() == [1.0, 0.0, 0.0]


def test_all_equal_gradients_not_unique() -> None:
    for m in (3, 5):
        solution = min_norm_weights(gramian_of([[1.0, -1.0, 2.0]] * m))
        check_simplex(solution, m)
        assert not solution.unique
        assert solution.min_norm == pytest.approx(math.sqrt(6.0), rel=1e-14)
        assert solution.kkt_residual <= 1e-15


def test_one_loss_and_dtypes() -> None:
    solution = min_norm_weights(torch.tensor([[4.0]]))
    assert solution.weights.tolist() == [1.0]
    assert solution.weights.dtype == F64
    assert solution.min_norm == 2.0
    assert solution.unique
    assert solution.support == (0,)
    assert solution.kkt_residual == 0.0
    assert min_norm_weights(torch.tensor([[0.0]])).weights.tolist() == [1.0]
    as_int = min_norm_weights(torch.tensor([[18, -22], [-22, 38]]))
    as_f32 = min_norm_weights(torch.tensor([[18, -22], [-22, 38]], dtype=torch.float32))
    assert as_int.weights.dtype == as_f32.weights.dtype == F64
    torch.testing.assert_close(as_int.weights, as_f32.weights, atol=1e-12, rtol=0)


def test_symmetrised_before_solving() -> None:
    gramian = gramian_of(torch.eye(3, dtype=F64) + 0.1)
    noisy = gramian.clone()
    noisy[0, 1] += 1e-9
    solution = min_norm_weights(noisy)
    reference = min_norm_weights(gramian)
    torch.testing.assert_close(solution.weights, reference.weights, atol=1e-8, rtol=0)


def test_iteration_cap_returns_feasible_point() -> None:
    gen = torch.Generator().manual_seed(14)
    jacobian = random_jacobian(gen, 40, 30, "gauss")  # rank-deficient: starts from a vertex
    gramian = jacobian @ jacobian.T
    scale = float(gramian.diagonal().max())
    capped = _solve(gramian / scale, max_iter=3)
    assert bool((capped >= 0).all())
    assert float(capped.sum()) == pytest.approx(1.0, abs=1e-14)
    assert _kkt_residual(gramian, capped, scale) > 1e-3  # honest: far from optimal
    full = min_norm_weights(gramian)
    assert full.kkt_residual <= 1e-9
    assert float(capped @ gramian @ capped) >= full.min_norm**2


# --------------------------------------------------------------------------------------------
# TorchJD cross-check and size


def test_torchjd_mgda_agrees() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    gen = torch.Generator().manual_seed(15)
    for _ in range(3):
        jacobian = torch.randn(5, 10, generator=gen, dtype=F64) + 0.5 * torch.randn(
            1, 10, generator=gen, dtype=F64
        )
        gramian = jacobian @ jacobian.T
        scale = float(gramian.diagonal().max())
        ours = min_norm_weights(gramian)
        theirs = aggregation.MGDAWeighting(epsilon=1e-6, max_iters=500)(gramian)
        torch.testing.assert_close(theirs, ours.weights, atol=2e-2, rtol=0)
        assert float(theirs @ gramian @ theirs) == pytest.approx(ours.min_norm**2, rel=1e-2)
        assert float(theirs @ gramian @ theirs) >= ours.min_norm**2 * (1 - 1e-12)
        their_kkt = _kkt_residual(gramian, theirs.to(F64), scale)
        assert ours.kkt_residual <= 1e-12
        assert their_kkt > 1e3 * max(ours.kkt_residual, 1e-15)


@pytest.mark.parametrize("n", [1000, 50])
def test_m256(n: int) -> None:
    gen = torch.Generator().manual_seed(16)
    jacobian = torch.randn(256, n, generator=gen, dtype=F64)
    gramian = jacobian @ jacobian.T
    solution = min_norm_weights(gramian)
    check_simplex(solution, 256)
    assert solution.kkt_residual <= 1e-9
    if n == 1000:
        assert solution.unique
    else:  # 256 points in R^50: the origin is in their convex hull
        assert solution.min_norm <= 1e-6 * math.sqrt(float(gramian.diagonal().max()))
        assert not solution.unique
        assert len(solution.support) <= 51


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("gramian", "match"),
    [
        (torch.ones(2, 3), r"square matrix; found shape \(2, 3\)"),
        (torch.ones(3), r"square matrix; found shape \(3,\)"),
        (torch.ones(2, 2, 2), r"square matrix; found shape \(2, 2, 2\)"),
        (torch.ones(0, 0), r"at least one row .*found shape \(0, 0\)"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), "finite entries; found 2"),
        (torch.tensor([[1.0, 0.0], [0.0, float("inf")]]), "finite entries; found 1"),
        (torch.tensor([[1.0, 0.5], [-0.5, 1.0]]), "symmetric; found relative asymmetry"),
        (torch.tensor([[1.0, 0.0], [0.0, -1.0]]), r"positive semi-definite.*gramian\[1, 1\]"),
        (torch.eye(2, dtype=torch.complex128), "real matrix; found dtype torch.complex128"),
    ],
)
def test_bad_input(gramian: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        min_norm_weights(gramian)


def test_not_a_tensor() -> None:
    with pytest.raises(TypeError, match=r"torch.Tensor; found list"):
        min_norm_weights([[1.0]])  # type: ignore[arg-type]
