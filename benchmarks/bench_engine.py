"""Benchmark: gradtool's engine against what users write today, TorchJD, and the lower bound.

For each model (an MLP of about 3M parameters, a small CNN, a small transformer encoder) and each
number of losses m, every contender computes the m x m Gramian of the per-loss gradients, forward
pass included:

- hand_loop: one `autograd.grad(loss, params, retain_graph=True)` per loss, flatten, `torch.cat`,
  `J @ J.T`: the notebook code users write today;
- autojac: `torchjd.autojac.jac(losses, params)` and per-block Gramians;
- gradtool:STRATEGY: `gradtool.engine.compute_gramians(problem, strategy=STRATEGY)` (the default
  is `auto`), and `low_memory=True` (hooks accumulate per-block Gramians as gradients arrive);
- lower_bound: one forward pass plus m backward passes of the summed loss (gradients dropped).

Times: median of `--repeats` runs, the contenders interleaved round-robin within each repeat (so
they share the machine's noise), as ratios to hand_loop and to lower_bound. Peak memory: on CPU,
each contender runs in a fresh subprocess (after one warm-up run there) and the figure is its peak
resident set size (VmHWM, reset through /proc/self/clear_refs) minus the resident size just
before the measured run (model, data and warm-up done); glibc's mmap threshold is fixed, so freed
tensors go back to the system and the peak is the tensors' peak. On CUDA it is
`torch.cuda.max_memory_allocated()` minus the allocation before the run. Correctness: each
contender's Gramian is compared with the hand-written loop's, computed in float64.

Run: `python benchmarks/bench_engine.py` (about 10 minutes on 2 CPU cores), `--quick` for a
smoke run, `--device cuda` on a GPU. Results go to the `bench_engine` section of
benchmarks/RESULTS.md (`--out`).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cases import MODELS, Case, make_case
from _common import (
    RESULTS,
    git_describe,
    header,
    hwm_bytes,
    median,
    rss_bytes,
    table,
    write_section,
)

from gradtool.engine import compute_gramians
from gradtool.problem import Problem

Contender = Callable[[Case], "torch.Tensor | None"]
LAST_STRATEGY: dict[str, str] = {}
REASONS: set[str] = set()  # the engine's stated reasons for its choices, listed under the tables


def hand_loop(case: Case) -> torch.Tensor:
    """Return J J^T by one autograd.grad per loss, flattened and concatenated (float32)."""
    losses = case.losses(case.model)
    params = [p for _, p in case.params]
    rows = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    jac = torch.stack(rows)
    return jac @ jac.T


def reference(case: Case) -> torch.Tensor:
    """Return the hand-written loop's Gramian computed in float64 (the correctness reference)."""
    losses = case.losses(case.model)
    params = [p for _, p in case.params]
    rows = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1).double()
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    jac = torch.stack(rows)
    return (jac @ jac.T).cpu()


def autojac(case: Case) -> torch.Tensor:
    """Return the sum of per-block Gramians of `torchjd.autojac.jac`'s Jacobians."""
    from torchjd.autojac import jac

    losses = case.losses(case.model)
    jacs = jac(list(losses.values()), [p for _, p in case.params])
    gramian = None
    for j in jacs:
        flat = j.flatten(1)
        block = flat @ flat.T
        gramian = block if gramian is None else gramian + block
    return gramian


def gradtool_engine(strategy: str, low_memory: bool = False) -> Contender:
    """Return the contender running gradtool's `compute_gramians` with `strategy`."""
    key = f"gradtool:{strategy}" + ("+low_memory" if low_memory else "")

    def run(case: Case) -> torch.Tensor:
        problem = Problem(model=case.model, losses=case.losses, parameters=case.params)
        kwargs = {"low_memory": True} if low_memory else {}
        result = compute_gramians(problem, strategy=strategy, **kwargs)
        LAST_STRATEGY[key] = result.strategy
        if result.fallback_reason:
            REASONS.add(result.fallback_reason)
        return result.gramian

    run.__name__ = key
    return run


def lower_bound(case: Case) -> None:
    """Run one forward pass and m backward passes of the summed loss, dropping the gradients."""
    losses = case.losses(case.model)
    params = [p for _, p in case.params]
    total = torch.stack(list(losses.values())).sum()
    for i in range(case.m):
        torch.autograd.grad(total, params, retain_graph=i < case.m - 1)


def contenders() -> dict[str, Contender]:
    """Return the contenders, in table order."""
    out: dict[str, Contender] = {"hand_loop": hand_loop}
    try:
        import torchjd.autojac  # noqa: F401

        out["autojac"] = autojac
    except ImportError:
        pass
    for strategy in ("auto", "batched", "loop", "backward"):
        out[f"gradtool:{strategy}"] = gradtool_engine(strategy)
    if "low_memory" in inspect.signature(compute_gramians).parameters:
        out["gradtool:auto+low_memory"] = gradtool_engine("auto", low_memory=True)
    out["lower_bound"] = lower_bound
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_case(case: Case, repeats: int, device: str) -> tuple[dict[str, float], dict[str, float]]:
    """Return each contender's median seconds and its Gramian's relative error to the reference."""
    fns = contenders()
    names = list(fns)
    ref = reference(case)
    errors: dict[str, float] = {}
    for name, fn in fns.items():  # warm-up and correctness
        gramian = fn(case)
        if gramian is not None:
            diff = (gramian.detach().double().cpu() - ref).abs().max()
            errors[name] = float(diff / ref.abs().max())
        del gramian
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            _sync(device)
            t0 = time.perf_counter()
            out = fns[name](case)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            del out
    return {n: median(t) for n, t in times.items()}, errors


# --- peak memory -------------------------------------------------------------------------------


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_in_process(case: Case, name: str, device: str) -> int:
    """Return the contender's peak extra memory in bytes, measured in this process."""
    fn = contenders()[name]
    fn(case)  # warm-up: one-time allocations (thread pools, vmap set-up) are not the contender's
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(case)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = rss_bytes()
    _reset_hwm()
    out = fn(case)
    peak = hwm_bytes()
    del out
    return peak - base


def peak_subprocess(model: str, m: int, name: str, threads: int) -> int | None:
    """Return the contender's peak extra resident memory in bytes, run in a fresh subprocess."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        f"{model}:{m}:{name}",
        "--threads",
        str(threads),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"  memory worker {name} failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_extra"])


def worker(spec: str, device: str) -> None:
    """Run one contender once after a warm-up and print its peak extra memory as JSON."""
    model, m, name = spec.split(":", 2)
    case = make_case(model, int(m), device=device)
    print(json.dumps({"peak_extra": peak_in_process(case, name, device)}))


# --- the run -----------------------------------------------------------------------------------


def _mib(n: int | None) -> str:
    return "--" if n is None else f"{n / 2**20:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "--" if a is None or not b else f"{a / b:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--m", nargs="+", type=int, default=[2, 8, 32], help="numbers of losses")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--quick", action="store_true", help="smoke run: m=2 and 8, 2 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to update")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.device)
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.quick:
        args.m, args.repeats = [m for m in args.m if m <= 8] or [2], min(args.repeats, 2)

    lines = header(
        f"Engine ({args.device})",
        args.device,
        [
            f"torch threads: {args.threads}; repeats: {args.repeats} (median); "
            f"gradtool {git_describe()}",
            "Times include the forward pass. `x hand` and `x lower` are time ratios to the "
            "hand-written loop and to the lower bound; memory is the peak extra "
            + ("resident memory (fresh subprocess, VmHWM)" if args.device == "cpu" else "CUDA")
            + " over the state before the run; `err` is max |G - G_ref| / max |G_ref|.",
        ],
    )
    summary: list[list[str]] = []
    for model in args.models:
        for m in args.m:
            case = make_case(model, m, device=args.device)
            print(f"{model} (m={m}, {case.numel:,} parameters) ...", file=sys.stderr, flush=True)
            times, errors = time_case(case, args.repeats, args.device)
            names = list(times)
            mems: dict[str, int | None] = {}
            if not args.no_memory:
                for name in names:
                    if args.device == "cpu":
                        mems[name] = peak_subprocess(model, m, name, args.threads)
                    else:
                        mems[name] = peak_in_process(case, name, args.device)
            rows = []
            for name in names:
                t = times[name]
                rows.append(
                    [
                        name + (f" -> {LAST_STRATEGY[name]}" if name == "gradtool:auto" else ""),
                        f"{t * 1e3:.1f}",
                        _ratio(t, times["hand_loop"]),
                        _ratio(t, times["lower_bound"]),
                        _mib(mems.get(name)),
                        _ratio(mems.get(name), mems.get("hand_loop")),
                        f"{errors[name]:.1e}" if name in errors else "--",
                    ]
                )
            block = table(
                ["contender", "ms", "x hand", "x lower", "peak MiB", "mem x hand", "err"], rows
            )
            title = f"**{model}**, {case.numel:,} parameters, batch {case.x.shape[0]}, m = {m}"
            lines += [title, "", *block, ""]
            print("\n".join([title, *block, ""]), flush=True)
            auto = times["gradtool:auto"]
            summary.append(
                [
                    model,
                    str(m),
                    LAST_STRATEGY.get("gradtool:auto", "?"),
                    _ratio(auto, times["hand_loop"]),
                    _ratio(auto, times.get("autojac")),
                    _ratio(auto, times["lower_bound"]),
                    _ratio(mems.get("gradtool:auto"), mems.get("hand_loop")),
                    _mib(mems.get("gradtool:auto+low_memory")),
                ]
            )
            del case
    lines += [
        "**Summary: gradtool's default engine (`auto`)**",
        "",
        *table(
            [
                "model",
                "m",
                "auto chose",
                "x hand",
                "x autojac",
                "x lower",
                "mem x hand",
                "low-memory peak MiB",
            ],
            summary,
        ),
        "",
    ]
    if REASONS:
        lines += ["The engine's reasons for its choices (`fallback_reason`):", ""]
        lines += [f"- {r}" for r in sorted(REASONS)] + [""]
    print("\n".join(lines[-len(summary) - 6 - len(REASONS) :]))
    write_section(args.out, f"bench_engine_{args.device.split(':')[0]}", lines)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
