"""Benchmark: start-up. `gradtool --help`/`--version` against `python -c "import torch"`, and
`gradtool inspect SAMPLE --json` against a bare script doing the same forward/backward work.

Every command runs in a fresh process; the commands are interleaved round-robin within each
repeat (so they share the machine's noise) and the figure is the median wall time. The bare
script is `benchmarks/bare_multitask.py`: import torch, load the gradfile, one `autograd.grad`
per loss, `J J^T`, print JSON.

Run: `python benchmarks/bench_startup.py [--repeats 9] [--sample samples/multitask.py]`; results go
to the `bench_startup` section of benchmarks/RESULTS.md (`--out`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, ROOT, git_describe, header, median, table, write_section


def gradtool_command() -> list[str]:
    """Return the `gradtool` console script next to this interpreter, else `python -m gradtool`."""
    script = Path(sys.executable).with_name("gradtool")
    if script.exists():
        return [str(script)]
    found = shutil.which("gradtool")
    return [found] if found else [sys.executable, "-m", "gradtool"]


def wall(cmd: list[str], env: dict[str, str]) -> float:
    """Return the wall time in seconds of running `cmd` to completion (output discarded)."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="runs per command (median)")
    parser.add_argument("--sample", default="samples/multitask.py", help="gradfile to inspect")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to update")
    args = parser.parse_args()

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), NO_COLOR="1")
    gt = gradtool_command()
    py = sys.executable
    commands: dict[str, list[str]] = {
        'python -c "import torch"': [py, "-c", "import torch"],
        "gradtool --help": [*gt, "--help"],
        "gradtool --version": [*gt, "--version"],
        f"bare script ({args.sample})": [py, "benchmarks/bare_multitask.py", args.sample],
        f"gradtool inspect {args.sample} --json": [*gt, "inspect", args.sample, "--json"],
        f"gradtool inspect {args.sample} --json --strategy loop": [
            *gt,
            "inspect",
            args.sample,
            "--json",
            "--strategy",
            "loop",
        ],
    }
    names = list(commands)
    for cmd in commands.values():  # warm the file cache
        wall(cmd, env)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(wall(commands[name], env))
    med = {n: median(t) for n, t in times.items()}
    torch_s = med['python -c "import torch"']
    bare_s = med[f"bare script ({args.sample})"]
    rows = []
    for name in names:
        ref, limit, label = None, None, ""
        if name.startswith("gradtool --"):
            ref, limit, label = torch_s, 0.30, "import torch"
        elif name.startswith("gradtool inspect"):
            ref, limit, label = bare_s, 1.15, "bare script"
        ratio = med[name] / ref if ref else None
        rows.append(
            [
                f"`{name}`",
                f"{med[name] * 1e3:.0f}",
                "--" if ratio is None else f"{ratio:.2f}x {label}",
                "--" if limit is None else f"<= {limit:.2f}x",
                "" if ratio is None else ("met" if ratio <= limit else "NOT met"),
            ]
        )
    lines = header(
        "Start-up (CPU)",
        "cpu",
        [
            f"repeats: {args.repeats} (median wall time, fresh process each, interleaved); "
            f"OMP_NUM_THREADS={args.threads}; gradtool {git_describe()}",
        ],
    )
    lines += [*table(["command", "ms", "ratio", "target", ""], rows), ""]
    print("\n".join(lines))
    write_section(args.out, "bench_startup", lines)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
