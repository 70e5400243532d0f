"""Benchmark: every weighting method's exact solve (`WEIGHTINGS[name].solve`) at m = 64.

Gramians G = J J^T of seeded Jacobians J (m x n): full rank (n = 2m), rank-deficient (n = 16)
and conflicting (a shared component with alternating signs). The methods are timed interleaved
(round-robin over methods and Gramians, `--repeats` rounds), so machine noise spreads evenly; the
figure is each method's median wall time per solve, beside its worst certificate residual.
Nash-MTL and FairGrad need linearly independent gradients and are skipped on the rank-deficient
Gramian.

Run: `python benchmarks/bench_weightings.py [--m 64] [--repeats 11]`; results go to the
`bench_weightings` section of benchmarks/RESULTS.md (`--out`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, git_describe, header, median, table, write_section

from gradtool.weightings import WEIGHTINGS

TARGET_MS = 50.0


def gramians(m: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Return the benchmark Gramians (float64, m x m), by name."""
    rng = np.random.default_rng(seed)
    full = rng.standard_normal((m, 2 * m))
    low = rng.standard_normal((m, 16))
    signs = np.where(np.arange(m) % 2 == 0, 1.0, -1.0)[:, None]
    conflict = signs * rng.standard_normal((1, 4 * m)) + 0.3 * rng.standard_normal((m, 4 * m))
    return {
        "full rank": full @ full.T,
        "rank 16": low @ low.T,
        "conflicting": conflict @ conflict.T,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=64, help="number of losses (default 64)")
    parser.add_argument("--repeats", type=int, default=11, help="rounds (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to update")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = gramians(args.m)
    jobs = [
        (name, label, g)
        for name, method in WEIGHTINGS.items()
        for label, g in cases.items()
        if not (method.needs_full_rank and label == "rank 16")
    ]
    times: dict[str, list[float]] = {name: [] for name in WEIGHTINGS}
    residual: dict[str, float] = dict.fromkeys(WEIGHTINGS, 0.0)
    for name, _, g in jobs:  # warm-up (imports, first calls)
        WEIGHTINGS[name].solve(g)
    for _ in range(args.repeats):
        for name, _, g in jobs:
            t0 = time.perf_counter()
            solved = WEIGHTINGS[name].solve(g)
            times[name].append(time.perf_counter() - t0)
            residual[name] = max(residual[name], solved.residual)
    rows = []
    for name, method in WEIGHTINGS.items():
        ms = median(times[name]) * 1e3
        rows.append(
            [
                method.display,
                f"{ms:.2f}",
                f"{max(times[name]) * 1e3:.2f}",
                f"{residual[name]:.1e}",
                "met" if ms < TARGET_MS else "NOT met",
            ]
        )
    lines = header(
        f"Weighting methods: exact solve time (CPU), m = {args.m}",
        "cpu",
        [
            f"Gramians: {', '.join(cases)} (Nash-MTL, FairGrad: full rank and conflicting only); "
            f"interleaved rounds: {args.repeats}; torch threads: {args.threads}; "
            f"gradtool {git_describe()}; target: under {TARGET_MS:.0f} ms per solve"
        ],
    )
    lines += [
        *table(
            ["method", "median ms", "max ms", "worst residual", f"< {TARGET_MS:.0f} ms"],
            rows,
        ),
        "",
    ]
    print("\n".join(lines))
    write_section(args.out, "bench_weightings", lines)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
