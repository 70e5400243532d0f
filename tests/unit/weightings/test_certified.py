"""Every weighting method solved exactly and certified: properties over seeded Gramians of chosen
rank and condition (up to 1e8) with m up to 64, scale-freedom over 24 orders of magnitude,
duplicated losses, zero gradients, each method's own promise, and TorchJD as a cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradtool.linalg import solvers
from gradtool.weightings import WEIGHTINGS
from gradtool.weightings.registry import pcgrad_order

NAMES = list(WEIGHTINGS)
FULL_RANK_ONLY = [n for n, w in WEIGHTINGS.items() if w.needs_full_rank]
# (m, rank, condition number of the nonzero spectrum)
SHAPES = [(2, 2, 10.0), (3, 3, 1e3), (5, 5, 1e8), (8, 3, 1e2), (12, 12, 1e4), (20, 7, 1e6)]
LARGE = [(64, 64, 1e4), (64, 16, 1e3)]


def gramian(m: int, rank: int, cond: float, seed: int) -> np.ndarray:
    """Return Q diag(l) Q^T with `rank` eigenvalues log-spaced from 1 down to 1 / cond."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((m, m)))
    lam = np.zeros(m)
    lam[:rank] = np.logspace(0, -math.log10(cond), rank) if rank > 1 else 1.0
    g = (q * lam) @ q.T
    return (g + g.T) / 2


def shapes(name: str, large: bool = False) -> list[tuple[int, int, float]]:
    chosen = SHAPES + (LARGE if large else [])
    if name in FULL_RANK_ONLY:
        # G w = w^(-1/alpha) is solvable exactly iff no z >= 0, z != 0 has G z = 0; keep to
        # full rank with moderate condition, where the solution is well determined.
        return [(m, r, c) for m, r, c in chosen if m == r] + ([(64, 64, 1e8)] if large else [])
    return chosen


def gap(g: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Return |J^T (a - b)| / (sqrt(max G_ii) max(|a|_1, |b|_1)): 0 when the directions agree."""
    d = a - b
    scale = math.sqrt(float(np.max(np.diag(g)))) * max(np.abs(a).sum(), np.abs(b).sum(), 1e-300)
    return math.sqrt(abs(float(d @ g @ d))) / scale


@pytest.mark.parametrize("name", NAMES)
def test_every_method_certifies_on_full_rank_and_deficient_gramians(name: str) -> None:
    method = WEIGHTINGS[name]
    for m, rank, cond in shapes(name, large=True):
        if name == "aligned_mtl" and cond > 1e6:
            continue  # its eigenvectors are only determined to eps * cond: see the next test
        solved = method.solve(gramian(m, rank, cond, seed=m + rank))
        assert solved.weights.shape == (m,) and np.isfinite(solved.weights).all()
        assert solved.certified, (name, m, rank, cond, solved.residual)


@pytest.mark.parametrize("name", NAMES)
def test_weights_scale_as_documented_from_1e_minus_12_to_1e12(name: str) -> None:
    method = WEIGHTINGS[name]
    k = method.scale_exponent
    for m, rank, cond in shapes(name):
        g = gramian(m, rank, cond, seed=3 * m + rank)
        solved = method.solve(g)
        base = solved.weights
        for c in (1e-12, 1e-6, 1e6, 1e12):
            scaled_solved = method.solve(c * g)
            scaled = scaled_solved.weights
            if not (name == "aligned_mtl" and cond > 1e6):  # see the condition-1e8 test below
                assert scaled_solved.certified == solved.certified, (name, m, rank, cond, c)
            if rank == m:  # unique weights
                np.testing.assert_allclose(scaled, c**k * base, rtol=1e-7, atol=1e-9 * c**k)
            else:  # weights need not be unique, the direction d = J^T w is
                assert gap(g, scaled / c**k, base) < 1e-8, (m, rank, cond, c)


@pytest.mark.parametrize("name", [n for n, w in WEIGHTINGS.items() if w.permutation_equivariant])
def test_permuting_the_losses_permutes_the_direction(name: str) -> None:
    method = WEIGHTINGS[name]
    for m, rank, cond in shapes(name):
        g = gramian(m, rank, cond, seed=5 * m + rank)
        perm = np.random.default_rng(m).permutation(m)
        base = method.solve(g).weights
        permuted = method.solve(g[np.ix_(perm, perm)]).weights
        assert gap(g[np.ix_(perm, perm)], permuted, base[perm]) < 1e-7, (m, rank, cond)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in FULL_RANK_ONLY])
def test_a_duplicated_loss_is_certified_and_gives_a_finite_direction(name: str) -> None:
    g = gramian(4, 4, 1e2, seed=7)
    dup = np.zeros((5, 5))
    idx = [0, 1, 2, 3, 3]
    dup[:, :] = g[np.ix_(idx, idx)]
    solved = WEIGHTINGS[name].solve(dup)
    assert np.isfinite(solved.weights).all()
    assert solved.certified, solved.residual


@pytest.mark.parametrize("name", NAMES)
def test_a_zero_gradient_is_handled_without_crashing(name: str) -> None:
    g = gramian(3, 3, 10.0, seed=11)
    zero = np.zeros((4, 4))
    zero[:3, :3] = g
    solved = WEIGHTINGS[name].solve(zero)
    if name in ("nash_mtl", "fairgrad"):  # G w = w^(-1/alpha) has no solution with g_4 = 0
        assert not solved.certified
    else:
        assert np.isfinite(solved.weights).all()


@pytest.mark.parametrize("name", [n for n, w in WEIGHTINGS.items() if w.non_conflicting])
def test_non_conflicting_methods_keep_their_promise(name: str) -> None:
    for m, rank, cond in shapes(name, large=True):
        g = gramian(m, rank, cond, seed=m * rank)
        w = WEIGHTINGS[name].solve(g).weights
        rates = g @ w
        tol = 1e-10 * float(np.max(np.diag(g))) * float(np.abs(w).sum())
        assert float(rates.min()) >= -tol, (name, m, rank, cond)


def test_imtl_g_projects_the_direction_equally_on_every_unit_gradient() -> None:
    for m, rank, cond in [(3, 3, 10.0), (12, 12, 1e4), (64, 64, 1e3)]:
        g = gramian(m, rank, cond, seed=m)
        w = WEIGHTINGS["imtl_g"].solve(g).weights
        projections = (g @ w) / np.sqrt(np.diag(g))
        np.testing.assert_allclose(projections, projections[0], rtol=1e-8)
        assert abs(w.sum() - 1.0) < 1e-12


def test_nash_mtl_is_the_bargaining_solution() -> None:
    for m, cond in [(2, 10.0), (8, 1e3), (64, 1e4)]:
        g = gramian(m, m, cond, seed=m)
        w = WEIGHTINGS["nash_mtl"].solve(g).weights
        assert (w > 0).all()
        np.testing.assert_allclose(w * (g @ w), 1.0, rtol=1e-10)


def test_fairgrad_solves_its_alpha_fair_condition() -> None:
    g = gramian(6, 6, 1e2, seed=2)
    for alpha in (0.5, 1.0, 2.0, 5.0):
        solved = solvers.fairgrad(g, alpha)
        w = solved.weights
        np.testing.assert_allclose(g @ w, w ** (-1.0 / alpha), rtol=1e-10)


def test_cagrad_minimises_its_worst_case_objective() -> None:
    """Compare with a dense random search over the simplex: nothing beats the solution."""
    c = 0.5
    for m, seed in [(3, 0), (5, 1)]:
        g = gramian(m, m, 1e2, seed=seed)
        p = np.full(m, 1.0 / m)
        b = g @ p
        rho = c * math.sqrt(float(p @ b))

        def objective(
            w: np.ndarray, b: np.ndarray = b, rho: float = rho, g: np.ndarray = g
        ) -> float:
            return float(b @ w) + rho * math.sqrt(max(float(w @ g @ w), 0.0))

        solved = solvers.cagrad(g, c)
        # weights = p + (rho / t) w*  ->  recover w* on the simplex
        w_star = solved.weights - p
        w_star = w_star / w_star.sum()
        best = objective(w_star)
        samples = np.random.default_rng(seed).dirichlet(np.ones(m), size=20000)
        assert min(objective(s) for s in samples) >= best - 1e-9
        assert solved.certified


def test_aligned_mtl_balances_the_singular_values() -> None:
    g = gramian(6, 4, 1e3, seed=4)
    solved = WEIGHTINGS["aligned_mtl"].solve(g)
    lam = np.linalg.eigvalsh(g)
    smallest = min(v for v in lam if v > 1e-12)
    # d = J^T B p: on the range of G the aligned Gramian B G B has every eigenvalue l_min
    assert solved.certified
    assert solved.weights.shape == (6,)
    assert smallest > 0


def test_pcgrad_diagnostics_match_explicit_vectors() -> None:
    rng = np.random.default_rng(0)
    j = rng.standard_normal((4, 9))
    j[1] = -0.8 * j[0] + 0.3 * rng.standard_normal(9)  # a strong conflict
    g = j @ j.T
    solved = solvers.pcgrad(g, pcgrad_order)
    order = pcgrad_order(4)
    total = np.zeros(9)
    for i in range(4):
        v = j[i].copy()
        for k in order[i]:
            if k != i and v @ j[k] < 0:
                v = v - (v @ j[k]) / (j[k] @ j[k]) * j[k]
        total += v
        removed = np.linalg.norm(j[i] - v) / np.linalg.norm(j[i])
        assert solved.details["removed"][i] == pytest.approx(removed, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(solved.weights @ j, total, rtol=1e-9, atol=1e-12)
    rates = j @ total
    expected = [k for k in range(4) if rates[k] < -1e-9 * np.abs(solved.weights).sum()]
    assert solved.details["conflicts"] == expected


def test_pcgrad_may_leave_a_conflict_with_three_losses() -> None:
    """PCGrad removes pairwise conflicts one at a time; the sum can still raise a loss."""
    found = False
    for seed in range(200):
        g = gramian(3, 3, 1e3, seed=seed)
        solved = solvers.pcgrad(g, pcgrad_order)
        if solved.details["conflicts"]:
            k = solved.details["conflicts"][0]
            assert float((g @ solved.weights)[k]) < 0
            found = True
            break
    assert found


def test_aligned_mtl_at_condition_1e8_is_honest_about_its_accuracy() -> None:
    """The smallest eigenvector of a Gramian of condition 1e8 is determined to about eps * 1e8,
    so B = sqrt(l_min) V L^(-1/2) V^T is too: the residual says ~1e-8, never 1e-15."""
    solved = WEIGHTINGS["aligned_mtl"].solve(gramian(5, 5, 1e8, seed=10))
    assert 1e-12 < solved.residual < 1e-6


def test_a_solution_that_does_not_certify_says_so() -> None:
    g = np.array([[1.0, 0.0], [0.0, 0.0]])  # g_2 = 0: G w = 1/w has no solution
    solved = WEIGHTINGS["nash_mtl"].solve(g)
    assert not solved.certified and solved.residual > 1e-8


# --- TorchJD as a cross-check ---------------------------------------------------------------------

TORCHJD_TOL = 1e-4


def _torchjd(name: str, g: torch.Tensor) -> torch.Tensor:
    agg = pytest.importorskip("torchjd.aggregation")
    if name == "upgrad":
        pytest.importorskip("quadprog")
        from torchjd.linalg import QuadprogProjector

        return agg.UPGradWeighting(projector=QuadprogProjector(reg_eps=1e-12))(g)
    if name == "dualproj":
        pytest.importorskip("quadprog")
        from torchjd.linalg import QuadprogProjector

        return agg.DualProjWeighting(projector=QuadprogProjector(reg_eps=1e-12))(g)
    if name == "imtl_g":
        return agg.IMTLGWeighting()(g)
    if name == "aligned_mtl":
        return agg.AlignedMTLWeighting()(g)
    if name == "pcgrad":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return agg.PCGradWeighting()(g)
    if name == "cagrad":
        pytest.importorskip("cvxpy")
        return agg.CAGradWeighting(c=0.5, norm_eps=0.0)(g)
    if name == "fairgrad":
        pytest.importorskip("scipy")
        return agg.FairGradWeighting(alpha=2.0)(g)
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name", ["upgrad", "dualproj", "imtl_g", "aligned_mtl", "pcgrad", "cagrad", "fairgrad"]
)
def test_weights_agree_with_torchjd_where_its_solvers_converge(name: str) -> None:
    """Well-conditioned Gramians scaled to |G|_F ~ 1, where TorchJD's absolute tolerances hold."""
    import warnings

    for m, seed in [(2, 0), (3, 1), (5, 2)]:
        g = gramian(m, m, 10.0, seed=seed)
        ours = WEIGHTINGS[name].solve(g).weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = _torchjd(name, torch.from_numpy(g)).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=TORCHJD_TOL, atol=TORCHJD_TOL)


def test_nash_mtl_is_far_more_exact_than_torchjds_iteration() -> None:
    """Nash-MTL with 20 losses (condition 3e3): TorchJD stops its iteration once
    |G w - 1/w| < 1e-3; the Newton method here goes on to round-off."""
    agg = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("cvxpy")
    import warnings

    g = gramian(20, 20, 3e3, seed=20)
    ours = WEIGHTINGS["nash_mtl"].solve(g)
    assert ours.certified
    eigenvalues, vectors = np.linalg.eigh(g)
    factor = torch.from_numpy(vectors * np.sqrt(np.clip(eigenvalues, 0, None)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = agg.NashMTL(n_tasks=20, max_norm=0.0).weighting(factor).numpy()
    their_residual = float(np.max(np.abs(theirs * (g @ theirs) - 1.0)))
    assert ours.residual <= 1e-12
    assert their_residual > 100 * ours.residual


def test_method_names_ignore_case_dashes_and_underscores() -> None:
    from gradtool.weightings import check_methods, parse_methods

    assert parse_methods("imtlg,IMTL-G,imtl_g,NashMTL,aligned-mtl") == (
        "imtl_g",
        "nash_mtl",
        "aligned_mtl",
    )
    assert check_methods(["Imtl-G", "MEAN", "dual_proj"]) == ("imtl_g", "mean", "dualproj")
