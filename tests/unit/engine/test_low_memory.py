"""The low-memory engine against the default one: same per-block Gramians, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import weakref

import pytest
import torch
from _models import ROOT
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradtool.engine import EngineResult, GramianAccumulator, compute_gramians
from gradtool.engine.low_memory import hooks_available
from gradtool.errors import GradientError
from gradtool.problem import Problem

pytestmark = pytest.mark.skipif(
    not hooks_available(), reason="this torch's batched backward hides gradients from hooks"
)


class HeadsMLP(nn.Module):
    """A shared trunk, one head per loss, and a head no loss uses."""

    def __init__(self, m: int = 3) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(m))
        self.unused = nn.Linear(16, 2)


def heads_losses(model: HeadsMLP, batch: tuple[torch.Tensor, torch.Tensor]) -> dict:
    x, y = batch
    h = model.trunk(x)
    out = {
        f"t{i}": ((head(h).squeeze(-1) - y[:, i]) ** 2).mean() for i, head in enumerate(model.heads)
    }
    out["trunk_only"] = h.pow(2).mean()
    return out


class SmallConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 3 * 3, 3)


def conv_losses(model: SmallConv, batch: torch.Tensor) -> dict:
    h = torch.relu(model.conv2(torch.relu(model.conv1(batch))))
    out = model.fc(h.flatten(1))
    return {"a": out[:, 0].pow(2).mean(), "b": out[:, 1:].abs().mean(), "c": h.mean()}


class Tied(nn.Module):
    """An embedding whose weight is also the output projection, and a layer applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 5)
        self.mix = nn.Linear(5, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.mix(torch.tanh(self.mix(self.embed(tokens))))
        return h @ self.embed.weight.T


def tied_losses(model: Tied, batch: torch.Tensor) -> dict:
    logits = model(batch)
    return {
        "next": nn.functional.cross_entropy(logits[:-1], batch[1:]),
        "same": nn.functional.cross_entropy(logits, batch),
        "norm": model.embed.weight.pow(2).sum(),
    }


def heads_case(n_batches: int = 1) -> Problem:
    torch.manual_seed(0)
    model = HeadsMLP()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)) for _ in range(n_batches)
    ]
    return Problem(model, heads_losses, list(model.named_parameters()), batches=batches)


def conv_case(n_batches: int = 1) -> Problem:
    torch.manual_seed(2)
    model = SmallConv()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(4, 2, 7, 7, generator=g) for _ in range(n_batches)]
    return Problem(model, conv_losses, list(model.named_parameters()), batches=batches)


def tied_case(n_batches: int = 1) -> Problem:
    torch.manual_seed(4)
    model = Tied()
    g = torch.Generator().manual_seed(5)
    batches = [torch.randint(0, 7, (6,), generator=g) for _ in range(n_batches)]
    return Problem(model, tied_losses, list(model.named_parameters()), batches=batches)


CASES = {"mlp_heads_unused": heads_case, "conv": conv_case, "tied": tied_case}


def assert_same_result(got: EngineResult, want: EngineResult, rtol: float) -> None:
    scale = float(want.gramians.abs().max())
    torch.testing.assert_close(got.gramians, want.gramians, rtol=rtol, atol=rtol * scale)
    torch.testing.assert_close(
        torch.tensor(got.max_abs), torch.tensor(want.max_abs), rtol=rtol, atol=0.0
    )
    assert torch.equal(got.nonfinite, want.nonfinite)
    assert torch.equal(got.reached, want.reached)
    assert got.loss_values == want.loss_values
    assert got.num_batches == want.num_batches
    if want.batch_gramians is None:
        assert got.batch_gramians is None
    else:
        assert got.batch_gramians is not None
        torch.testing.assert_close(
            got.batch_gramians, want.batch_gramians, rtol=rtol, atol=rtol * scale
        )


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n_batches", [1, 3])
def test_per_block_gramians_equal_the_default_engine(case: str, n_batches: int) -> None:
    want = compute_gramians(CASES[case](n_batches), strategy="batched")
    got = compute_gramians(CASES[case](n_batches), low_memory=True)
    assert got.strategy == "batched" and got.fallback_reason is None
    assert_same_result(got, want, rtol=1e-10)
    loop = compute_gramians(CASES[case](n_batches), strategy="loop")
    assert_same_result(got, loop, rtol=1e-5)  # another order of float32 operations


def test_unused_parameters_stay_unreached_and_zero() -> None:
    result = compute_gramians(heads_case(), low_memory=True)
    names = result.param_names
    for suffix in ("weight", "bias"):
        b = names.index(f"unused.{suffix}")
        assert not bool(result.reached[b].any())
        assert float(result.gramians[b].abs().max()) == 0.0
    head0 = names.index("heads.0.weight")
    assert result.reached[head0].tolist() == [True, False, False, False]


def test_model_left_as_found_and_no_hooks_left() -> None:
    problem = tied_case(2)
    before = {n: p.detach().clone() for n, p in problem.model.named_parameters()}
    compute_gramians(problem, low_memory=True)
    for n, p in problem.model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None, n
        assert not p._backward_hooks, n  # type: ignore[attr-defined]


def test_blocks_are_not_kept_with_a_single_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most one Jacobian block is alive in gradtool's hands at a time (one batch)."""
    alive: set[int] = set()
    most = 0
    original = GramianAccumulator.add_block

    def add_block(self: GramianAccumulator, b: int, block: torch.Tensor, *, keep: bool = True):  # type: ignore[no-untyped-def]
        nonlocal most
        assert not keep
        alive.add(b)
        weakref.finalize(block, alive.discard, b)
        most = max(most, len(alive))
        original(self, b, block, keep=keep)

    monkeypatch.setattr(GramianAccumulator, "add_block", add_block)
    result = compute_gramians(conv_case(), low_memory=True)
    assert result.strategy == "batched"
    assert most == 1


def test_loop_and_backward_strategies_fall_back_and_say_so() -> None:
    for strategy in ("loop", "backward"):
        got = compute_gramians(heads_case(), strategy=strategy, low_memory=True)
        assert got.strategy == strategy
        assert got.fallback_reason and "low memory" in got.fallback_reason
        assert_same_result(got, compute_gramians(heads_case(), strategy=strategy), rtol=1e-10)


def test_reentrant_checkpoint_falls_back_to_backward() -> None:
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))

    def losses(m: nn.Sequential) -> dict:
        h = m[0](torch.ones(5, 3))
        out = checkpoint(m[1:], h, use_reentrant=True)
        return {"a": out[:, 0].mean(), "b": out[:, 1].pow(2).mean()}

    problem = Problem(model, losses, list(model.named_parameters()))
    got = compute_gramians(problem, low_memory=True)
    assert got.strategy == "backward"
    assert got.fallback_reason and "reentrant" in got.fallback_reason
    assert_same_result(got, compute_gramians(problem), rtol=1e-10)
    with pytest.raises(GradientError, match="reentrant"):
        compute_gramians(problem, strategy="batched", low_memory=True)


class NoVmap(torch.autograd.Function):
    """A custom function whose backward reads a value (`.item()`): vmap cannot run it."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        return x * 2

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        scale = 2.0 if grad.sum().item() < float("inf") else 0.0
        return grad * scale


def test_vmap_failure_differentiates_the_rest_loss_by_loss() -> None:
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))

    def losses(m: nn.Sequential) -> dict:
        y = m[1](NoVmap.apply(m[0](torch.randn(6, 3, generator=torch.Generator().manual_seed(0)))))
        return {"p": y[:, 0].mean(), "q": y[:, 1].pow(2).mean()}

    problem = Problem(model, losses, list(model.named_parameters()))
    want = compute_gramians(problem, strategy="loop")
    got = compute_gramians(problem, low_memory=True)
    assert got.fallback_reason and "vmap" in got.fallback_reason
    assert_same_result(got, want, rtol=1e-5)
    with pytest.raises(GradientError, match="batched strategy"):
        compute_gramians(problem, strategy="batched", low_memory=True)


def test_nonfinite_blocks_are_recomputed_loss_by_loss() -> None:
    model = nn.Linear(2, 1)

    def losses(m: nn.Linear) -> dict:
        out = m(torch.ones(1, 2)).sum()
        # sqrt at 0 has an infinite derivative: finite value, non-finite gradient
        return {"ok": out, "bad": torch.sqrt((m.weight - m.weight.detach()).sum().abs()) + out}

    problem = Problem(model, losses, list(model.named_parameters()))
    got = compute_gramians(problem, low_memory=True)
    assert int(got.nonfinite[:, 0].sum()) == 0  # no NaN leaked into the finite loss
    assert int(got.nonfinite[0, 1]) > 0
    assert got.fallback_reason and "non-finite" in got.fallback_reason
    want = compute_gramians(problem, strategy="loop")
    assert torch.equal(got.nonfinite, want.nonfinite)
    assert torch.equal(got.reached, want.reached)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from torch import nn
    from gradtool.engine import compute_gramians
    from gradtool.problem import Problem

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m, width, depth = 16, 512, 8
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])
    x = torch.randn(4, width)
    targets = torch.randn(m, width)

    def losses(mod):
        out = mod(x)
        return {f"l{i}": (out * targets[i]).mean() for i in range(m)}

    problem = Problem(model, losses, list(model.named_parameters()))
    low = sys.argv[1] == "low"

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    compute_gramians(problem, strategy="batched", low_memory=low)  # warm-up
    base = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")
    compute_gramians(problem, strategy="batched", low_memory=low)
    print(json.dumps({"peak": status("VmHWM:") - base}))
    """
)


def _peak_extra(mode: str) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak"])


@pytest.mark.slow
@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK)),
    reason="peak resident memory is read from Linux's /proc/self (VmHWM, clear_refs)",
)
def test_low_memory_peak_is_about_one_block_not_all() -> None:
    """Not timed: peak extra resident memory of one run, default engine vs low memory.

    16 losses x 8 layers of 512 x 512: all the blocks take 16 x 2.1M x 4 B = 134 MB, the largest
    one 16 x 262k x 4 B = 17 MB.
    """
    all_blocks = 16 * 8 * (512 * 512 + 512) * 4
    largest = 16 * (512 * 512) * 4
    default, low = _peak_extra("default"), _peak_extra("low")
    assert default > 0.9 * all_blocks
    assert low < 3 * largest
    assert low < 0.35 * default
