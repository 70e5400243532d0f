"""Weighting methods: published reference values, agreement with TorchJD's MGDA, and one shared
property suite (finite, permutation-equivariant, scale behaviour, non-conflicting) over every
available method, on seeded Gramians of chosen rank."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from gradtool.errors import GradtoolError
from gradtool.linalg.solvers import Solved
from gradtool.weightings import WEIGHTINGS, WeightingMethod, parse_methods

G_REF = torch.tensor([[18.0, -22.0], [-22.0, 38.0]], dtype=torch.float64)

# Published values for G = J J^T, J = [[-4, 1, 1], [6, 1, 1]] (TorchJD's documentation), and
# the exact values: the published UPGrad / DualProj carry the error of TorchJD's default ridge
# (1e-4 on the trace-normalised Gramian); gradtool's active set solves them exactly.
REFERENCE = {
    "mgda": [0.6, 0.4],
    "mean": [0.5, 0.5],
    "sum": [1.0, 1.0],
    "upgrad": [1.1109, 0.7894],
    "pcgrad": [2.2222, 1.5789],
    "imtl_g": [0.5923, 0.4077],
    "dualproj": [0.6109, 0.5],
}
# PCGrad on two conflicting gradients: g_i - <g_i, g_j> / |g_j|^2 g_j, i.e. weights
# (1 + 22/38, 1 + 22/18) = (30/19, 20/9) summed in loss order; UPGrad averages the same two
# projections (m = 2), so it is half of PCGrad; DualProj projects the mean (1/2, 1/2): the
# constraint on loss 1 is active, and minimising over w_0 gives w_0 = 22/36.
EXACT = {
    "mgda": [0.6, 0.4],
    "pcgrad": [20 / 9, 30 / 19],
    "upgrad": [10 / 9, 15 / 19],
    "dualproj": [11 / 18, 0.5],
}

# Every method is solved to round-off now (no iterative third-party solver).
LOOSE: dict[str, float] = {}
TIGHT = 1e-9

SHAPES = [(2, 2), (3, 3), (5, 5), (3, 1), (5, 2), (5, 4)]  # (m, rank)


def sample_gramian(m: int, rank: int, seed: int) -> torch.Tensor:
    """Return J J^T for a seeded J (m x 7) of the given rank, rows of very different norms."""
    gen = torch.Generator().manual_seed(seed)
    left = torch.randn(m, rank, generator=gen, dtype=torch.float64)
    j = left @ torch.randn(rank, 7, generator=gen, dtype=torch.float64)
    j = j * torch.exp(torch.randn(m, 1, generator=gen, dtype=torch.float64))
    return j @ j.T


def direction_gap(g: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """Return |J^T a - J^T b| / (sqrt(max G_ii) max(|a|_1, |b|_1)): 0 when the directions agree.

    Weights need not be unique when G is singular, but the directions they give must agree.
    """
    diff = a - b
    gap = float(diff @ g @ diff).__abs__() ** 0.5
    scale = float(g.diagonal().max()) ** 0.5 * max(float(a.abs().sum()), float(b.abs().sum()))
    return gap / scale


def cases(name: str) -> list[tuple[int, int]]:
    """Return the (m, rank) shapes a method is tested on (full rank only where it needs it)."""
    if WEIGHTINGS[name].needs_full_rank:
        return [(m, r) for m, r in SHAPES if m == r and m <= 3]
    return SHAPES


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_published_reference_values_on_the_design_gramian(name: str) -> None:
    weights = WEIGHTINGS[name](G_REF)
    # 3e-4: the published UPGrad / DualProj values carry TorchJD's default-ridge error.
    torch.testing.assert_close(
        weights, torch.tensor(REFERENCE[name], dtype=torch.float64), atol=3e-4, rtol=0
    )


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_values_on_the_design_gramian(name: str) -> None:
    weights = WEIGHTINGS[name](G_REF)
    torch.testing.assert_close(
        weights, torch.tensor(EXACT[name], dtype=torch.float64), atol=1e-9, rtol=0
    )


def test_imtl_g_projects_the_direction_equally_on_every_unit_gradient() -> None:
    weights = WEIGHTINGS["imtl_g"](G_REF)
    projections = (G_REF @ weights) / G_REF.diagonal().sqrt()  # <d, g_i / |g_i|>
    torch.testing.assert_close(projections[0], projections[1], rtol=1e-12, atol=0)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_published_values_are_torchjds_default_ridge(name: str) -> None:
    pytest.importorskip("quadprog")
    from torchjd.aggregation import DualProjWeighting, UPGradWeighting

    cls = {"upgrad": UPGradWeighting, "dualproj": DualProjWeighting}[name]
    torch.testing.assert_close(
        cls()(G_REF), torch.tensor(REFERENCE[name], dtype=torch.float64), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("m", [2, 3])
def test_our_mgda_agrees_with_torchjd_mgda_where_frank_wolfe_converges(m: int) -> None:
    from torchjd.aggregation import MGDAWeighting

    reference = MGDAWeighting(epsilon=1e-15, max_iters=2000)
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        j = torch.randn(m, 20, generator=gen, dtype=torch.float64) + 0.5
        g = j @ j.T
        torch.testing.assert_close(WEIGHTINGS["mgda"](g), reference(g), atol=1e-10, rtol=0)


@pytest.mark.parametrize("m", [5, 8])
def test_our_mgda_is_never_worse_than_torchjd_frank_wolfe(m: int) -> None:
    from torchjd.aggregation import MGDAWeighting

    reference = MGDAWeighting(epsilon=1e-15, max_iters=1000)
    for seed in range(3):
        g = sample_gramian(m, m, seed)
        ours = WEIGHTINGS["mgda"](g)
        theirs = reference(g)
        ours_norm, theirs_norm = float(ours @ g @ ours), float(theirs @ g @ theirs)
        # Frank-Wolfe zig-zags towards a face of the simplex: it approaches, never undercuts.
        assert ours_norm <= theirs_norm * (1 + 1e-12)
        assert theirs_norm - ours_norm <= 0.25 * ours_norm


def test_torchjd_default_mgda_stops_early_where_ours_is_exact() -> None:
    from torchjd.aggregation import MGDAWeighting

    g = sample_gramian(5, 5, 1)
    ours = WEIGHTINGS["mgda"](g)
    gw = g @ ours
    lam = float(ours @ gw)
    support = ours > 0
    assert float((gw[support] - lam).abs().max()) <= 1e-9 * float(g.diagonal().max())
    default = MGDAWeighting()(g)
    assert float(default @ g @ default) >= lam


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_weights_are_finite_float64_with_one_per_loss(name: str) -> None:
    method = WEIGHTINGS[name]
    for m, rank in cases(name):
        weights = method(sample_gramian(m, rank, seed=m + rank))
        assert weights.dtype == torch.float64 and weights.shape == (m,)
        assert bool(torch.isfinite(weights).all())


@pytest.mark.parametrize("name", [n for n, w in WEIGHTINGS.items() if w.permutation_equivariant])
def test_permuting_the_losses_permutes_the_weights(name: str) -> None:
    method = WEIGHTINGS[name]
    rtol = LOOSE.get(name, TIGHT)
    for m, rank in cases(name):
        g = sample_gramian(m, rank, seed=10 * m + rank)
        perm = torch.randperm(m, generator=torch.Generator().manual_seed(m))
        weights = method(g)
        permuted = method(g[perm][:, perm])
        if rank == m:
            torch.testing.assert_close(permuted, weights[perm], rtol=rtol * 10, atol=rtol)
        assert direction_gap(g[perm][:, perm], permuted, weights[perm]) < rtol * 10


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_scaling_the_gramian_scales_the_weights_as_documented(name: str) -> None:
    method = WEIGHTINGS[name]
    rtol = LOOSE.get(name, TIGHT)
    k = method.scale_exponent
    for m, rank in cases(name):
        g = sample_gramian(m, rank, seed=20 * m + rank)
        weights = method(g)
        for c in (1e-3, 1e3):
            scaled = method(c * g)
            assert direction_gap(g, scaled, c**k * weights) < rtol * 10, (m, rank, c)


@pytest.mark.parametrize("name", [n for n, w in WEIGHTINGS.items() if w.non_conflicting])
def test_non_conflicting_methods_decrease_every_loss(name: str) -> None:
    method = WEIGHTINGS[name]
    for m, rank in cases(name):
        for seed in range(3):
            g = sample_gramian(m, rank, seed)
            weights = method(g)
            rates = g @ weights
            tol = 1e-9 * float(g.diagonal().max()) * float(weights.abs().sum())
            assert float(rates.min()) >= -tol, (m, rank, seed, rates.tolist())


def test_pcgrad_weights_are_reproducible_and_leave_the_global_rng_alone() -> None:
    method = WEIGHTINGS["pcgrad"]
    g = sample_gramian(5, 5, 0)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = method(g)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)
    assert torch.equal(method(g), first)


def test_preference_goes_to_the_methods_that_take_one() -> None:
    method = WEIGHTINGS["upgrad"]
    pref = torch.tensor([1.0, 3.0], dtype=torch.float64)
    plain = method(G_REF)
    weighted = method(G_REF, pref)
    assert not torch.allclose(plain, weighted)
    # The preference is linear in UPGrad: doubling it doubles the weights.
    torch.testing.assert_close(method(G_REF, 2 * pref), 2 * weighted, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="takes no preference"):
        WEIGHTINGS["mgda"](G_REF, pref)
    with pytest.raises(ValueError, match="2 entries"):
        method(G_REF, torch.ones(3, dtype=torch.float64))


def test_solver_failures_become_weighting_errors() -> None:
    def broken(g: np.ndarray, pref: np.ndarray | None) -> Solved:
        raise np.linalg.LinAlgError("Failed to solve the linear system.\nmore")

    def nan(g: np.ndarray, pref: np.ndarray | None) -> Solved:
        return Solved(np.full(g.shape[0], np.nan), 0.0)

    for compute, match in ((broken, "Failed to solve"), (nan, "unusable weights")):
        method = WeightingMethod("x", "X", "test", compute)
        with pytest.raises(GradtoolError, match=match) as info:
            method(G_REF)
        assert info.value.exit_code == 1


def test_method_names_accept_dashes_and_any_case() -> None:
    assert parse_methods("MGDA, imtl-g,Aligned-MTL,mgda") == ("mgda", "imtl_g", "aligned_mtl")
    with pytest.raises(ValueError, match="known methods: mgda, mean, sum, upgrad"):
        parse_methods("mgda,nope")
    with pytest.raises(ValueError, match="no method"):
        parse_methods(" , ")


def test_importing_the_registry_needs_neither_torch_nor_torchjd() -> None:
    code = (
        "import sys; import gradtool.weightings as w; "
        "assert 'mgda' in w.WEIGHTINGS; "
        "assert 'torch' not in sys.modules and 'torchjd' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
