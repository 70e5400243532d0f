"""Weighting methods side by side: every statistic checked against explicit vectors d = J^T w,
and the report's `methods` section. `gradtool pareto --method/--compare/--preference`:
tests/e2e/test_compare_cli.py; direction statistics alone: tests/unit/linalg/test_direction.py."""

from __future__ import annotations

import pytest
import torch

from gradtool.analysis import ParetoOptions, build_report
from gradtool.analysis.compare import compare_methods, methods_verdict
from gradtool.engine import EngineResult
from gradtool.errors import UsageError
from gradtool.linalg.direction import direction_stats, numerical_rank
from gradtool.weightings import WEIGHTINGS

NAMES = ["a", "b", "c"]
J = torch.tensor(
    [[3.0, 0.5, -1.0, 2.0], [-2.0, 1.0, 0.5, -1.5], [0.2, -0.4, 2.5, 0.3]], dtype=torch.float64
)
G = J @ J.T


def brute_force(j: torch.Tensor, w: torch.Tensor) -> tuple[float, list[float], list[float]]:
    """Return |d|, cos(d, g_i) and <g_i, d> computed from the vectors d = J^T w and g_i."""
    d = j.T @ w
    cosines = [float(g @ d / (g.norm() * d.norm())) for g in j]
    return float(d.norm()), cosines, [float(g @ d) for g in j]


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_direction_statistics_match_explicit_vectors(name: str) -> None:
    results, _ = compare_methods(G, [1.0, 1.0, 1.0], NAMES, methods=(name,))
    (result,) = results
    w = torch.tensor(list(result.loss_weights.values()), dtype=torch.float64)
    norm, cosines, derivs = brute_force(J, w)
    assert result.norm == pytest.approx(norm, rel=1e-12)
    for i, n in enumerate(NAMES):
        rate = result.directional_derivatives[n]
        tol = 1e-9 * float(G.diagonal().max()) * float(w.abs().sum())
        assert rate == pytest.approx(derivs[i], abs=tol)
        cos = result.cosine[n]
        assert cos is not None and cos == pytest.approx(cosines[i], abs=1e-9)
    assert result.decreases_all == all(r >= -1e-9 for r in derivs)
    assert result.method == name and result.name == WEIGHTINGS[name].display


def test_decreases_all_is_scale_free() -> None:
    w = WEIGHTINGS["mgda"](G)
    for c in (1e-8, 1.0, 1e8):
        assert direction_stats(c * G, w).decreases_all


def test_normalised_methods_weigh_scaled_gradients() -> None:
    losses = [0.5, 2.0, 4.0]
    (result,), _ = compare_methods(G, losses, NAMES, methods=("mean",), normalize="loss")
    scaled = J / torch.tensor(losses, dtype=torch.float64)[:, None]
    d = scaled.T @ torch.full((3,), 1 / 3, dtype=torch.float64)
    assert result.weights == pytest.approx(dict.fromkeys(NAMES, 1 / 3))
    assert list(result.loss_weights.values()) == pytest.approx([1 / 3 / v for v in losses])
    assert result.norm == pytest.approx(float(d.norm()), rel=1e-12)
    assert list(result.directional_derivatives.values()) == pytest.approx((J @ d).tolist())


def test_mgda_row_matches_the_pareto_section() -> None:
    results, _ = compare_methods(G, [1.0] * 3, NAMES, methods=("mgda", "sum"), normalize="l2")
    from gradtool.linalg.pareto import pareto_solution

    sol = pareto_solution(G, [1.0] * 3, NAMES, normalize="l2")
    assert list(results[0].weights.values()) == pytest.approx(sol.weights.tolist(), abs=1e-12)
    assert results[0].norm == pytest.approx(sol.min_norm, rel=1e-9)
    assert [r.method for r in results] == ["mgda", "sum"]


def test_compare_lists_every_available_method_after_the_requested_ones() -> None:
    results, warnings = compare_methods(G, [1.0] * 3, NAMES, methods=("upgrad",), compare=True)
    names = [r.method for r in results]
    expected = [n for n in WEIGHTINGS if n != "upgrad"]
    assert names == ["upgrad", *expected]
    assert not warnings


def test_compare_runs_every_method_with_its_certificate() -> None:
    results, warnings = compare_methods(G, [1.0] * 3, NAMES, compare=True)
    assert [r.method for r in results] == list(WEIGHTINGS)
    assert not warnings
    for r in results:
        assert r.certified and r.residual is not None and r.residual <= 1e-8, r.method
    pc = next(r for r in results if r.method == "pcgrad")
    assert set(pc.diagnostics["removed"]) == set(NAMES)
    assert all(0.0 <= v <= 1.0 for v in pc.diagnostics["removed"].values())


def test_a_method_that_does_not_certify_is_marked_and_draws_no_conclusion() -> None:
    # g_c = 0: Nash-MTL's G w = 1/w has no solution
    g = torch.tensor([[2.0, -1.0, 0.0], [-1.0, 3.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    results, warnings = compare_methods(g, [1.0] * 3, NAMES, methods=("mgda", "nash_mtl"))
    nash = results[1]
    assert not nash.certified and nash.residual is not None and nash.residual > 1e-8
    assert any("nash_mtl does not certify" in w for w in warnings)
    verdict = methods_verdict(results, NAMES)
    assert any("nash_mtl did not certify" in line for line in verdict)
    assert not any("nash_mtl raises" in line or "lower every loss" in line for line in verdict)


def test_preference_is_checked_and_passed_on() -> None:
    (plain,), _ = compare_methods(G, [1.0] * 3, NAMES, methods=("dualproj",))
    (weighted,), _ = compare_methods(
        G, [1.0] * 3, NAMES, methods=("dualproj",), preference=(1, 1, 5)
    )
    assert weighted.preference == {"a": 1.0, "b": 1.0, "c": 5.0} and plain.preference is None
    assert weighted.weights != plain.weights
    with pytest.raises(UsageError, match="2 values but there are 3 losses"):
        compare_methods(G, [1.0] * 3, NAMES, methods=("upgrad",), preference=(1, 2))
    with pytest.raises(UsageError, match="positive"):
        compare_methods(G, [1.0] * 3, NAMES, methods=("upgrad",), preference=(1, 0, 1))
    with pytest.raises(UsageError, match=r"none of methods=\('mgda',\) takes one"):
        compare_methods(G, [1.0] * 3, NAMES, methods=("mgda",), preference=(1, 1, 1))
    results, _ = compare_methods(G, [1.0] * 3, NAMES, compare=True, preference=(1, 1, 1))
    assert all((r.preference is not None) == WEIGHTINGS[r.method].takes_preference for r in results)


def test_dependent_gradients_are_named_only_where_a_method_does_not_certify() -> None:
    j = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    assert numerical_rank(j @ j.T) == 2 and numerical_rank(G) == 3
    # rank 2 < 3, but no z >= 0 has G z = 0: G w = w^(-1/2) still has its solution
    results, warnings = compare_methods(j @ j.T, [1.0] * 3, NAMES, methods=("mgda", "fairgrad"))
    assert results[1].certified and not warnings
    # a zero gradient: no solution, and the warning says why
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    results, warnings = compare_methods(z @ z.T, [1.0] * 3, NAMES, methods=("mgda", "nash_mtl"))
    assert not results[1].certified and results[1].decreases_all is None
    assert any("nash_mtl does not certify" in w and "rank 2 < 3" in w for w in warnings)


def _engine_result() -> EngineResult:
    m = 3
    return EngineResult(
        loss_names=NAMES,
        loss_values=[1.0, 2.0, 3.0],
        param_names=["w"],
        param_numels=[4],
        gramians=G.reshape(1, m, m),
        max_abs=[3.0, 2.0, 2.5],
        nonfinite=torch.zeros(1, m, dtype=torch.int64),
        reached=torch.ones(1, m, dtype=torch.bool),
        batch_gramians=None,
        num_batches=1,
        strategy="batched",
    )


def test_report_keeps_pareto_as_mgda_and_lists_methods() -> None:
    options = ParetoOptions(methods=("mean", "mgda"))
    body = build_report(_engine_result(), command="pareto", pareto=options).to_dict()
    assert body["pareto"]["method"] == "mgda"
    assert [m["method"] for m in body["methods"]] == ["mean", "mgda"]
    fields = {
        "method",
        "name",
        "normalize",
        "preference",
        "weights",
        "loss_weights",
        "norm",
        "cosine",
        "directional_derivatives",
        "decreases_all",
        "residual",
        "certified",
        "diagnostics",
        "zero_direction",
    }
    assert all(set(m) == fields for m in body["methods"])
    assert body["methods"][1]["weights"] == pytest.approx(body["pareto"]["weights"])
    inspect = build_report(_engine_result(), command="inspect").to_dict()
    assert "methods" not in inspect and "pareto" not in inspect


def test_a_rate_of_exactly_zero_is_not_called_lowering() -> None:
    g = torch.tensor([[18.0, -22.0], [-22.0, 38.0]], dtype=torch.float64)
    results, _ = compare_methods(g, [1.0, 1.0], ["x", "y"], methods=("mgda", "dualproj"))
    dualproj = results[1]
    assert dualproj.directional_derivatives["x"] == 0.0 and dualproj.decreases_all
    verdict = methods_verdict(results, ["x", "y"])
    assert "dualproj leaves some loss unchanged to first order (a rate of 0) and raises none" in (
        verdict
    )
    assert "every other method compared (mgda) lowers every loss to first order" in verdict
