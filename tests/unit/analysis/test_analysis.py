"""Report building from Gramians: layers, unused, verdicts, JSON, and loss-order properties."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _models import CONTRACT_KEYS

from gradtool.analysis import ParetoOptions, build_report
from gradtool.engine import EngineResult
from gradtool.errors import GradientError

PARAMS = ["trunk.0.weight", "trunk.0.bias", "head_a.weight", "head_b.weight"]
NUMELS = [6, 2, 3, 3]


def result_from_blocks(
    blocks: list[torch.Tensor],
    names: list[str],
    reached: torch.Tensor | None = None,
    batch_gramians: torch.Tensor | None = None,
) -> EngineResult:
    """Return an EngineResult whose Gramians come from explicit Jacobian blocks (m x numel)."""
    m = blocks[0].shape[0]
    grams = torch.stack([b @ b.T for b in blocks])
    if reached is None:
        reached = torch.stack([b.abs().sum(dim=1) > 0 for b in blocks])
    return EngineResult(
        loss_names=names,
        loss_values=[1.0 + i for i in range(m)],
        param_names=PARAMS[: len(blocks)],
        param_numels=[b.shape[1] for b in blocks],
        gramians=grams,
        max_abs=torch.cat(blocks, dim=1).abs().amax(dim=1).tolist(),
        nonfinite=torch.zeros(len(blocks), m, dtype=torch.int64),
        reached=reached,
        batch_gramians=batch_gramians,
        num_batches=1 if batch_gramians is None else batch_gramians.shape[0],
        strategy="batched",
    )


def blocks_for(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    trunk_w = torch.randn(3, 6, generator=g, dtype=torch.float64)
    trunk_w[1] = -trunk_w[0] + 0.1 * trunk_w[1]  # losses a and b conflict in the trunk
    trunk_b = torch.randn(3, 2, generator=g, dtype=torch.float64)
    head_a = torch.zeros(3, 3, dtype=torch.float64)
    head_a[0] = torch.randn(3, generator=g, dtype=torch.float64)
    head_b = torch.zeros(3, 3, dtype=torch.float64)
    head_b[1] = 5 * torch.randn(3, generator=g, dtype=torch.float64)
    return [trunk_w, trunk_b, head_a, head_b]


def test_report_numbers_against_the_concatenated_jacobian() -> None:
    blocks = blocks_for()
    report = build_report(result_from_blocks(blocks, ["a", "b", "c"]), command="inspect")
    j = torch.cat(blocks, dim=1)
    for i, name in enumerate("abc"):
        assert report.gradients[name].norm == pytest.approx(float(j[i].norm()), rel=1e-12)
        assert report.gradients[name].max_abs == pytest.approx(float(j[i].abs().max()))
        for k in range(3):
            assert report.dot[i][k] == pytest.approx(float(j[i] @ j[k]), rel=1e-12)
            cos = float(j[i] @ j[k] / (j[i].norm() * j[k].norm()))
            assert report.cosine[i][k] == pytest.approx(cos, abs=1e-12)
    assert report.unused == {
        "a": ["head_b.weight"],
        "b": ["head_a.weight"],
        "c": ["head_a.weight", "head_b.weight"],
    }
    assert report.unreached == []
    assert report.cosine[0][1] < 0
    assert any("a and b conflict" in line for line in report.verdict)


def test_layers_group_blocks_by_module_and_sum_their_gramians() -> None:
    blocks = blocks_for()
    report = build_report(result_from_blocks(blocks, ["a", "b", "c"]), command="inspect", depth=1)
    assert [layer.name for layer in report.layers] == ["trunk", "head_a", "head_b"]
    trunk = torch.cat(blocks[:2], dim=1)
    layer = report.layers[0]
    assert layer.numel == 8
    assert layer.parameters == ["trunk.0.weight", "trunk.0.bias"]
    for i, name in enumerate("abc"):
        assert layer.norms[name] == pytest.approx(float(trunk[i].norm()), rel=1e-12)
    assert layer.cosine[0][1] == pytest.approx(
        float(trunk[0] @ trunk[1] / (trunk[0].norm() * trunk[1].norm())), abs=1e-12
    )
    head_a = report.layers[1]
    assert head_a.cosine[1][1] is None  # loss b has no gradient there: undefined, not NaN


def test_permuting_losses_permutes_every_matrix() -> None:
    blocks = blocks_for(1)
    base = build_report(
        result_from_blocks(blocks, ["a", "b", "c"]), command="pareto", pareto=ParetoOptions()
    )
    perm = [2, 0, 1]
    names = [["a", "b", "c"][p] for p in perm]
    swapped = build_report(
        result_from_blocks([b[perm] for b in blocks], names),
        command="pareto",
        pareto=ParetoOptions(),
    )
    for key in ("dot", "cosine", "magnitude_similarity"):
        mat, mat2 = getattr(base, key), getattr(swapped, key)
        for i in range(3):
            for k in range(3):
                assert mat2[i][k] == pytest.approx(mat[perm[i]][perm[k]], abs=1e-12)
    assert base.pareto is not None and swapped.pareto is not None
    for name in "abc":
        assert swapped.pareto.weights[name] == pytest.approx(base.pareto.weights[name], abs=1e-9)


def test_duplicated_loss_gives_non_unique_pareto_weights() -> None:
    blocks = [torch.cat([b[:2], b[:1]]) for b in blocks_for(2)]  # loss c duplicates a
    report = build_report(
        result_from_blocks(blocks, ["a", "b", "a_again"]), command="pareto", pareto=ParetoOptions()
    )
    assert report.pareto is not None and not report.pareto.unique
    assert report.cosine[0][2] == pytest.approx(1.0)
    assert any("not unique" in line for line in report.verdict)


def test_json_has_the_contract_keys_and_nulls_for_undefined() -> None:
    blocks = blocks_for()
    blocks = [torch.cat([b, torch.zeros(1, b.shape[1], dtype=torch.float64)]) for b in blocks]
    grams = torch.stack([torch.eye(4, dtype=torch.float64), -torch.eye(4, dtype=torch.float64)])
    report = build_report(
        result_from_blocks(blocks, ["a", "b", "c", "zero"], batch_gramians=grams.abs()),
        command="pareto",
        pareto=ParetoOptions(),
    )
    doc = json.loads(report.to_json(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    for key in [*CONTRACT_KEYS, "batch_stats", "pareto"]:
        assert key in doc, key
    assert doc["schema_version"] == 1
    assert doc["losses"] == ["a", "b", "c", "zero"]
    assert doc["cosine"][3] == [None] * 4
    assert doc["parameters"] == {"count": 4, "numel": 14}
    assert set(doc["pareto"]) >= {
        "method",
        "normalize",
        "weights",
        "min_norm",
        "directional_derivatives",
        "stationary",
    }
    # the contract's three keys, beside the added standard errors, counts and conflict flags
    assert set(doc["batch_stats"]) == {
        "cosine_mean",
        "cosine_std",
        "conflict_fraction",
        "cosine_stderr",
        "defined",
        "below_threshold",
        "conflict",
    }
    assert doc["pareto"]["stationary"] is True  # the zero gradient alone is a stationary point
    assert doc["unused"]["zero"] == PARAMS
    assert doc["unreached"] == []
    assert all(math.isfinite(x) for x in doc["dot"][0])


def test_single_batch_json_omits_batch_stats() -> None:
    doc = build_report(result_from_blocks(blocks_for(), ["a", "b", "c"]), command="inspect")
    assert "batch_stats" not in doc.to_dict() and "pareto" not in doc.to_dict()


def test_nonfinite_gradients_raise_naming_loss_and_parameters() -> None:
    result = result_from_blocks(blocks_for(), ["a", "b", "c"])
    result.nonfinite[2, 1] = 3
    with pytest.raises(GradientError, match=r"loss 'b': 3 non-finite entries in head_a.weight"):
        build_report(result, command="inspect")


def test_norm_imbalance_verdict() -> None:
    report = build_report(result_from_blocks(blocks_for(), ["a", "b", "c"]), command="inspect")
    norms = {k: v.norm for k, v in report.gradients.items()}
    big, small = max(norms, key=norms.__getitem__), min(norms, key=norms.__getitem__)
    ratio = norms[big] / norms[small]
    assert f"{big}'s gradient is {ratio:.1f}x {small}'s" in report.verdict
