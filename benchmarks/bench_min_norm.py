"""Benchmark: the exact min-norm (MGDA) solver, `gradtool.min_norm.min_norm_weights`, at m = 256.

Gramians G = J J^T of seeded random Jacobians J (m x n): full rank (n = 2m), rank-deficient
(n = 32: rank 32 < m, many minimisers), and conflicting (a shared component with opposite signs:
an interior optimum with a large support). Each is solved `--repeats` times; the figure is the
median wall time, with the support size, whether the weights are unique, and the KKT residual.

Run: `python benchmarks/bench_min_norm.py [--m 256] [--repeats 21]`; results go to the
`bench_min_norm` section of benchmarks/RESULTS.md (`--out`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, git_describe, header, median, table, write_section

from gradtool.linalg.min_norm import min_norm_weights


def gramians(m: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return the benchmark Gramians (float64, m x m), by name."""
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(m, 2 * m, generator=g, dtype=torch.float64)
    low = torch.randn(m, 32, generator=g, dtype=torch.float64)
    shared = torch.randn(1, 4 * m, generator=g, dtype=torch.float64)
    signs = torch.where(torch.arange(m) % 2 == 0, 1.0, -1.0).to(torch.float64)[:, None]
    conflict = signs * shared + 0.3 * torch.randn(m, 4 * m, generator=g, dtype=torch.float64)
    return {
        f"full rank (J: {m} x {2 * m})": full @ full.T,
        f"rank-deficient (rank 32, J: {m} x 32)": low @ low.T,
        f"conflicting pairs (J: {m} x {4 * m})": conflict @ conflict.T,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=256, help="number of losses (default 256)")
    parser.add_argument("--repeats", type=int, default=21, help="solves per Gramian (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to update")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, gram in gramians(args.m).items():
        min_norm_weights(gram)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sol = min_norm_weights(gram)
            times.append(time.perf_counter() - t0)
        ms = median(times) * 1e3
        rows.append(
            [
                name,
                f"{ms:.1f}",
                f"{min(times) * 1e3:.1f}",
                str(len(sol.support)),
                str(sol.unique),
                f"{sol.kkt_residual:.1e}",
                "met" if ms < 50 else "NOT met",
            ]
        )
    lines = header(
        f"Exact min-norm solver (CPU), m = {args.m}",
        "cpu",
        [
            f"repeats: {args.repeats} (median); torch threads: {args.threads}; "
            f"gradtool {git_describe()}; target: under 50 ms"
        ],
    )
    lines += [
        *table(
            ["Gramian", "median ms", "min ms", "support", "unique", "KKT residual", "< 50 ms"],
            rows,
        ),
        "",
    ]
    print("\n".join(lines))
    write_section(args.out, "bench_min_norm", lines)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
