"""Benchmark: scaling of the distributed engine, one process against two gloo ranks on the CPU.

The problem is gradfile-like: the MLP of `_cases.py` (about 2.9M parameters) with m linear heads
(m losses) and B batches (default m = 8, B = 8 batches of 64). What is timed is the engine part,
`compute_gramians(problem[, group=...])` over the problem's batches (the batches are made before;
the model is built and warmed up once per process). The variants:

- `1 process, 1 thread`: the plain engine, no process group (the baseline T1);
- `1 process, 2 threads`: the plain engine with 2 torch threads (the other use of 2 cores);
- `1 rank, distributed path`: a gloo group of one rank, `group=` passed: the distributed code path
  (sums kept, reduce-scatter, all-reduce) without the parallelism, so its overhead shows alone;
- `2 ranks x 1 thread`: a gloo group of 2 ranks, each taking batch k with k mod 2 == rank.

Every variant lives in processes spawned once (torch.multiprocessing, spawn; a free port chosen at
run time) that wait on a pipe between runs; each repeat runs the variants one after the other in
a rotating order (interleaved, so they share the machine's noise), and the tables give medians.
Ranks start a run after a barrier; the wall time is the last rank's end minus the first rank's
start (one monotonic clock on one machine). Each rank also reports its CPU time (process time,
all threads, kernel included): on a machine shared with other jobs it is the figure that other
load disturbs least, and the cost model's constants are taken from it. Inside a rank,
`torch.distributed`'s collectives (and the share's block Gramians) are wrapped to record their
wall and CPU time, their tensors' bytes (the payload) and the bytes the process wrote to its
sockets during the call (`wchar` of /proc/self/io: gloo's TCP transport sends with write/writev),
so the bytes moved are measured, not only computed from the sizes.

Everything has a timeout: the process group and gradtool's collectives (GRADTOOL_DIST_TIMEOUT),
each wait on a worker, and the whole run (`--timeout`); the repeats stop at 3 past `--budget`.

Run: `python benchmarks/bench_distributed.py` (2-4 minutes on 2 busy CPU cores), `--quick` for a
smoke run (about 1 minute). Results go to the `bench_distributed_cpu` section of
benchmarks/RESULTS.md (`--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cases import TRUNKS, make_case
from _common import RESULTS, git_describe, header, median, table, write_section

from gradtool.engine import compute_gramians
from gradtool.engine.distributed import Group
from gradtool.problem import Problem

COLLECTIVES = ("reduce_scatter", "all_reduce", "all_gather", "all_gather_object")


@dataclass(frozen=True)
class Config:
    """The problem and the run's limits (the same in every worker)."""

    model: str = "mlp"
    m: int = 8
    batches: int = 8
    batch: int = 64
    timeout: float = 120.0  # seconds: one collective, one wait on a worker


@dataclass(frozen=True)
class Variant:
    """One way to run the engine: `world` processes of `threads` torch threads each."""

    name: str
    world: int
    threads: int
    distributed: bool


VARIANTS = (
    Variant("1 process, 1 thread", 1, 1, False),
    Variant("1 process, 2 threads", 1, 2, False),
    Variant("1 rank, distributed path", 1, 1, True),
    Variant("2 ranks x 1 thread", 2, 1, True),
)
BASE = VARIANTS[0].name
ONE_RANK = VARIANTS[2].name
TWO_RANKS = VARIANTS[3].name


# --- the problem -------------------------------------------------------------------------------


def make_problem(cfg: Config, shard: tuple[int, int] | None) -> Problem:
    """Return the gradfile-like problem: the case's model, m MSE losses, `cfg.batches` batches."""
    case = make_case(cfg.model, cfg.m, batch=cfg.batch, seed=0)
    gen = torch.Generator().manual_seed(1)
    shape = tuple(case.x.shape[1:])
    batches = [
        (
            torch.randn(cfg.batch, *shape, generator=gen),
            torch.randn(cfg.batch, cfg.m, generator=gen),
        )
        for _ in range(cfg.batches)
    ]

    def losses(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict:
        x, y = batch
        outs = model(x)
        return {f"task{i}": ((o - y[:, i]) ** 2).mean() for i, o in enumerate(outs)}

    return Problem(
        model=case.model, losses=losses, parameters=case.params, batches=batches, shard=shard
    )


# --- inside a worker: the collectives, wrapped -------------------------------------------------

LOG: list[dict[str, Any]] = []


def _wchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def _payload(name: str, args: tuple[Any, ...]) -> int:
    """Return the bytes of the tensors a collective is given (this rank's contribution)."""
    if name == "reduce_scatter":  # (output, input_list): the whole (m, R x width) buffer
        return sum(t.numel() * t.element_size() for t in args[1])
    if name == "all_reduce":  # (tensor)
        return args[0].numel() * args[0].element_size()
    if name == "all_gather":  # (output_list, tensor)
        return args[1].numel() * args[1].element_size()
    return 0  # all_gather_object: pickled, only the wire bytes are known


def _wrap_collectives() -> None:
    for name in COLLECTIVES:
        original = getattr(dist, name)

        def wrapped(*args: Any, _op: str = name, _fn: Any = original, **kwargs: Any) -> Any:
            w0, c0, t0 = _wchar(), time.process_time(), time.perf_counter()
            out = _fn(*args, **kwargs)
            t1, c1, w1 = time.perf_counter(), time.process_time(), _wchar()
            LOG.append(
                {
                    "op": _op,
                    **{"t0": t0, "t1": t1, "c0": c0, "c1": c1},
                    **{"payload": _payload(_op, args), "wire": w1 - w0},
                }
            )
            return out

        setattr(dist, name, wrapped)


def _wrap_share_gramians() -> None:
    """Time the reduce phase's own work on this rank's share: block Gramians, non-finite counts."""
    import gradtool.engine.distributed as module

    for name in ("block_stats", "nonfinite_counts"):
        original = getattr(module, name)

        def wrapped(*args: Any, _fn: Any = original, **kwargs: Any) -> Any:
            c0, t0 = time.process_time(), time.perf_counter()
            out = _fn(*args, **kwargs)
            t1, c1 = time.perf_counter(), time.process_time()
            LOG.append(
                {"op": "gram", "t0": t0, "t1": t1, "c0": c0, "c1": c1, "payload": 0, "wire": 0}
            )
            return out

        setattr(module, name, wrapped)


def worker(rank: int, variant: Variant, port: int, cfg: Config, conn: Any) -> None:
    """Build the problem, warm up, then run `compute_gramians` once per "run" received."""
    try:
        torch.set_num_threads(variant.threads)
        group = None
        init_s = 0.0
        if variant.distributed:
            t = time.perf_counter()
            dist.init_process_group(
                "gloo",
                init_method=f"tcp://127.0.0.1:{port}",
                rank=rank,
                world_size=variant.world,
                timeout=datetime.timedelta(seconds=cfg.timeout),
            )
            init_s = time.perf_counter() - t
            group = Group(rank, variant.world, torch.device("cpu"))
            _wrap_collectives()
            _wrap_share_gramians()
        problem = make_problem(cfg, (rank, variant.world) if group else None)
        t = time.perf_counter()
        result = compute_gramians(problem, group=group)
        warm_s = time.perf_counter() - t
        batch_gramians = result.batch_gramians
        conn.send(
            {
                "init_s": init_s,
                "warm_s": warm_s,
                "gramian": result.gramian.tolist(),
                "batch_gramians": None if batch_gramians is None else batch_gramians.tolist(),
                "numels": result.param_numels,
                "strategy": result.strategy,
            }
        )
        while conn.recv() == "run":
            if group is not None:
                dist.barrier()
            LOG.clear()
            c0, t0 = time.process_time(), time.perf_counter()
            result = compute_gramians(problem, group=group)
            t1, c1 = time.perf_counter(), time.process_time()
            conn.send({"t0": t0, "t1": t1, "c0": c0, "c1": c1, "log": list(LOG)})
            del result
    except BaseException as exc:  # reported to the parent, which stops the run
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# --- the parent: start, run interleaved, stop --------------------------------------------------


def busy_seconds() -> float:
    """Return the CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pool:
    """The processes of one variant, spawned once, waiting on their pipes between runs."""

    def __init__(self, variant: Variant, cfg: Config, deadline: float) -> None:
        ctx = mp.get_context("spawn")
        self.variant, self.cfg, self.deadline = variant, cfg, deadline
        port = free_port()
        self.conns, self.procs = [], []
        for rank in range(variant.world):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(rank, variant, port, cfg, child), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.t_spawn = time.perf_counter()
        self.ready: list[dict[str, Any]] = []
        self.start_s = 0.0

    def wait_ready(self) -> None:
        """Wait for every rank's warm-up run (spawn, import, group, problem, one run)."""
        self.ready = self.receive()
        self.start_s = time.perf_counter() - self.t_spawn

    def receive(self) -> list[dict[str, Any]]:
        """Return one message from every rank (TimeoutError past the limits)."""
        out = []
        for rank, conn in enumerate(self.conns):
            wait = min(self.cfg.timeout, self.deadline - time.monotonic())
            if wait <= 0 or not conn.poll(wait):
                raise TimeoutError(f"{self.variant.name}: rank {rank} did not answer in time")
            msg = conn.recv()
            if "error" in msg:
                raise RuntimeError(f"{self.variant.name}: rank {rank} failed: {msg['error']}")
            out.append(msg)
        return out

    def run(self) -> list[dict[str, Any]]:
        """Run the engine once on every rank; the messages carry the machine's busy seconds."""
        b0, t0 = busy_seconds(), time.perf_counter()
        for conn in self.conns:
            conn.send("run")
        msgs = self.receive()
        busy, span = busy_seconds() - b0, time.perf_counter() - t0
        msgs[0]["others"] = max(0.0, busy - sum(m["c1"] - m["c0"] for m in msgs)) / span
        return msgs

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send("stop")
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def summarise(msgs: list[dict[str, Any]]) -> dict[str, float]:
    """Return one run's figures: wall and CPU times of the whole and of its phases, bytes."""
    start = min(m["t0"] for m in msgs)
    cpus = [m["c1"] - m["c0"] for m in msgs]
    out = {
        "wall": max(m["t1"] for m in msgs) - start,
        "cpu_sum": sum(cpus),
        "cpu_max": max(cpus),
        "share": max(c / (m["t1"] - m["t0"]) for c, m in zip(cpus, msgs, strict=True)),
        "others": msgs[0]["others"],
    }
    if not msgs[0]["log"]:
        return out
    # The first collective is `agree`'s: a rank reaches it when its own batches are summed, and
    # leaves it when the slowest rank has reached it.
    firsts = [m["log"][0] for m in msgs]
    out["local"] = max(f["t0"] for f in firsts) - start
    out["local_cpu"] = max(f["c0"] - m["c0"] for f, m in zip(firsts, msgs, strict=True))
    out["reduce"] = msgs[0]["t1"] - firsts[0]["t1"]  # rank 0's, after `agree`
    out["reduce_cpu"] = msgs[0]["c1"] - firsts[0]["c1"]
    kinds = {"rs": ("reduce_scatter",), "gram": ("gram",), "small": COLLECTIVES[1:]}
    log = msgs[0]["log"][1:]  # rank 0's, `agree` left out
    for kind, ops in kinds.items():
        rows = [e for e in log if e["op"] in ops]
        out[f"{kind}_s"] = sum(e["t1"] - e["t0"] for e in rows)
        out[f"{kind}_cpu"] = sum(e["c1"] - e["c0"] for e in rows)
        out[f"{kind}_n"] = len(rows)
    for unit in ("s", "cpu"):  # the rest: copies into the shares, the division, bookkeeping
        key = "reduce" if unit == "s" else "reduce_cpu"
        out[f"copy_{unit}"] = out[key] - sum(out[f"{k}_{unit}"] for k in kinds)
    for key in ("payload", "wire"):  # per rank: the largest rank's
        out[f"rs_{key}"] = max(
            sum(e[key] for e in m["log"] if e["op"] == "reduce_scatter") for m in msgs
        )
        out[f"all_{key}"] = max(sum(e[key] for e in m["log"]) for m in msgs)
    return out


def rel_error(a: list[Any], b: list[Any]) -> float:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((ta - tb).abs().max() / tb.abs().max())


# --- the report --------------------------------------------------------------------------------


def _size(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _ms(s: float) -> str:
    return f"{s * 1e3:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per variant")
    parser.add_argument(
        "--budget", type=float, default=150.0, help="seconds of repeats: past it, stop at 3"
    )
    parser.add_argument("--model", default="mlp", choices=list(TRUNKS))
    parser.add_argument("--m", type=int, default=8, help="number of losses")
    parser.add_argument("--batches", type=int, default=8, help="number of batches")
    parser.add_argument("--batch", type=int, default=64, help="examples per batch")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 batches, 2 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to update")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.repeats = min(args.batches, 4), min(args.repeats, 2)
    cfg = Config(model=args.model, m=args.m, batches=args.batches, batch=args.batch)
    deadline = time.monotonic() + args.timeout
    os.environ["GRADTOOL_DIST_TIMEOUT"] = str(cfg.timeout)  # the workers inherit it
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

    pools: dict[str, Pool] = {}
    runs: dict[str, list[dict[str, float]]] = {v.name: [] for v in VARIANTS}
    try:
        for v in VARIANTS:
            print(f"starting {v.name} ...", file=sys.stderr, flush=True)
            pools[v.name] = Pool(v, cfg, deadline)
            pools[v.name].wait_ready()
        names = [v.name for v in VARIANTS]
        began = time.monotonic()
        for r in range(args.repeats):
            if r >= 3 and time.monotonic() - began > args.budget:
                break
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                runs[name].append(summarise(pools[name].run()))
            walls = ", ".join(f"{n}: {_ms(runs[n][-1]['wall'])}" for n in names)
            print(f"repeat {r + 1}/{args.repeats} (ms) {walls}", file=sys.stderr, flush=True)
    finally:
        for pool in pools.values():
            pool.close()
    report(args, cfg, pools, runs)


def report(
    args: argparse.Namespace,
    cfg: Config,
    pools: dict[str, Pool],
    runs: dict[str, list[dict[str, float]]],
) -> None:
    """Print the tables and the cost model, and write them to the section of `args.out`."""
    repeats = len(runs[BASE])
    med = {n: {k: median([x[k] for x in rs]) for k in rs[0]} for n, rs in runs.items()}
    ready = {n: p.ready for n, p in pools.items()}
    base = ready[BASE][0]
    numels = base["numels"]
    P, m, B, R = sum(numels), cfg.m, cfg.batches, 2
    n_blocks = len(numels)
    t1, c1 = med[BASE]["wall"], med[BASE]["cpu_max"]
    one, two = med[ONE_RANK], med[TWO_RANKS]

    # Correctness: every variant's Gramian (every rank's) against the 1-process one.
    errs = {
        n: max(rel_error(x["gramian"], base["gramian"]) for x in msgs) for n, msgs in ready.items()
    }
    batch_err = rel_error(ready[TWO_RANKS][0]["batch_gramians"], base["batch_gramians"])

    # The sizes: what each collective carries, and what ring algorithms send per rank.
    from gradtool.engine.distributed import shares

    owners = shares(numels, R)
    width = max(sum(n for n, o in zip(numels, owners, strict=True) if o == r) for r in range(R))
    sums_bytes = m * P * 4  # one rank's float32 (m, P) sums
    rs_buffer = m * R * width * 4  # reduce_scatter's input: R padded shares
    # all_reduce: Gramians (P_blocks, m, m) f64, non-finite and reach counts (P_blocks, m) i64,
    # loss sums (m) f64, local Gramian (m, m) f64, its flag (1) i64
    ar_bytes = n_blocks * m * m * 8 + 2 * n_blocks * m * 8 + m * 8 + m * m * 8 + 8
    # all_gather: batch counts (1) i64, row maxima (m) f64, per-batch Gramians (ceil(B/R), m, m)
    ag_bytes = 8 + m * 8 + math.ceil(B / R) * m * m * 8
    ring_ar = 2 * (R - 1) / R  # a ring all-reduce sends this times its tensor, per rank

    # The model's constants, in CPU seconds (robust to the machine's other load: a rank on a
    # free core would take about its CPU time), the latency of small collectives in wall time.
    t_b = one["local_cpu"] / B  # per batch, 1 rank, distributed path
    t_b2 = two["local_cpu"] / math.ceil(B / R)  # per batch on a rank, 2 ranks on the 2 cores
    t_c, t_g = one["copy_cpu"], one["gram_cpu"]
    bw = two["rs_wire"] / two["rs_cpu"]  # bytes sent per CPU second of the reduce-scatter
    bw_wall = two["rs_wire"] / two["rs_s"]
    alpha = two["small_s"] / max(1, two["small_n"])

    def model(r: int) -> tuple[float, float]:
        """Return the model's (compute, communication) seconds for r >= 2 ranks."""
        compute = math.ceil(B / r) * t_b + t_c + t_g / r
        return compute, 2 * (r - 1) / r * sums_bytes / bw + two["small_n"] * alpha

    lines = header(
        "Distributed engine (cpu, gloo)",
        "cpu",
        [
            f"gradtool {git_describe()}; repeats: {repeats} (median), the variants interleaved "
            "in a rotating order; one torch thread per rank unless said",
            f"Problem: `{cfg.model}` of `_cases.py`, {P:,} parameters in {n_blocks} blocks, "
            f"m = {m} losses, B = {B} batches of {cfg.batch} (gradfile-like: "
            f"`losses(model, batch)`); engine: {base['strategy']}",
            "Timed: `compute_gramians(problem[, group=...])` over the batches, in warm processes "
            "(spawned once, batches made beforehand). With ranks: wall = last rank's end - "
            "first rank's start, after a barrier.",
            "**2 CPU cores**: the 2 ranks compete for the same 2 cores as the 1-thread process "
            "(and with whatever else runs on the machine), so a speed-up is bounded by 2 and by "
            "the free cores; `1 process, 2 threads` is the other use of the same 2 cores (and the "
            "most fragile under other load: OpenMP's threads spin-wait for each other, so one "
            "thread descheduled by another job stalls both; OMP_WAIT_POLICY=PASSIVE avoids it). "
            "`CPU`: process CPU time (all threads, kernel included; rank 0 + rank 1); "
            "`cores used`: CPU / wall of the busiest rank; `other load`: cores the machine's "
            "other processes used meanwhile (/proc/stat).",
        ],
    )
    rows = []
    for v in VARIANTS:
        x = med[v.name]
        rows.append(
            [
                v.name,
                _ms(x["wall"]),
                f"{t1 / x['wall']:.2f}x",
                _ms(x["cpu_sum"]),
                _ms(x["cpu_max"]),
                f"{c1 / x['cpu_max']:.2f}x" if v.threads == 1 else "--",
                f"{x['share']:.2f}",
                f"{x['others']:.2f}",
                f"{errs[v.name]:.1e}",
            ]
        )
    lines += [
        "**The engine, 1 process against 2 ranks** (medians; `speed-up` = wall of `1 process, "
        "1 thread` / wall; `CPU speed-up` = CPU of `1 process, 1 thread` / CPU of the busiest "
        "rank: the speed-up on free cores, waits left out; `err` = max |G - G_1| / max |G_1| "
        "against the 1-process Gramian, every rank's)",
        "",
        *table(
            [
                "variant",
                "wall ms",
                "speed-up",
                "CPU ms",
                "busiest rank CPU ms",
                "CPU speed-up",
                "cores used",
                "other load",
                "err",
            ],
            rows,
        ),
        "",
        f"The 2 ranks' per-batch Gramians (gathered in batch order) against 1 process: "
        f"relative error {batch_err:.1e}. Once per process group (not in the times): spawn, "
        f"import, `init_process_group`, problem, one warm-up run: 1 rank "
        f"{pools[ONE_RANK].start_s:.1f} s, 2 ranks {pools[TWO_RANKS].start_s:.1f} s "
        f"(`init_process_group` {max(r['init_s'] for r in ready[TWO_RANKS]) * 1e3:.0f} ms).",
        "",
    ]

    def pair(x: dict[str, float], key: str) -> list[str]:
        return [_ms(x[f"{key}_s"] if key != "local" else x["local"]), _ms(x[f"{key}_cpu"])]

    phases = [
        ("own batches (slowest rank; until `agree`)", "local"),
        ("reduce_scatter of the sums", "rs"),
        ("share Gramians + non-finite counts", "gram"),
        (f"{two['small_n']:.0f} small collectives", "small"),
        ("copies into the shares, the rest", "copy"),
    ]
    lines += [
        "**Phases** (median ms, wall and CPU; after `agree`: rank 0's)",
        "",
        *table(
            ["phase", "1 rank wall", "1 rank CPU", "2 ranks wall", "2 ranks CPU"],
            [[label, *pair(one, key), *pair(two, key)] for label, key in phases],
        ),
        "",
    ]

    io_rows = [
        [
            "reduce_scatter: (m, R x width) float32 sums",
            _size(rs_buffer),
            f"{_size((R - 1) / R * rs_buffer)} (RS) / {_size(ring_ar * rs_buffer)} (AR)",
            _size(two["rs_wire"]),
        ],
        [
            f"{two['small_n']:.0f} small: all_reduce x 6, all_gather x 3, all_gather_object",
            _size(ar_bytes + ag_bytes),
            _size(ring_ar * ar_bytes + (R - 1) * ag_bytes),
            _size(two["all_wire"] - two["rs_wire"]),
        ],
    ]
    lines += [
        f"**Bytes sent per rank, 2 ranks**: computed from the sizes (ring algorithms: a "
        f"reduce-scatter sends (R-1)/R of its buffer, an all-reduce 2(R-1)/R, an all-gather "
        f"R-1 times its tensor) and measured (the bytes the rank wrote to its sockets during "
        f"the calls, wchar of /proc/self/io). 4 m P = {_size(sums_bytes)}; the buffer is R "
        f"padded shares of {width:,} columns (P/R = {P / R:,.0f}: the shares are whole "
        f"blocks, so the buffer is {R * width / P - 1:.0%} padding).",
        "",
        *table(["collective", "payload", "ring sends", "measured sent"], io_rows),
        "",
        f"gloo's `reduce_scatter` sent {two['rs_wire'] / rs_buffer:.2f} x its buffer per "
        f"rank: what a ring **all-reduce** of the whole buffer sends (2(R-1)/R x R x width x "
        f"m x 4 bytes), twice a reduce-scatter's (R-1)/R. On gloo it costs as much as an "
        f"all-reduce of the sums (a separate probe at R = 3 and 4 gave the same: 2(R-1) x the "
        f"share per rank). Rate: {bw / 1e9:.2f} GB/s sent per CPU second of the call, "
        f"{bw_wall / 1e9:.2f} GB/s of wall time (TCP loopback, the reduction included).",
        "",
    ]

    model_rows = []
    for r in (2, 4, 8, 16):
        compute, comm = model(r)
        model_rows.append(
            [str(r), _ms(compute), _ms(comm), _ms(compute + comm), f"{c1 / (compute + comm):.2f}x"]
        )
    c2, m2 = model(2)
    lines += [
        "**Cost model for R >= 2 ranks**, each on a free core (constants: CPU times measured "
        "above, so the machine's other load is left out; beyond R = 2 a model, not a "
        "measurement):",
        "",
        "    T(R) = ceil(B/R) t_b + t_c + t_g / R  +  2(R-1)/R x 4 m P / bw  +  n_c a",
        "",
        f"- t_b = {t_b * 1e3:.0f} ms per batch (1 rank's own batches / B, CPU). The plain "
        f"engine takes {c1 / B * 1e3:.0f} ms per batch all included: the distributed path "
        f"materialises each batch's (m, P) gradients to sum them (`materialise=True`, "
        f"`ghost.materialise` + `add_sum`), where one process keeps the structured rows. With "
        f"2 ranks on the 2 cores a batch cost {t_b2 * 1e3:.0f} ms of CPU ({t_b2 / t_b:.2f}x: "
        f"likely the shared caches and memory bandwidth)",
        f"- t_c = {t_c * 1e3:.0f} ms: copying the sums into the R shares and the rest of the "
        f"reduce phase, not split; t_g = {t_g * 1e3:.0f} ms: the block Gramians (float64) and "
        f"non-finite counts, split over the ranks ({two['gram_cpu'] * 1e3:.0f} ms per rank at "
        f"R = 2)",
        f"- 4 m P = {_size(sums_bytes)} of float32 sums; gloo sends 2(R-1)/R of it per rank "
        f"(a true reduce-scatter, as NCCL's, would send (R-1)/R: half the term); bw = "
        f"{bw / 1e9:.2f} GB/s per rank (loopback here; on a cluster, the link's)",
        f"- n_c = {two['small_n']:.0f} small collectives (O(P_blocks m^2) numbers, "
        f"{_size(ar_bytes + ag_bytes)}), a = {alpha * 1e3:.1f} ms each (wall at R = 2, "
        f"scheduling delays of the loaded machine included; a ring's latency grows with R)",
        f"- check at R = 2: model {_ms(c2 + m2)} ms against {_ms(two['cpu_max'])} ms of CPU "
        f"on the busiest rank and {_ms(two['wall'])} ms of wall time measured (2 ranks on 2 "
        f"cores with {two['others']:.2f} cores of other load)",
        "",
        *table(["R", "compute ms", "communication ms", "T(R) ms", "vs 1 process"], model_rows),
        "",
        f"`vs 1 process`: against the plain engine in one process on a free core ({_ms(c1)} ms "
        f"of CPU). The sums are sent once whatever B is, so the speed-up grows with the batches "
        f"per rank: here 2(R-1)/R x 4 m P / bw <= {sums_bytes * 2 / bw * 1e3:.0f} ms against "
        f"B t_b = {B * t_b * 1e3:.0f} ms of batches, and t_c does not shrink with R.",
        "",
    ]
    print("\n".join(lines))
    write_section(args.out, "bench_distributed_cpu", lines)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
