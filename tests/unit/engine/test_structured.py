"""The structured engine against the plain loop of autograd.grad, on the cases where a layer's
weight is not only used through its layer call (tied, called twice, functional, elementwise...).

Models are float64 so the comparison is tight: the structured Gramian is another exact formula
(rows instead of gradients), so it agrees with the loop's to float64 rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from _models import SAMPLE_NAMES, SAMPLES
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradtool.engine import Fallback, compute_gramians
from gradtool.engine.ghost import ghost_cost, gradient_cost
from gradtool.problem import Problem, load_problem

Losses = Callable[..., dict[str, torch.Tensor]]


def problem(model: nn.Module, losses: Losses, batches: list | None = None) -> Problem:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return Problem(model=model, losses=losses, parameters=params, batches=batches)


def check(
    model: nn.Module,
    losses: Losses,
    batches: list | None = None,
    strategy: str = "structured",
    rtol: float = 1e-10,
    reference: str = "loop",
):
    """Assert that `strategy` gives the loop's per-block Gramians, reach and loss values."""
    ref = compute_gramians(problem(model, losses, batches), strategy=reference)
    got = compute_gramians(problem(model, losses, batches), strategy=strategy)
    scale = float(ref.gramian.diagonal().max())
    torch.testing.assert_close(got.gramians, ref.gramians, rtol=rtol, atol=rtol * scale)
    assert torch.equal(got.reached, ref.reached)
    assert got.loss_values == pytest.approx(ref.loss_values, rel=1e-12)
    assert torch.equal(got.nonfinite, ref.nonfinite)
    if ref.batch_gramians is not None:
        torch.testing.assert_close(
            got.batch_gramians, ref.batch_gramians, rtol=rtol, atol=rtol * scale
        )
    return got


class Trunk(nn.Module):
    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.mid = nn.Linear(d, d)
        self.a = nn.Linear(d, 2)
        self.b = nn.Linear(d, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mid(torch.tanh(self.inp(x))))


def trunk(**kw) -> Trunk:
    torch.manual_seed(0)
    return Trunk(**kw).double()


X = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def heads(model: Trunk, h: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "a": model.a(h).pow(2).mean(),
        "b": model.b(h).sin().mean(),
        "c": (model.a(h).sum(-1) * model.b(h).squeeze(-1)).mean(),
    }


def test_plain_layers_are_structured_and_exact() -> None:
    got = check(trunk(), lambda m: heads(m, m.features(X)))
    assert got.strategy == "structured"
    assert got.paths["linear"] == {"structured": 4, "gradient": 0}
    assert got.paths["other"] == {"structured": 0, "gradient": 4}  # the biases
    assert got.max_abs == [None, None, None]  # the entries of a structured block are not formed


def test_weight_also_used_elementwise_is_not_covered() -> None:
    def losses(m: Trunk) -> dict[str, torch.Tensor]:
        out = heads(m, m.features(X))
        out["a"] = out["a"] + 0.1 * m.mid.weight.pow(2).sum()  # weight decay on one layer
        return out

    got = check(trunk(), losses)
    assert got.uncovered == {"mid.weight": "also used by PowBackward0"}
    assert got.paths["linear"] == {"structured": 3, "gradient": 1}


def test_weight_also_used_through_f_linear_is_exact() -> None:
    def losses(m: Trunk) -> dict[str, torch.Tensor]:
        h = m.features(X)
        out = heads(m, h)
        out["b"] = out["b"] + F.linear(h, m.mid.weight).mean()  # a second, functional use
        return out

    got = check(trunk(), losses)
    assert "mid.weight" not in got.uncovered  # its rows concatenate: two linear uses


def test_module_called_twice() -> None:
    def losses(m: Trunk) -> dict[str, torch.Tensor]:
        h = torch.tanh(m.mid(m.features(X)))  # mid applied twice
        return heads(m, h)

    check(trunk(), losses)


def test_tied_weights_across_modules_of_one_kind_and_across_kinds() -> None:
    torch.manual_seed(0)

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(11, 6)
            self.l1 = nn.Linear(6, 6)
            self.l2 = nn.Linear(6, 6)
            self.l2.weight = self.l1.weight  # linear-linear: rows concatenate
            self.head = nn.Linear(6, 11, bias=False)
            self.head.weight = self.emb.weight  # embedding-linear: not covered, plain

    model = Tied().double()
    ids = torch.tensor([[1, 2, 3, 2], [4, 4, 0, 9]])

    def losses(m: Tied) -> dict[str, torch.Tensor]:
        h = torch.tanh(m.l2(torch.tanh(m.l1(m.emb(ids)))))
        logits = m.head(h)
        return {
            "lm": F.cross_entropy(logits.reshape(-1, 11), ids.reshape(-1)),
            "aux": h.pow(2).mean(),
            "first": logits[:, 0].mean(),
        }

    got = check(model, losses)
    assert "l1.weight" not in got.uncovered
    assert got.uncovered["emb.weight"] == "used by layers of different kinds or orientations"


def test_multihead_attention_and_transformer_layer() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    model = nn.ModuleDict({"enc": layer, "a": nn.Linear(8, 1), "b": nn.Linear(8, 3)}).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)

    def losses(m: nn.ModuleDict) -> dict[str, torch.Tensor]:
        h = m["enc"](x)
        return {"a": m["a"](h).mean(), "b": m["b"](h).pow(2).mean(), "h": h[:, 0].sum()}

    got = check(model, losses)
    assert got.paths["linear"]["structured"] >= 4  # out_proj (functional), linear1/2, heads


def test_free_parameters_used_in_forward() -> None:
    torch.manual_seed(0)

    class Free(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 5))  # x @ w: the untransposed product
            self.v = nn.Parameter(torch.randn(5, 5))  # used elementwise too
            self.s = nn.Parameter(torch.randn(5))

    model = Free().double()

    def losses(m: Free) -> dict[str, torch.Tensor]:
        h = torch.tanh(X @ m.w)
        g = h @ m.v + (m.v * m.v).sum(0) + m.s
        return {"a": g.pow(2).mean(), "b": h.mean(), "c": (g * h).sum()}

    got = check(model, losses)
    assert "w" not in got.uncovered
    assert got.uncovered["v"] == "also used by MulBackward0"


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(3, 4, 3, padding=1),
        lambda: nn.Conv2d(3, 4, (3, 2), stride=2, dilation=(1, 2), padding=(1, 0)),
        lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        lambda: nn.Conv2d(3, 4, 3, padding="same"),
        lambda: nn.Conv2d(3, 6, 3, groups=3),  # grouped: plain
        lambda: nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2),
    ],
)
def test_convolutions(conv: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    layer = conv()
    one_d = isinstance(layer, nn.Conv1d)
    model = nn.ModuleDict({"conv": layer, "head": nn.LazyLinear(2)}).double()
    x = torch.randn(2, 3, 9, dtype=torch.float64) if one_d else torch.randn(2, 3, 7, 6).double()
    model["head"](model["conv"](x).flatten(1))  # materialise the lazy head

    def losses(m: nn.ModuleDict) -> dict[str, torch.Tensor]:
        h = torch.relu(m["conv"](x))
        out = m["head"](h.flatten(1))
        return {"a": out[:, 0].mean(), "b": out.pow(2).mean(), "c": h.mean()}

    got = check(model, losses)
    grouped = getattr(layer, "groups", 1) > 1
    assert ("conv.weight" in got.uncovered) == grouped


@pytest.mark.parametrize(
    "kw", [{}, {"padding_idx": 0}, {"scale_grad_by_freq": True}, {"sparse": True}]
)
def test_embeddings(kw: dict) -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.Embedding(13, 5, **kw), "head": nn.Linear(5, 2)}).double()
    ids = torch.tensor([[0, 3, 3, 7], [12, 0, 3, 1]])

    def losses(m: nn.ModuleDict) -> dict[str, torch.Tensor]:
        e = m["emb"](ids)
        out = m["head"](torch.tanh(e))
        return {"a": out[..., 0].mean(), "b": out.pow(2).mean(), "e": e[:, 1].sum()}

    got = check(model, losses)
    assert got.paths["embedding"] == {"structured": 1, "gradient": 0}


def test_in_place_activation_after_the_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)).double()

    def losses(m: nn.Sequential) -> dict[str, torch.Tensor]:
        out = m(X)
        return {"a": out[:, 0].mean(), "b": out.pow(2).mean()}

    check(model, losses)


def test_several_batches_hold_rows_then_sum_them() -> None:
    """Cross-batch terms: rows held while smaller than the gradients, summed once larger."""
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, 4, dtype=torch.float64, generator=g) for n in (2, 3, 40, 2)]

    def losses(m: Trunk, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return heads(m, m.features(x))

    converted = check(trunk(d=30), losses, batches, strategy="auto")
    assert converted.paths["linear"] == {"structured": 0, "gradient": 4}  # summed past batch 2
    forced = check(trunk(d=30), losses, batches)  # asked for rows: kept in every batch
    assert forced.paths["linear"] == {"structured": 4, "gradient": 0}
    assert not forced.fallbacks


def test_forced_structured_without_a_covered_weight_says_so_without_auto() -> None:
    def losses(m: Trunk) -> dict[str, torch.Tensor]:
        out = heads(m, m.features(X))
        decay = sum(p.pow(2).sum() for p in m.parameters() if p.dim() == 2)
        return {k: v + 1e-3 * decay for k, v in out.items()}

    got = check(trunk(), losses)
    assert got.strategy == "loop"
    assert got.fallback_reason.startswith("the structured engine took no weight here")
    assert "auto" not in got.fallback_reason


def test_unused_head_and_loss_reaching_no_structured_layer() -> None:
    def losses(m: Trunk) -> dict[str, torch.Tensor]:
        h = m.features(X)
        return {"a": m.a(h).mean(), "bias": m.b.bias.sum(), "c": m.a(h).pow(2).mean()}

    got = check(trunk(), losses)
    assert got.max_abs[1] == pytest.approx(1.0)  # only formed blocks: the maximum is known


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_trunk(reentrant: bool) -> None:
    def losses(m: Trunk) -> dict[str, torch.Tensor]:
        x = X.clone().requires_grad_(True)  # a reentrant checkpoint needs an input with grad
        return heads(m, checkpoint(m.features, x, use_reentrant=reentrant))

    got = check(trunk(), losses, reference="backward" if reentrant else "loop")
    if reentrant:
        assert got.strategy == "backward"
        assert got.fell_back(Fallback.STRUCTURED_CHECKPOINT)
    else:
        assert got.strategy == "structured"


def test_create_graph_loss_gradient_penalty() -> None:
    def losses(m: Trunk) -> dict[str, torch.Tensor]:
        x = X.clone().requires_grad_(True)
        h = m.features(x)
        out = heads(m, h)
        (gx,) = torch.autograd.grad(m.a(h).sum(), x, create_graph=True)
        out["penalty"] = gx.pow(2).sum()
        return out

    got = check(trunk(), losses)
    assert got.uncovered  # the penalty's double backward reads the weights elsewhere


def test_nonfinite_entries_are_counted_like_the_loop() -> None:
    model = trunk()
    with torch.no_grad():
        model.a.weight[0, 0] = float("inf")

    def losses(m: Trunk) -> dict[str, torch.Tensor]:
        h = m.features(X)
        return {"a": m.a(h)[:, 1].mean(), "b": m.b(h).mean()}

    ref = compute_gramians(problem(model, losses), strategy="loop")
    got = compute_gramians(problem(model, losses), strategy="structured")
    assert torch.equal(got.nonfinite, ref.nonfinite)


def test_bfloat16_model_within_bf16_rounding_of_the_loop() -> None:
    torch.manual_seed(0)
    model = Trunk(d=32).to(torch.bfloat16)
    x = torch.randn(16, 4).to(torch.bfloat16)

    def losses(m: Trunk) -> dict[str, torch.Tensor]:
        return heads(m, m.features(x))

    ref = compute_gramians(problem(model, losses), strategy="loop")
    got = compute_gramians(problem(model, losses), strategy="structured")
    assert got.gramians.dtype == torch.float64
    scale = float(ref.gramian.diagonal().max())
    torch.testing.assert_close(got.gramians, ref.gramians, rtol=2e-2, atol=2e-2 * scale)


def test_autocast_casts_are_followed() -> None:
    model = trunk().float()
    x = X.float()

    def losses(m: Trunk) -> dict[str, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = m.features(x)
            return {k: v.float() for k, v in heads(m, h).items()}

    ref = compute_gramians(problem(model, losses), strategy="loop")
    got = compute_gramians(problem(model, losses), strategy="structured")
    assert got.paths["linear"]["structured"] == 4
    scale = float(ref.gramian.diagonal().max())
    torch.testing.assert_close(got.gramians, ref.gramians, rtol=3e-2, atol=3e-2 * scale)


def test_auto_takes_rows_only_where_cheaper() -> None:
    # a wide layer at a small batch: rows; the same layer at many rows: its gradient
    assert ghost_cost(16, 1024, 1024, 8) < gradient_cost(16, 1024, 1024, 8) / 10
    assert ghost_cost(8192, 64, 64, 8) > gradient_cost(8192, 64, 64, 8)
    torch.manual_seed(0)
    model = nn.ModuleDict({"wide": nn.Linear(256, 256), "a": nn.Linear(256, 1)}).double()
    small = torch.randn(4, 256, dtype=torch.float64)
    many = torch.randn(4096, 256, dtype=torch.float64)

    def losses(m: nn.ModuleDict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(m["wide"](x))
        return {"a": m["a"](h).mean(), "h": h.pow(2).mean()}

    got = check(model, losses, [small], strategy="auto")
    assert got.strategy == "structured"
    # the 256 x 1 head: its gradients cost less than its rows' float64 products
    assert got.paths["linear"] == {"structured": 1, "gradient": 1}
    got = check(model, losses, [many], strategy="auto")
    assert got.strategy == "loop"
    assert not got.paths  # the previous default ran, as before


def test_live_losses_keep_their_graph_for_the_callers_backward() -> None:
    model = trunk()
    losses = heads(model, model.features(X))
    result = compute_gramians(Problem.live(model, losses), strategy="structured", retain_graph=True)
    assert result.strategy == "structured"
    sum(losses.values()).backward()  # the graph is still there
    assert model.inp.weight.grad is not None


@pytest.mark.parametrize("sample", [*SAMPLE_NAMES, "many_losses", "bert_pretraining"])
def test_every_sample_matches_the_loop(sample: str) -> None:
    """Each shipped gradfile, through the structured engine and the plain one (the backward
    strategy where a reentrant checkpoint blocks autograd.grad)."""
    if sample == "bert_pretraining":
        pytest.importorskip("transformers")
    loaded = load_problem(SAMPLES / f"{sample}.py")
    got = compute_gramians(loaded, strategy="structured")
    reference = "backward" if got.fell_back(Fallback.STRUCTURED_CHECKPOINT) else "loop"
    ref = compute_gramians(loaded, strategy=reference)
    scale = float(ref.gramian.diagonal().max())
    torch.testing.assert_close(got.gramians, ref.gramians, rtol=1e-5, atol=1e-6 * scale)
    assert torch.equal(got.reached, ref.reached)
    assert got.paths, "the structured engine states what it did on every sample"


def test_the_model_and_its_grads_are_left_as_found() -> None:
    model = trunk()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compute_gramians(problem(model, lambda m: heads(m, m.features(X))), strategy="structured")
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_affinity_forms_gradients_and_says_why() -> None:
    from gradtool.engine import batch_jacobian

    model = trunk()
    jac = batch_jacobian(
        heads(model, model.features(X)), list(model.parameters()), strategy="structured"
    )
    assert jac.fallbacks[0].kind == Fallback.STRUCTURED_GRADIENTS
    assert all(b is not None for b in jac.blocks)


@pytest.mark.parametrize(
    "paths",
    [
        ("rows", "unreached", "rows"),
        ("rows", "decay", "rows"),
        ("rows", "unreached", "rows", "decay"),
        ("unreached", "rows", "rows"),
    ],
)
def test_a_weight_that_changes_path_between_batches_stays_exact(paths: tuple[str, ...]) -> None:
    """mid.weight by rows, unreached, or reached through weight decay too (its gradient formed)
    from batch to batch: its held rows and its summed gradients must both count."""

    def losses(m: Trunk, k: int) -> dict[str, torch.Tensor]:
        x = X * (k + 1)
        if paths[k] == "unreached":
            h = torch.tanh(m.inp(x))
            return {"a": m.a(h).mean(), "b": m.b(h).mean(), "c": h.pow(2).mean()}
        out = heads(m, m.features(x))
        if paths[k] == "decay":
            out["a"] = out["a"] + 0.1 * m.mid.weight.pow(2).sum()
        return out

    got = check(trunk(d=30), losses, list(range(len(paths))))  # wide: rows held, not summed
    if "decay" in paths:
        assert got.uncovered["mid.weight"] == "also used by PowBackward0"


# --- found in review: each case against the loop ------------------------------------------------


def test_vmap_failing_inside_a_checkpoint_falls_back_loss_by_loss() -> None:
    """Dropout recomputed in a non-reentrant checkpoint: vmap cannot batch the random op."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Dropout(0.5), nn.Linear(64, 2)).double()
    x = torch.randn(4, 64, dtype=torch.float64)

    def losses(m: nn.Sequential) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)  # the same dropout mask in every run
        y = checkpoint(m, x, use_reentrant=False)
        return {"a": y[:, 0].pow(2).mean(), "b": y[:, 1].mean()}

    got = check(net, losses)
    assert got.fell_back(Fallback.VMAP_FAILED)


def test_a_tensor_hook_on_a_weight_keeps_it_plain() -> None:
    model = trunk()
    model.mid.weight.register_hook(lambda g: 3 * g)
    got = check(model, lambda m: heads(m, m.features(X)))
    assert got.uncovered["mid.weight"] == "a tensor hook on it changes its gradient"


def test_a_weight_cast_to_complex_is_not_taken_by_rows() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3, bias=False).double()
    z = torch.randn(5, 4, dtype=torch.complex128)

    def losses(m: nn.Linear) -> dict[str, torch.Tensor]:
        y = z @ m.weight.to(torch.complex128).t()
        return {"a": y.abs().pow(2).mean(), "b": y.real.mean()}

    got = check(model, losses)
    assert "weight" in got.uncovered


def test_a_sparse_input_is_not_taken_by_rows() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    model = nn.ParameterDict({"w": w})
    x = torch.randn(5, 4, dtype=torch.float64).relu().to_sparse()

    def losses(m: nn.ParameterDict) -> dict[str, torch.Tensor]:
        y = torch.mm(x, m["w"])
        return {"a": y.pow(2).mean(), "b": y.sin().mean()}

    got = check(model, losses)
    assert got.uncovered["w"].startswith("its input is not available")


def test_rows_held_across_batches_survive_a_refilled_input_buffer() -> None:
    """A model that copies each batch into one static buffer (the CUDA-graph pattern)."""
    torch.manual_seed(0)

    class Static(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("static", torch.zeros(4, 8, dtype=torch.float64))
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.static.copy_(x)
            return self.net(self.static)

    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(4, 8, dtype=torch.float64, generator=g) for _ in range(3)]

    def losses(m: Static, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = m(x)
        return {"a": y[:, 0].pow(2).mean(), "b": y[:, 1].mean()}

    check(Static(), losses, batches)


def test_a_non_finite_gradient_at_a_padding_position_is_dropped_as_torch_does() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"e": nn.Embedding(7, 3, padding_idx=0)}).double()
    ids = torch.tensor([[0, 2, 3], [4, 0, 0]])

    def losses(m: nn.ModuleDict) -> dict[str, torch.Tensor]:
        h = m["e"](ids)
        return {"a": h.abs().sqrt().sum(), "b": h.sum()}  # sqrt'(0) = inf at the pads

    got = check(model, losses)
    assert int(got.nonfinite.sum()) == 0


def test_float16_weights_keep_their_own_overflowing_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64)).half()
    x = torch.full((8, 64), 30.0, dtype=torch.float16)

    def losses(m: nn.Sequential) -> dict[str, torch.Tensor]:
        y = m(x)
        return {"a": (y.float() * 4000).sum(), "b": y.float().mean()}

    ref = compute_gramians(problem(model, losses), strategy="loop")
    got = compute_gramians(problem(model, losses), strategy="structured")
    assert torch.equal(got.nonfinite, ref.nonfinite)
    assert got.uncovered["0.weight"].startswith("float16")


@pytest.mark.parametrize("padding", ["valid", 0, (1, 2)])
def test_conv_padding_forms_and_unbatched_inputs(padding: object) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=padding).double()
    model = nn.ModuleDict({"conv": conv})
    x = torch.randn(2, 7, 6, dtype=torch.float64)  # unbatched: (C, H, W)

    def losses(m: nn.ModuleDict) -> dict[str, torch.Tensor]:
        y = m["conv"](x)
        return {"a": y.pow(2).mean(), "b": y[0].sin().sum()}

    got = check(model, losses)
    assert "conv.weight" not in got.uncovered
