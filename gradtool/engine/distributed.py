"""Distributed Gramians: each rank's summed per-loss gradients reduced to the global ones.

Each rank accumulates the per-loss gradient sums of its own batches (batch k on rank k mod R,
or, in DDP training, its share of the global batch). The Gramian of the global mean gradient
needs the sums added across ranks before any product (its cross-rank terms), so:
1. the parameter blocks are split into R contiguous shares of about P/R values each;
2. one reduce-scatter of the (m, P) sums leaves on each rank the global sum of its share:
   a ring reduce-scatter (NCCL's) sends (R-1)/R x m x P numbers per rank; gloo's sends twice
   that, what an all-reduce would (measured: benchmarks/bench_distributed.py);
3. each rank forms its share's block Gramians (float64), and one all-reduce of the (P_blocks, m,
   m) Gramians, non-finite counts, reach and loss sums (O(P_blocks m^2) numbers) gives every rank
   the whole result; the per-batch Gramians (for batch statistics) are gathered in batch order.
The rank-local Gramian (of the rank's own sums) is free beside it: its mean over ranks is kept as
`EngineResult.local_gramian` (a smaller batch's Gramian, for a gradient-noise estimate).

Built on `torch.distributed` (gloo on the CPU, NCCL on GPUs), with a timeout on every collective;
`agree` makes a failure on one rank an error on every rank before any data collective.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gradtool.engine.accumulator import GramianAccumulator
from gradtool.engine.blocks import block_stats, nonfinite_counts
from gradtool.engine.result import EngineResult
from gradtool.errors import GradientError, GradtoolError, UsageError, UserCodeError
from gradtool.problem import no_batch_error

# Seconds a collective waits for the other ranks (GRADTOOL_DIST_TIMEOUT overrides it): the ranks
# meet after computing their own batches, so it must cover the slowest rank's share.
DEFAULT_TIMEOUT_S = 600.0
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Group:
    """The process group gradtool reduces over: this rank, the world size, the tensors' device."""

    rank: int
    world: int
    device: torch.device


def timeout_s() -> float:
    """Return the collectives' timeout in seconds (GRADTOOL_DIST_TIMEOUT, else the default)."""
    text = os.environ.get("GRADTOOL_DIST_TIMEOUT", "")
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def launched_by_torchrun() -> bool:
    """Return whether this process was started by torchrun (its environment says so)."""
    return all(name in os.environ for name in _TORCHRUN_VARS)


def current_group(device: torch.device | None = None) -> Group | None:
    """Return the initialised default process group as a `Group` (None: none, or one rank).

    Its tensors go to the CPU with gloo; with NCCL to `device` when it is a CUDA device (the
    model's: a DDP script may never call `torch.cuda.set_device`), else the current one.
    """
    if not dist.is_available() or not dist.is_initialized():
        return None
    world = dist.get_world_size()
    if world < 2:
        return None
    if dist.get_backend() == "nccl":
        if device is None or device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return Group(dist.get_rank(), world, device)


def init_from_env(device: str | None = None) -> Group | None:
    """Return the process group of a torchrun launch, initialising it if needed (NCCL when
    `device` is a CUDA device, whose index becomes the local rank's; gloo otherwise); None when
    not launched by torchrun or with a single rank."""
    group = current_group()
    if group is not None or not launched_by_torchrun():
        return group
    if int(os.environ["WORLD_SIZE"]) < 2:
        return None
    cuda = device is not None and device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(
        "nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s())
    )
    return current_group()


def local_device(device: str | None) -> str | None:
    """Return `device` for this rank of a torchrun launch: a bare "cuda" becomes the local
    rank's GPU ("cuda:LOCAL_RANK"); anything else is kept."""
    if device == "cuda" and launched_by_torchrun():
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def backend() -> str:
    """Return the default process group's backend ("gloo", "nccl", ...)."""
    return str(dist.get_backend())


def relayed(error: BaseException) -> bool:
    """Return whether `error` went through `agree`: every rank has it, rank 0 words it."""
    return bool(getattr(error, "gradtool_relayed", False))


def agree(group: Group, error: BaseException | None) -> None:
    """Meet the other ranks after the local work: raise `error` here, or, when another rank
    failed, an error of its kind naming that rank, so that every rank stops with one line."""
    status = torch.tensor([0 if error is None else 1], dtype=torch.int64, device=group.device)
    dist.all_reduce(status)
    if int(status.item()) == 0:
        return
    failures: list[object] = [None] * group.world
    dist.all_gather_object(failures, _describe(error))
    if error is not None:  # rank 0 words its own error, or the first failing rank's
        error.gradtool_relayed = True  # type: ignore[attr-defined]
        raise error
    rank, kind, message, hint, trace, fields = next(f for f in failures if f is not None)  # type: ignore[misc]
    relay = _relay(_ERRORS.get(kind, GradientError), f"rank {rank} failed: {message}", hint, trace)
    relay.loss, relay.parameter, relay.option, relay.reason = fields
    relay.gradtool_relayed = True  # type: ignore[attr-defined]
    raise relay


def _relay(cls: type[GradtoolError], message: str, hint: str | None, trace: str) -> GradtoolError:
    """Return an error of kind `cls` (its exit code) carrying another rank's message (and, for
    an error raised in the user's code, its traceback of the user's frames)."""
    relay = cls.__new__(cls)
    GradtoolError.__init__(relay, message, hint=hint)
    if isinstance(relay, UserCodeError):
        relay.traceback = trace
    return relay


def _describe(error: BaseException | None) -> tuple[Any, ...] | None:
    if error is None:
        return None
    rank = dist.get_rank()
    if isinstance(error, GradtoolError):
        trace = getattr(error, "traceback", "") or ""
        fields = (error.loss, error.parameter, error.option, error.reason)
        return (rank, type(error).__name__, error.message, error.hint, trace, fields)
    return (rank, "", f"{type(error).__name__}: {error}", None, "", (None,) * 4)


def _error_kinds() -> dict[str, type[GradtoolError]]:
    import gradtool.errors as errors

    return {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, GradtoolError)
    }


_ERRORS: dict[str, type[GradtoolError]] = _error_kinds()


def shares(numels: Sequence[int], world: int) -> list[int]:
    """Return the owner rank of each parameter block: R contiguous shares of about P/R values."""
    total = max(1, sum(numels))
    owners, start = [], 0
    for n in numels:
        owners.append(min(world - 1, (start + n // 2) * world // total))
        start += n
    return owners


def reduce_accumulator(acc: GramianAccumulator, group: Group) -> EngineResult:
    """Return the Gramians of the global mean gradients over every rank's batches (see module).

    `acc` must hold every block's running sum (no block added with keep=False, no Gramian set
    outright): what each rank adds is its batches' per-loss gradients. A rank without a batch
    (fewer batches than ranks) takes part with zeros.
    """
    names = _check_same(acc, group)
    m, P, world = len(names), len(acc.names), group.world
    counts = _all_gather_ints([acc.count], group)
    total = sum(c[0] for c in counts)
    owners = shares(acc.numels, world)
    wide = any(s is not None and s.dtype == torch.float64 for s in acc.sums)
    code = torch.tensor([1 if wide else 0], device=group.device)
    dist.all_reduce(code, op=dist.ReduceOp.MAX)  # every rank sends the same dtype
    dtype = torch.float64 if int(code.item()) else torch.float32
    widths = [
        sum(n for n, o in zip(acc.numels, owners, strict=True) if o == r) for r in range(world)
    ]
    width = max(1, max(widths))
    chunks = [torch.zeros(m, width, dtype=dtype, device=group.device) for _ in range(world)]
    offsets = [0] * world
    starts: list[int] = []
    for b, (n, owner) in enumerate(zip(acc.numels, owners, strict=True)):
        starts.append(offsets[owner])
        total_b = acc.sums[b]
        if total_b is not None and m:
            chunks[owner][:, offsets[owner] : offsets[owner] + n].copy_(total_b)
        acc.sums[b] = None
        offsets[owner] += n
    mine = torch.empty(m, width, dtype=dtype, device=group.device)
    dist.reduce_scatter(mine, chunks)
    del chunks
    gramians = torch.zeros(P, m, m, dtype=torch.float64, device=group.device)
    nonfinite = torch.zeros(P, m, dtype=torch.int64, device=group.device)
    maxima = torch.zeros(m, dtype=torch.float64, device=group.device)
    for b, (n, owner) in enumerate(zip(acc.numels, owners, strict=True)):
        if owner != group.rank or n == 0:
            continue
        mean = mine[:, starts[b] : starts[b] + n] / total
        gram, row_max = block_stats(mean)
        gramians[b] = gram
        nonfinite[b] = nonfinite_counts(mean, gram.cpu()).to(group.device)
        maxima = torch.maximum(maxima, row_max.to(torch.float64))  # NaN propagates
    del mine
    reached = torch.zeros(P, m, dtype=torch.int64, device=group.device)
    sums = torch.zeros(m, dtype=torch.float64, device=group.device)
    if acc.count:
        reached += torch.tensor(acc.reached, dtype=torch.int64, device=group.device).reshape(P, m)
        sums += torch.tensor(acc.loss_sums, dtype=torch.float64, device=group.device)
    one = acc.count == 1
    local = (
        acc.batch_gramians[0].to(group.device)
        if one
        else torch.zeros(m, m, dtype=torch.float64, device=group.device)
    )
    has_local = torch.tensor([1 if one else 0], device=group.device)
    for tensor in (gramians, nonfinite, reached, sums, local, has_local):
        dist.all_reduce(tensor)
    maxima = _all_max(maxima, group)
    batch_gramians = _gather_batch_gramians(acc.batch_gramians, counts, m, group)
    return EngineResult(
        loss_names=names,
        loss_values=(sums / total).tolist(),
        param_names=acc.names,
        param_numels=acc.numels,
        gramians=gramians.cpu(),
        max_abs=maxima.tolist(),
        nonfinite=nonfinite.cpu(),
        reached=reached.cpu() > 0,
        batch_gramians=batch_gramians if total > 1 else None,
        num_batches=total,
        strategy=acc.strategy,
        fallbacks=acc.fallbacks,
        world=world,
        local_gramian=(local / has_local).cpu() if int(has_local.item()) > 0 else None,
    )


def _check_same(acc: GramianAccumulator, group: Group) -> list[str]:
    """Return the loss names, checked to be the same on every rank (as the parameters)."""
    mine = (acc.loss_names, acc.names, acc.numels) if acc.count else None
    seen: list[object] = [None] * group.world
    dist.all_gather_object(seen, mine)
    given = [s for s in seen if s is not None]
    if not given:
        raise no_batch_error()
    first = given[0]
    for rank, other in enumerate(seen):
        if other is not None and other != first:
            raise UsageError(
                f"rank {rank} computed other losses or parameters than rank 0: every rank must "
                "run the same model and losses",
                hint="make `losses` return the same names on every batch and every rank",
            )
    return list(first[0])  # type: ignore[index]


def _all_gather_ints(values: list[int], group: Group) -> list[list[int]]:
    mine = torch.tensor(values, dtype=torch.int64, device=group.device)
    out = [torch.zeros_like(mine) for _ in range(group.world)]
    dist.all_gather(out, mine)
    return [t.tolist() for t in out]


def _all_max(values: torch.Tensor, group: Group) -> torch.Tensor:
    """Return the entrywise maximum over ranks, NaN where any rank has NaN."""
    out = [torch.zeros_like(values) for _ in range(group.world)]
    dist.all_gather(out, values)
    return torch.stack(out).amax(dim=0)


def _gather_batch_gramians(
    mine: list[torch.Tensor], counts: list[list[int]], m: int, group: Group
) -> torch.Tensor:
    """Return every rank's per-batch Gramians, in the global batch order (k on rank k mod R)."""
    most = max(c[0] for c in counts)
    padded = torch.zeros(max(1, most), m, m, dtype=torch.float64, device=group.device)
    for k, g in enumerate(mine):
        padded[k] = g.to(group.device)
    out = [torch.zeros_like(padded) for _ in range(group.world)]
    dist.all_gather(out, padded)
    total = sum(c[0] for c in counts)
    ordered = torch.zeros(total, m, m, dtype=torch.float64)
    for k in range(total):
        ordered[k] = out[k % group.world][k // group.world].cpu()
    return ordered
