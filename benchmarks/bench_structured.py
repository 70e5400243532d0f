"""Benchmark: the structured engine against the loop, TorchJD and gradtool's previous default.

Contenders, each computing the m x m Gramian of the per-loss gradients, forward pass included:
- hand_loop: one `autograd.grad` per loss, flattened, concatenated, `J @ J.T` (float32);
- autojac: `torchjd.autojac.jac` and per-block Gramians;
- autogram: `torchjd.autogram.Engine(model, batch_dim=None).compute_gramian(losses)` (on its
  own copy of the model: its hooks stay on the modules it is given);
- gradtool:loop: `compute_gramians(strategy="loop")`, gradtool's previous default on the CPU;
- gradtool:auto: the default now (the structured engine where it is cheaper, per layer);
- gradtool:structured: every covered weight from rows, cheaper or not (what auto declined).

Cases: the MLP (3M parameters) at batch N = 16, 128, 1024; the CNN, the transformer encoder and
token-heavy layers (8 x 512 tokens) at their usual batch; m = 2, 8, 32. Times: median of
`--repeats`, the contenders interleaved round-robin within each repeat; ratios are taken between
contenders of the same run. `err`: max_ij |G_ij - G_ref_ij| / (|g_i| |g_j|) against the loop
in float64 (1e-6 is the target). Peak memory: each contender in a fresh subprocess, after a warm-up,
peak resident set size (VmHWM) over the resident size before the run.

`--big`: the 50M-parameter MLP with 8 losses at batch 64: peak resident memory of gradtool's
default and of the hand loop against a forward pass alone, each in a fresh subprocess, counted
from the process before the model is built (so the model's own parameters are in every figure).

Run: `python benchmarks/bench_structured.py` (about 15 minutes on 2 CPU cores; `--quick` for a
smoke run, `--device cuda` on a GPU). Results go to the `bench_structured_<device>` section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cases import Case, make_case
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
from bench_engine import _ratio, _reset_hwm, _sync, autojac, hand_loop

from gradtool.engine import compute_gramians
from gradtool.problem import Problem

GRID: list[tuple[str, int | None]] = [
    ("mlp", 16),
    ("mlp", 128),
    ("mlp", 1024),
    ("cnn", None),
    ("transformer", None),
    ("tokens", None),
]
CHOSEN: dict[str, str] = {}


def reference(case: Case) -> torch.Tensor:
    """Return the loop's Gramian in float64 (model and batch converted): the exact reference."""
    model = copy.deepcopy(case.model).double()
    x, y = case.x.double(), case.y.double()
    outs = model(x)
    losses = [((o - y[:, i]) ** 2).mean() for i, o in enumerate(outs)]
    params = [p for p in model.parameters()]
    rows = []
    for loss in losses:
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
    return (jac @ jac.T).cpu()


def autogram(case: Case) -> Callable[[Case], torch.Tensor]:
    """Return the autogram contender, with its engine on its own copy of the model."""
    from torchjd.autogram import Engine

    model = copy.deepcopy(case.model)
    engine = Engine(model, batch_dim=None)

    def run(case: Case) -> torch.Tensor:
        losses = case.losses(model)
        return engine.compute_gramian(torch.stack(list(losses.values())))

    return run


def gradtool(strategy: str) -> Callable[[Case], torch.Tensor]:
    def run(case: Case) -> torch.Tensor:
        problem = Problem(model=case.model, losses=case.losses, parameters=case.params)
        result = compute_gramians(problem, strategy=strategy)
        CHOSEN[strategy] = result.strategy
        return result.gramian

    return run


def contenders(case: Case, only: str | None = None) -> dict[str, Callable[[Case], torch.Tensor]]:
    """Return the contenders (only `only`, for a memory worker: autogram's engine holds its own
    copy of the model, which must not count against the others)."""
    out: dict[str, Callable[[Case], torch.Tensor]] = {"hand_loop": hand_loop}
    try:
        out["autojac"] = autojac
        if only in (None, "autogram"):
            out["autogram"] = autogram(case)
    except ImportError:
        pass
    out["gradtool:loop"] = gradtool("loop")
    out["gradtool:auto"] = gradtool("auto")
    out["gradtool:structured"] = gradtool("structured")
    return out


def time_case(case: Case, repeats: int, device: str) -> tuple[dict[str, float], dict[str, float]]:
    fns = contenders(case)
    names = list(fns)
    ref = reference(case)
    norms = ref.diagonal().sqrt()
    scale = torch.outer(norms, norms)
    errors: dict[str, float] = {}
    for name, fn in fns.items():  # warm-up and correctness
        gramian = fn(case).detach().double().cpu()
        errors[name] = float(((gramian - ref).abs() / scale).max())
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            _sync(device)
            t0 = time.perf_counter()
            out = fns[name](case)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            del out
    return {n: median(t) for n, t in times.items()}, errors


def worker(spec: str, device: str) -> None:
    """Print, as JSON, one contender's peak memory (bytes) in this fresh process."""
    model, batch, m, name = spec.split(":", 3)
    before = rss_bytes()
    case = make_case(model, int(m), device=device, batch=int(batch) or None)
    fn: Callable[[Case], object] = (
        (lambda c: c.losses(c.model)) if name == "forward" else contenders(case, only=name)[name]
    )
    fn(case)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(case)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        print(json.dumps({"extra": peak - base, "total": peak}))
        return
    base = rss_bytes()
    _reset_hwm()
    out = fn(case)
    peak = hwm_bytes()
    del out
    print(json.dumps({"extra": peak - base, "total": peak - before}))


def peak(model: str, batch: int | None, m: int, name: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    spec = f"{model}:{batch or 0}:{m}:{name}"
    cmd = [sys.executable, __file__, "--worker", spec, "--threads", str(args.threads)]
    cmd += ["--device", args.device]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"  memory worker {name} failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(n: int | None) -> str:
    return "--" if n is None else f"{n / 2**20:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender")
    parser.add_argument("--m", nargs="+", type=int, default=[2, 8, 32], help="numbers of losses")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--no-big", action="store_true", help="skip the 50M-parameter MLP")
    parser.add_argument("--quick", action="store_true", help="smoke run: m = 2, 1 repeat")
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
        args.m, args.repeats = [2], 1
    lines = header(
        f"Structured engine ({args.device})",
        args.device,
        [
            f"torch threads: {args.threads}; repeats: {args.repeats} (median); "
            f"gradtool {git_describe()}",
            "Times include the forward pass; `x loop`, `x autogram` and `x previous` are time "
            "ratios of gradtool's default (`auto`) to the hand-written loop, TorchJD's autogram "
            "and gradtool's previous default (`loop`), measured side by side (`forced`: "
            "`--strategy structured`, every covered weight from rows); `err` is "
            "max_ij |G_ij - G_ref_ij| / (|g_i| |g_j|) against the loop in float64; memory is the "
            "peak extra resident memory (fresh subprocess) over the state before the run.",
            "The float64 reference is the model converted to float64: `err` includes the float32 "
            "forward pass's rounding, the same for every contender (hence equal `err` columns); "
            "the structured engine's own products are float64.",
        ],
    )
    rows: list[list[str]] = []
    for model, batch in GRID:
        for m in args.m:
            case = make_case(model, m, device=args.device, batch=batch)
            n = case.x.shape[0]
            label = f"{model} N={n}" + (
                f" ({n * case.x.shape[1]} tokens)" if model != "mlp" and case.x.dim() == 3 else ""
            )
            print(f"{label} m={m} ...", file=sys.stderr, flush=True)
            times, errors = time_case(case, args.repeats, args.device)
            mem: dict[str, dict] = {}
            if not args.no_memory:
                for name in ("hand_loop", "autogram", "gradtool:loop", "gradtool:auto"):
                    if name in times:
                        mem[name] = peak(model, batch, m, name, args)
            auto = times["gradtool:auto"]
            row = [
                label,
                str(m),
                CHOSEN.get("auto", "?"),
                f"{auto * 1e3:.1f}",
                _ratio(auto, times["hand_loop"]),
                _ratio(auto, times.get("autojac")),
                _ratio(auto, times.get("autogram")),
                _ratio(auto, times["gradtool:loop"]),
                _ratio(times["gradtool:structured"], times["gradtool:loop"]),
                f"{errors['gradtool:auto']:.1e}",
                f"{errors['gradtool:loop']:.1e}",
                f"{errors['gradtool:structured']:.1e}",
                f"{errors.get('autogram', float('nan')):.1e}",
            ]
            if not args.no_memory:
                row += [
                    _mib(mem.get(k, {}).get("extra"))
                    for k in ("hand_loop", "autogram", "gradtool:loop", "gradtool:auto")
                ]
            rows.append(row)
            print(" | ".join(row), flush=True)
            del case
    heads = ["case", "m", "auto ran", "auto ms", "x loop", "x autojac", "x autogram"]
    heads += ["x previous", "forced x previous", "err auto", "err previous", "err forced"]
    heads += ["err autogram"]
    if not args.no_memory:
        heads += ["MiB loop", "MiB autogram", "MiB previous", "MiB auto"]
    lines += [*table(heads, rows), ""]
    if not args.no_big:
        big = {
            name: peak("mlp50m", None, 8, name, args)
            for name in ("forward", "gradtool:auto", "hand_loop")
        }
        fwd = big["forward"].get("total")
        lines += [
            "**50M-parameter MLP, 8 losses, batch 64**: peak resident memory counted from "
            "before the model is built (its 201 MB of parameters included)",
            "",
            *table(
                ["run", "peak MiB", "x forward"],
                [[k, _mib(v.get("total")), _ratio(v.get("total"), fwd)] for k, v in big.items()],
            ),
            "",
        ]
    print("\n".join(lines))
    write_section(args.out, f"bench_structured_{args.device.split(':')[0]}", lines)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
