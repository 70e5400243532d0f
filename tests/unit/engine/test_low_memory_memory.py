"""The low-memory engine keeps its memory promise, and says so when it falls back.

Memory is measured as a user's process has it: a fresh Python process, glibc's malloc untuned,
the peak resident set size (VmHWM, reset through /proc/self/clear_refs) minus the resident size
before the call. Linux only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _models import TwoHeads
from torch import nn

from gradtool.engine import Fallback, compute_gramians
from gradtool.problem import Problem

ROOT = Path(__file__).resolve().parents[3]
MIB = 1 << 20

linux_only = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="VmHWM reset needs Linux /proc"
)

MEASURE = """
import json, os, sys
import torch

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

def measure(fn):
    base = rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return hwm() - base
"""


def run_fresh(body: str) -> dict[str, float]:
    """Run MEASURE + `body` in a fresh Python (malloc untuned); return the JSON it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", MEASURE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_block_gramian_converts_through_one_reused_chunk_buffer() -> None:
    # A fresh float64 chunk per step, each followed by a small tensor kept alive (its row
    # maxima), left holes glibc's aligned allocator could not reuse: the heap grew by up to the
    # whole block in float64 (measured: +0.9 GB on a 512 MiB block, in some processes).
    from torch.profiler import ProfilerActivity, profile

    from gradtool.engine.blocks import GRAMIAN_CHUNK, block_stats

    block = torch.randn(8, 1 << 20)  # 32 chunks of 8 x 32768
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        gramian, maxima = block_stats(block)
    chunk_bytes = GRAMIAN_CHUNK * 8
    allocations = [
        e for e in prof.events() if "empty" in e.name and e.cpu_memory_usage >= chunk_bytes
    ]
    assert len(allocations) == 1
    wide = block.double()
    assert torch.allclose(gramian, wide @ wide.T, rtol=1e-12)
    assert torch.equal(maxima, wide.abs().amax(dim=1))


@linux_only
def test_low_memory_peak_is_about_m_times_the_largest_block() -> None:
    # The largest block is 2048 x 2048: with m = 8 losses, 128 MiB of float32 gradients; all
    # parameters' gradients (what the default engine holds) are 8 x 6.3M x 4 B = 192 MiB.
    found = run_fresh(
        """
        from torch import nn
        from gradtool.engine import compute_gramians
        from gradtool.problem import Problem

        torch.set_num_threads(1)

        def problem(width, m):
            torch.manual_seed(0)
            trunk = nn.Sequential(nn.Linear(512, width), nn.ReLU(), nn.Linear(width, width),
                                  nn.ReLU(), nn.Linear(width, 512))
            heads = nn.ModuleList(nn.Linear(512, 1) for _ in range(m))
            model = nn.ModuleDict({"trunk": trunk, "heads": heads})
            x = torch.randn(32, 512)

            def losses(model):
                h = model["trunk"](x)
                return {f"l{i}": (head(h) ** 2).mean() for i, head in enumerate(model["heads"])}

            return Problem(model=model, losses=losses, parameters=list(model.named_parameters()))

        compute_gramians(problem(16, 8), low_memory=True)  # one-time set-up (vmap), tiny model
        big = problem(2048, 8)
        extra = measure(lambda: compute_gramians(big, low_memory=True))
        numels = [p.numel() for _, p in big.parameters]
        block, every = 8 * 4 * max(numels), 8 * 4 * sum(numels)
        print(json.dumps({"extra": extra, "block": block, "all": every}))
        """
    )
    assert found["block"] == 128 * MIB
    assert found["extra"] < 1.3 * found["block"], found
    assert found["extra"] < found["all"], found


def tiny_problem(checkpointing: str | None = None) -> Problem:
    torch.manual_seed(0)
    model = TwoHeads(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), checkpointing=checkpointing)
    x = torch.randn(6, 4)

    def losses(model: nn.Module) -> dict[str, torch.Tensor]:
        a, b = model(x)
        return {"a": (a**2).mean(), "b": (b**2).mean()}

    return Problem(model=model, losses=losses, parameters=list(model.named_parameters()))


def test_the_low_memory_fallback_is_a_sentence_for_a_warning() -> None:
    asked = compute_gramians(tiny_problem(), low_memory=True, strategy="loop")
    assert asked.fell_back(Fallback.LOW_MEMORY_STRATEGY)
    assert asked.low_memory_fallback == (
        "the low-memory engine did not run (low memory needs the batched backward; the loop "
        "strategy holds all gradients): the default engine ran instead, holding every loss's "
        "gradient of every parameter at once"
    )
    checkpointed = compute_gramians(tiny_problem("reentrant"), low_memory=True)
    assert checkpointed.low_memory_fallback is not None
    assert "reentrant checkpoint" in checkpointed.low_memory_fallback


def test_no_fallback_sentence_when_low_memory_ran_or_was_not_asked() -> None:
    ran = compute_gramians(tiny_problem(), low_memory=True)
    assert ran.low_memory and ran.low_memory_fallback is None and ran.strategy == "batched"
    default = compute_gramians(tiny_problem(), strategy="loop")
    assert not default.low_memory and default.low_memory_fallback is None
