"""Lookahead affinity: values against an independent SGD step on deep copies, the user's model
left bit-for-bit unchanged (BatchNorm in train mode, dropout), and holdout. The command line:
tests/e2e/test_affinity_cli.py."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from _models import TwoHeads
from torch import nn

from gradtool.analysis import lookahead_affinity
from gradtool.cli.errors import cli_option
from gradtool.errors import UsageError
from gradtool.linalg.min_norm import min_norm_weights
from gradtool.problem import Problem

LR = 0.05


def as64(values: Any) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def make_batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
        out.append((x, x.sum(dim=1, keepdim=False)))
    return out


def losses(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    x, y = batch
    pa, pb = (p.squeeze(-1) for p in model(x))
    return {"fit": ((pa - y) ** 2).mean(), "anti": ((pb - 0.5 * pa + y) ** 2).mean() + 0.1}


def make_model(dropout: float = 0.0) -> TwoHeads:
    """A trunk with BatchNorm (and optional dropout) feeding two heads, in float64."""
    torch.manual_seed(0)
    trunk = (nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 8))
    return TwoHeads(*trunk).double().train()


def make_problem(model: nn.Module, batches: list[Any] | None, **kwargs: Any) -> Problem:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return Problem(
        model=model,
        losses=kwargs.pop("losses", losses),
        parameters=named,
        batches=batches,
        **kwargs,
    )


def by_hand(
    model: nn.Module,
    step_batch: Any,
    eval_batch: Any,
    lr: float,
    loss_fn: Callable[..., dict[str, torch.Tensor]] = losses,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (Z, Z1, mgda change, mean change) by SGD steps on deep copies, independently."""
    work = copy.deepcopy(model)
    params = list(work.parameters())
    values = loss_fn(work, step_batch)

    def flat(loss: torch.Tensor, wrt: list[torch.Tensor]) -> torch.Tensor:
        grads = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True)
        return torch.cat(
            [
                torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1)
                for g, p in zip(grads, wrt, strict=True)
            ]
        )

    grads = [flat(v, params) for v in values.values()]
    base = torch.tensor(
        [float(v.detach()) for v in loss_fn(copy.deepcopy(model), eval_batch).values()],
        dtype=torch.float64,
    )
    eval_grads = []
    probe = copy.deepcopy(model)
    probe_params = list(probe.parameters())
    for v in loss_fn(probe, eval_batch).values():
        eval_grads.append(flat(v, probe_params))
    jac, eval_jac = torch.stack(grads), torch.stack(eval_grads)

    def after(direction: torch.Tensor) -> torch.Tensor:
        stepped = copy.deepcopy(model)
        offset = 0
        with torch.no_grad():
            for p in stepped.parameters():
                p -= lr * direction[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
            return torch.tensor(
                [float(v) for v in loss_fn(stepped, eval_batch).values()], dtype=torch.float64
            )

    m = jac.shape[0]
    z = torch.stack([1 - after(jac[i]) / base for i in range(m)])
    z1 = lr * (jac @ eval_jac.T) / base
    w = min_norm_weights(jac @ jac.T).weights
    mgda_change = after(w @ jac) - base
    mean_change = after(jac.mean(dim=0)) - base
    return z, z1, mgda_change, mean_change


def test_affinity_matches_independent_sgd_steps_on_copies() -> None:
    model = make_model()
    batches = make_batches(3)
    report = lookahead_affinity(make_problem(model, batches), LR)
    expected = [by_hand(model, b, b, LR) for b in batches]
    z = torch.stack([e[0] for e in expected]).mean(dim=0)
    z1 = torch.stack([e[1] for e in expected]).mean(dim=0)
    torch.testing.assert_close(as64(report.affinity), z, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(as64(report.affinity_first_order), z1, rtol=1e-9, atol=0)
    mgda, mean = report.methods_step
    assert (mgda.method, mean.method) == ("mgda", "mean")
    mgda_change = torch.stack([e[2] for e in expected]).mean(dim=0)
    mean_change = torch.stack([e[3] for e in expected]).mean(dim=0)
    torch.testing.assert_close(as64(list(mgda.loss_change.values())), mgda_change)
    torch.testing.assert_close(as64(list(mean.loss_change.values())), mean_change)
    assert report.num_batches == 3 and report.lr == LR and not report.holdout
    assert report.losses == ["fit", "anti"]


def test_holdout_evaluates_each_step_on_the_next_batch() -> None:
    model = make_model()
    batches = make_batches(3)
    report = lookahead_affinity(make_problem(model, batches), LR, holdout=True)
    expected = [by_hand(model, batches[k], batches[(k + 1) % 3], LR) for k in range(3)]
    z = torch.stack([e[0] for e in expected]).mean(dim=0)
    z1 = torch.stack([e[1] for e in expected]).mean(dim=0)
    torch.testing.assert_close(as64(report.affinity), z, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(as64(report.affinity_first_order), z1, rtol=1e-9, atol=0)
    assert report.holdout
    same = lookahead_affinity(make_problem(model, batches), LR)
    assert same.affinity != report.affinity


def test_holdout_needs_two_batches() -> None:
    model = make_model()
    with pytest.raises(UsageError, match="at least 2 batches; the gradfile gives 1"):
        lookahead_affinity(make_problem(model, make_batches(1)), LR, holdout=True)


@pytest.mark.parametrize("strategy", ["auto", "loop", "backward"])
def test_model_is_bit_for_bit_unchanged(strategy: str) -> None:
    model = make_model(dropout=0.3)
    for p in model.a.parameters():
        p.grad = torch.full_like(p, 7.0)  # a stale .grad the user left there
    before = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads_before = {
        n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
    }
    versions = {n: p._version for n, p in model.named_parameters()}
    torch.manual_seed(42)
    rng = torch.random.get_rng_state()
    report = lookahead_affinity(
        make_problem(model, make_batches(2)),
        10 * LR,
        strategy=strategy,  # type: ignore[arg-type]
        methods=("mgda", "mean", "sum"),
    )
    assert report.affinity[0][0] is not None
    after = model.state_dict()
    assert set(after) == set(before) and "trunk.1.num_batches_tracked" in after
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), params_before[name]), name
        assert p._version == versions[name], name
        if grads_before[name] is None:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.equal(p.grad, grads_before[name]), name
    assert int(model.trunk[1].num_batches_tracked) == 0
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())


def test_dropout_masks_match_between_base_and_stepped_losses() -> None:
    # With the same masks, a tiny step changes each loss by its first-order estimate; with
    # different masks the "change" would be dominated by the masks (order 1, not order lr).
    model = make_model(dropout=0.5)
    report = lookahead_affinity(make_problem(model, make_batches(2)), 1e-6, methods=())
    z = as64(report.affinity)
    z1 = as64(report.affinity_first_order)
    torch.testing.assert_close(z, z1, rtol=1e-3, atol=1e-12)


def test_non_positive_loss_has_no_ratio_but_an_absolute_change() -> None:
    def signed(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        out = losses(model, batch)
        return {"fit": out["fit"], "reward": -out["anti"]}

    model = make_model()
    report = lookahead_affinity(make_problem(model, make_batches(1), losses=signed), LR)
    assert [row[1] for row in report.affinity] == [None, None]
    assert [row[1] for row in report.affinity_first_order] == [None, None]
    assert report.affinity[0][0] is not None
    assert all(row[1] is not None for row in report.loss_change)
    assert any("loss 'reward' is not positive" in w for w in report.warnings)
    step = report.methods_step[0]
    assert step.affinity["reward"] is None and step.loss_change["reward"] is not None
    body = json.loads(report.to_json())
    assert body["affinity"][0][1] is None


def test_diverging_step_is_reported_not_raised() -> None:
    def exploding(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, _ = batch
        pa, pb = (p.squeeze(-1) for p in model(x))
        return {"a": torch.exp(pa).mean(), "b": torch.exp(pb).mean()}

    model = make_model()
    report = lookahead_affinity(make_problem(model, make_batches(1), losses=exploding), 1e6)
    assert any("non-finite" in w and "smaller lr" in w for w in report.warnings)
    json.loads(report.to_json())  # strict JSON: NaN / inf became null


def test_bad_lr_is_a_usage_error() -> None:
    model = make_model()
    for lr in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UsageError, match=r"^lr should be a positive number") as info:
            lookahead_affinity(make_problem(model, make_batches(1)), lr)
        assert info.value.worded(cli_option)[0].startswith("--lr should be a positive number")
