"""The engine against an independent computation: a plain loop of autograd.grad, flattened."""

from __future__ import annotations

import pytest
import torch
from _models import TwoHeads
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradtool.engine import batch_jacobian, compute_gramians
from gradtool.engine import jacobian as engine
from gradtool.errors import GradientError
from gradtool.problem import Problem

STRATEGIES = ["auto", "structured", "batched", "loop", "backward"]


def two_heads(mode: str | None = None) -> TwoHeads:
    """A tanh trunk, heads `a` (1 output) and `b` (2), a head `unused`; `mode` checkpoints it."""
    return TwoHeads(
        nn.Linear(5, 8),
        nn.Tanh(),
        nn.Linear(8, 8),
        nn.Tanh(),
        b_out=2,
        unused=True,
        checkpointing=mode,
    )


def two_head_losses(model: TwoHeads, batch: tuple[torch.Tensor, torch.Tensor]) -> dict:
    x, y = batch
    h = model.features(x)
    return {
        "a": ((model.a(h).squeeze(-1) - y) ** 2).mean(),
        "b": (model.b(h) ** 2).mean() + 0.1 * h.pow(2).mean(),
        "c": ((model.a(h).squeeze(-1) + y) ** 2).mean(),
    }


def make_batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g), torch.randn(16, generator=g)) for _ in range(n)]


def problem_for(model: nn.Module, batches: list, losses=two_head_losses) -> Problem:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return Problem(model=model, losses=losses, parameters=params, batches=batches)


def reference_jacobian(model: nn.Module, losses: dict, params: list[torch.Tensor]) -> torch.Tensor:
    """Return J (m x n) by one autograd.grad per loss, None -> zeros, flattened and concatenated."""
    rows = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    torch.zeros(p.numel()) if g is None else g.reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows).double()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gramian_matches_plain_loop_of_autograd_grad(strategy: str) -> None:
    torch.manual_seed(0)
    model = two_heads()
    batch = make_batches(1)[0]
    params = [p for p in model.parameters()]
    j = reference_jacobian(model, two_head_losses(model, batch), params)
    result = compute_gramians(problem_for(model, [batch]), strategy=strategy)
    torch.testing.assert_close(result.gramian, j @ j.T, rtol=1e-6, atol=1e-9)
    # per-block Gramians add up, and each equals its own slice of J
    offset = 0
    for b, p in enumerate(params):
        block = j[:, offset : offset + p.numel()]
        torch.testing.assert_close(result.gramians[b], block @ block.T, rtol=1e-6, atol=1e-9)
        offset += p.numel()
    assert result.gramians.dtype == torch.float64


def test_strategies_agree_and_report_their_name() -> None:
    torch.manual_seed(1)
    model = two_heads()
    batches = make_batches(3)
    results = {s: compute_gramians(problem_for(model, batches), strategy=s) for s in STRATEGIES}
    for s in STRATEGIES[1:]:
        torch.testing.assert_close(
            results[s].gramians, results["auto"].gramians, rtol=1e-6, atol=1e-9
        )
        assert torch.equal(results[s].reached, results["auto"].reached)
    assert results["auto"].strategy == "loop"  # on the CPU (see engine.AUTO_LOOP_MIN_NUMEL)
    assert "CPU" in (results["auto"].fallback_reason or "")
    assert results["loop"].strategy == "loop"
    assert results["backward"].strategy == "backward"


def test_mean_over_batches_is_the_gradient_of_the_mean_loss() -> None:
    torch.manual_seed(2)
    model = two_heads()
    batches = make_batches(4)
    params = list(model.parameters())
    js = [reference_jacobian(model, two_head_losses(model, b), params) for b in batches]
    j_mean = torch.stack(js).mean(dim=0)
    result = compute_gramians(problem_for(model, batches))
    torch.testing.assert_close(result.gramian, j_mean @ j_mean.T, rtol=1e-6, atol=1e-9)
    assert result.num_batches == 4
    assert result.batch_gramians is not None
    for k, jk in enumerate(js):
        torch.testing.assert_close(result.batch_gramians[k], jk @ jk.T, rtol=1e-6, atol=1e-9)
    values = [{k: v.item() for k, v in two_head_losses(model, b).items()} for b in batches]
    for i, name in enumerate(result.loss_names):
        assert result.loss_values[i] == pytest.approx(sum(v[name] for v in values) / 4)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unused_comes_from_the_graph_not_from_zero_checks(strategy: str) -> None:
    """A dead ReLU gives an exact-zero gradient through a real path: that is *used*."""

    class Dead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dead = nn.Linear(3, 3)
            self.live = nn.Linear(3, 1)
            self.other = nn.Linear(3, 1)
            with torch.no_grad():
                self.dead.weight.zero_()
                self.dead.bias.fill_(-1.0)  # relu(-1) = 0: no gradient flows, but a path exists

    model = Dead()

    def losses(m: Dead) -> dict:
        x = torch.ones(2, 3)
        return {
            "through_dead_relu": (m.live(torch.relu(m.dead(x))) ** 2).sum() + m.live.bias.sum(),
            "other": m.other(x).sum(),
        }

    params = list(model.named_parameters())
    result = compute_gramians(
        Problem(model=model, losses=losses, parameters=params), strategy=strategy
    )
    names = result.param_names
    reached = {
        loss: {names[b] for b in range(len(names)) if result.reached[b, i]}
        for i, loss in enumerate(result.loss_names)
    }
    assert reached["through_dead_relu"] == {"dead.weight", "dead.bias", "live.weight", "live.bias"}
    assert reached["other"] == {"other.weight", "other.bias"}
    dead_w = names.index("dead.weight")
    assert result.gramians[dead_w, 0, 0] == 0.0  # zero gradient, yet reached


@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant"])
def test_activation_checkpointing_gives_the_plain_gradients(mode: str) -> None:
    torch.manual_seed(3)
    plain = two_heads()
    ckpt = two_heads(mode)
    ckpt.load_state_dict(plain.state_dict())
    batches = make_batches(2)
    expected = compute_gramians(problem_for(plain, batches), strategy="loop")
    got = compute_gramians(problem_for(ckpt, batches), strategy="auto")
    torch.testing.assert_close(got.gramians, expected.gramians, rtol=1e-6, atol=1e-9)
    assert torch.equal(got.reached, expected.reached)
    unused = got.param_names.index("unused.weight")
    assert not got.reached[unused].any()
    if mode == "reentrant":
        assert got.strategy == "backward"
        assert "reentrant" in (got.fallback_reason or "")
        with pytest.raises(GradientError, match="reentrant"):
            compute_gramians(problem_for(ckpt, batches), strategy="loop")


def test_reentrant_checkpoint_leaves_every_grad_as_found() -> None:
    torch.manual_seed(4)
    model = two_heads("reentrant")
    sentinel = torch.full_like(model.a.weight, 7.0)
    model.a.weight.grad = sentinel
    selected = [(n, p) for n, p in model.named_parameters() if n.startswith("a.")]
    problem = Problem(
        model=model, losses=two_head_losses, parameters=selected, batches=make_batches(1)
    )
    result = compute_gramians(problem)
    assert result.strategy == "backward"
    assert model.a.weight.grad is sentinel and torch.equal(sentinel, torch.full_like(sentinel, 7.0))
    for name, p in model.named_parameters():
        if name != "a.weight":
            assert p.grad is None, name


def test_second_order_meta_loss_matches_independent_computation() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1))
    xs, ys = torch.randn(8, 2), torch.randn(8, 1)
    xq, yq = torch.randn(8, 2), torch.randn(8, 1)

    def losses(m: nn.Module) -> dict:
        names = [n for n, _ in m.named_parameters()]
        params = [p for _, p in m.named_parameters()]
        support = ((m(xs) - ys) ** 2).mean()
        grads = torch.autograd.grad(support, params, create_graph=True)
        adapted = {n: p - 0.1 * g for n, p, g in zip(names, params, grads, strict=True)}
        query = ((torch.func.functional_call(m, adapted, (xq,)) - yq) ** 2).mean()
        return {"support": support, "meta": query}

    params = list(model.parameters())
    j = reference_jacobian(model, losses(model), params)
    for strategy in ("auto", "loop"):
        result = compute_gramians(
            Problem(model=model, losses=losses, parameters=list(model.named_parameters())),
            strategy=strategy,
        )
        torch.testing.assert_close(result.gramian, j @ j.T, rtol=1e-6, atol=1e-9)
    # the meta gradient is truly second order: it differs from the first-order approximation
    assert not torch.allclose(j[0], j[1], rtol=1e-2)


def test_tied_parameters_count_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.embed.weight

    model = Tied()

    def losses(m: Tied) -> dict:
        h = m.embed(torch.tensor([0, 1, 2]))
        return {"x": m.out(h).pow(2).mean(), "y": h.sum()}

    named = list(model.named_parameters())
    assert len(named) == 1
    result = compute_gramians(Problem(model=model, losses=losses, parameters=named))
    j = reference_jacobian(model, losses(model), [p for _, p in named])
    torch.testing.assert_close(result.gramian, j @ j.T, rtol=1e-6, atol=1e-9)
    assert result.param_names == ["embed.weight"]


class NoVmap(torch.autograd.Function):
    """A custom function whose backward reads a value (`.item()`): vmap cannot run it."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        scale = 2.0 if grad.sum().item() < float("inf") else 0.0  # data-dependent under vmap
        return grad * scale + 0 * x


def test_auto_falls_back_to_the_loop_where_vmap_cannot_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "AUTO_LOOP_MIN_NUMEL", 10**12)  # auto tries batched first
    torch.manual_seed(6)
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)

    def losses(m: nn.Linear) -> dict:
        y = NoVmap.apply(m(x))
        return {"p": y[:, 0].mean(), "q": y[:, 1].pow(2).mean()}

    problem = Problem(model=lin, losses=losses, parameters=list(lin.named_parameters()))
    try:
        batch_jacobian(losses(lin), list(lin.parameters()), strategy="batched")
    except GradientError:
        pass
    else:
        pytest.skip("this torch build runs the custom Function under vmap")
    result = compute_gramians(problem, strategy="auto")
    assert result.strategy == "loop"
    assert result.fallback_reason and "vmap" in result.fallback_reason
    j = reference_jacobian(lin, losses(lin), list(lin.parameters()))
    torch.testing.assert_close(result.gramian, j @ j.T, rtol=1e-6, atol=1e-9)
    with pytest.raises(GradientError, match="batched strategy"):
        compute_gramians(problem, strategy="batched")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_model_left_as_found(strategy: str) -> None:
    torch.manual_seed(7)
    model = two_heads()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    compute_gramians(problem_for(model, make_batches(2)), strategy=strategy)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None, n


def test_zero_gradient_loss_and_float64_model() -> None:
    model = nn.Linear(3, 1).double()

    def losses(m: nn.Linear) -> dict:
        x = torch.ones(2, 3, dtype=torch.float64)
        return {"real": m(x).sum(), "flat": 0.0 * m(x).sum()}

    result = compute_gramians(
        Problem(model=model, losses=losses, parameters=list(model.named_parameters()))
    )
    assert result.gramian[1, 1] == 0.0 and result.gramian[0, 1] == 0.0
    assert result.gramian[0, 0] == pytest.approx(2.0**2 * 3 + 2.0**2)
    assert bool(result.reached[:, 1].all())  # multiplied by zero, yet a real path


def test_nonfinite_gradient_entries_are_counted_per_block() -> None:
    model = nn.Linear(2, 1)

    def losses(m: nn.Linear) -> dict:
        out = m(torch.ones(1, 2)).sum()
        # sqrt at 0 has an infinite derivative: finite value, non-finite gradient
        return {"ok": out, "bad": torch.sqrt((m.weight - m.weight.detach()).sum().abs()) + out}

    problem = Problem(model=model, losses=losses, parameters=list(model.named_parameters()))
    for strategy in STRATEGIES:
        # in one batched call, 0 * inf leaks NaN into the other rows: auto must not report that
        if strategy == "batched":
            continue
        result = compute_gramians(problem, strategy=strategy)
        assert int(result.nonfinite[:, 0].sum()) == 0, strategy
        assert int(result.nonfinite[0, 1]) > 0, strategy  # weight


@pytest.mark.parametrize("strategy", ["auto", "loop", "backward"])
def test_sparse_embedding_gradients_are_densified(strategy: str) -> None:
    torch.manual_seed(8)
    sparse = nn.ModuleDict({"u": nn.Embedding(10, 4, sparse=True), "a": nn.Linear(4, 1)})
    dense = nn.ModuleDict({"u": nn.Embedding(10, 4), "a": nn.Linear(4, 1)})
    dense.load_state_dict(sparse.state_dict())
    idx = torch.tensor([0, 3, 3, 7])

    def losses(m: nn.ModuleDict) -> dict:
        h = m["u"](idx)
        return {"x": m["a"](h).pow(2).mean(), "y": h.mean()}

    def run(model: nn.Module, s: str):
        problem = Problem(model=model, losses=losses, parameters=list(model.named_parameters()))
        return compute_gramians(problem, strategy=s)

    torch.testing.assert_close(run(sparse, strategy).gramians, run(dense, "loop").gramians)


def test_backward_strategy_leaves_input_grads_as_found() -> None:
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(4, 3, requires_grad=True)

    def losses(m: nn.Module) -> dict:
        y = checkpoint(m, x, use_reentrant=True)
        return {"a": y[:, 0].mean(), "b": y[:, 1].pow(2).mean()}

    problem = Problem(model=model, losses=losses, parameters=list(model.named_parameters()))
    result = compute_gramians(problem)
    assert result.strategy == "backward"
    assert x.grad is None
    assert all(p.grad is None for p in model.parameters())


def test_bfloat16_model_mean_over_many_batches_is_accurate() -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 2).to(torch.bfloat16)
    batches = [torch.randn(16, 8).to(torch.bfloat16) for _ in range(128)]

    def losses(m: nn.Module, x: torch.Tensor) -> dict:
        y = m(x).float()
        return {"a": y[:, 0].pow(2).mean(), "b": y[:, 1].mean()}

    params = list(model.parameters())
    rows = []
    for x in batches:
        ls = losses(model, x)
        rows.append(
            torch.stack(
                [
                    torch.cat(
                        [
                            g.double().reshape(-1)
                            for g in torch.autograd.grad(v, params, retain_graph=True)
                        ]
                    )
                    for v in ls.values()
                ]
            )
        )
    j = torch.stack(rows).mean(dim=0)
    problem = Problem(
        model=model, losses=losses, parameters=list(model.named_parameters()), batches=batches
    )
    result = compute_gramians(problem)
    torch.testing.assert_close(result.gramian, j @ j.T, rtol=1e-5, atol=1e-8)
