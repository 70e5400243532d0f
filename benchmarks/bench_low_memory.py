"""Benchmark: the extra memory of `--low-memory` against the default engine, as a user gets it.

The model: an MLP trunk of about 50M parameters (2048 -> 4096 -> 4096 -> 4096 -> 2048, ReLU) with
m one-output heads, loss i the MSE of head i on a batch of 64; its largest parameter block is
4096 x 4096, so the low-memory engine's promise, m x (largest block) float32 values, is
m x 64 MiB (512 MiB for m = 8), and the default engine's m x (all parameters) is m x 192 MiB.

Each configuration runs in a fresh subprocess, with glibc's malloc as it comes (no
MALLOC_MMAP_THRESHOLD_ tuning: a user's process has none); the figure is the peak resident set
size during one `compute_gramians` call (forward included, the first call of the process: what
`gradtool inspect` pays) minus the resident size just before it (model and data built). VmHWM is
reset through /proc/self/clear_refs, so Linux only. Repeats show the spread between processes
(glibc's heap decisions depend on the process's history, so one run can mislead).

Run: `python benchmarks/bench_low_memory.py` (about 2 minutes on 2 cores, 3 GB of memory);
`--losses 8 --repeats 3` are the defaults, `--quick` a small model for a smoke run. It prints a
markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import hwm_bytes, rss_bytes

WIDTHS = (2048, 4096, 4096, 4096, 2048)
QUICK_WIDTHS = (256, 1024, 1024, 256)
BATCH = 64


def worker(engine: str, m: int, widths: tuple[int, ...]) -> dict[str, object]:
    """Build the model, run `compute_gramians` once, return its peak extra memory and facts."""
    import torch
    from torch import nn

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from gradtool.engine import compute_gramians
    from gradtool.problem import Problem

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    trunk = nn.Sequential(*layers)
    heads = nn.ModuleList(nn.Linear(widths[-1], 1) for _ in range(m))
    model = nn.ModuleDict({"trunk": trunk, "heads": heads})
    x = torch.randn(BATCH, widths[0])
    y = torch.randn(m, BATCH)

    def losses(model: nn.Module) -> dict[str, torch.Tensor]:
        h = model["trunk"](x)
        return {
            f"loss{i}": ((head(h).squeeze(-1) - y[i]) ** 2).mean()
            for i, head in enumerate(model["heads"])
        }

    named = list(model.named_parameters())
    problem = Problem(model=model, losses=losses, parameters=named)
    base = rss_bytes()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    result = compute_gramians(problem, low_memory=engine == "low_memory")
    seconds = time.perf_counter() - start
    peak = hwm_bytes() - base
    numel = sum(p.numel() for _, p in named)
    largest = max(p.numel() for _, p in named)
    return {
        "engine": engine,
        "peak_extra": peak,
        "seconds": seconds,
        "numel": numel,
        "largest": largest,
        "strategy": result.strategy,
        "fallback": result.low_memory_fallback,
    }


def run(engine: str, m: int, quick: bool) -> dict[str, object]:
    """Return the worker's result, run in a fresh Python process."""
    cmd = [sys.executable, __file__, "--worker", engine, "--losses", str(m)]
    if quick:
        cmd.append("--quick")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {engine} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=("default", "low_memory"))
    args = parser.parse_args()
    widths = QUICK_WIDTHS if args.quick else WIDTHS
    if args.worker:
        print(json.dumps(worker(args.worker, args.losses, widths)))
        return
    m = args.losses
    rows = []
    for engine in ("default", "low_memory"):
        found = [run(engine, m, args.quick) for _ in range(args.repeats)]
        peaks = [float(r["peak_extra"]) for r in found]  # type: ignore[arg-type]
        first = found[0]
        block = 4 * m * int(first["largest"])  # type: ignore[call-overload]
        every = 4 * m * int(first["numel"])  # type: ignore[call-overload]
        promise = block if engine == "low_memory" else every
        rows.append(
            f"| {engine} | {mib(statistics.median(peaks))} | {mib(min(peaks))} - {mib(max(peaks))}"
            f" | {mib(promise)} | {statistics.median(peaks) / promise:.2f}x"
            f" | {statistics.median(float(r['seconds']) for r in found):.1f} |"  # type: ignore[arg-type]
        )
        if first["fallback"]:
            print(f"note: {engine}: {first['fallback']}", file=sys.stderr)
    numel = int(found[0]["numel"])  # type: ignore[call-overload]
    print(f"MLP {'x'.join(map(str, widths))} + {m} heads: {numel:,} parameters, m = {m}, ")
    print(f"{args.repeats} fresh processes each, glibc malloc untuned\n")
    print("| engine | peak extra MiB (median) | min - max | m x block(s) MiB | ratio | seconds |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
