"""The gradient engine: per-loss gradients of the selected parameters, reduced to Gramians.

For each batch it differentiates every loss w.r.t. every selected parameter (`allow_unused=True`;
`None` means zero), and accumulates, per parameter block b, the Jacobian of the *mean* gradient
over batches; the per-block Gramians `G_b = J_b J_b^T` (float64) are formed at the end. With
several batches it also keeps each batch's whole-model Gramian, for per-batch cosine statistics.

Strategies, behind `compute_gramians(strategy=...)`:
- "batched": one `autograd.grad` call with `is_grads_batched=True` and identity grad_outputs;
- "loop": one `autograd.grad(..., retain_graph=True)` per loss;
- "backward": per-loss `.backward()` into `.grad` (saved and restored), the only way through a
  reentrant activation checkpoint, which `autograd.grad` refuses.
"auto" tries "batched" and falls back to "loop" where vmap cannot run the model's backward, and
to "backward" where the graph holds a reentrant checkpoint. On the CPU, with at least
`AUTO_LOOP_MIN_NUMEL` parameter values (0: always), "auto" runs "loop" directly: there the m
passes are compute-bound, vmap saves no arithmetic, its batched backward carries every loss
through every head, and its first call imports sympy (~0.35 s); the loop was never slower in
benchmarks/RESULTS.md. On accelerators "auto" tries "batched" first. The engine never prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from gradtool.errors import GradientError
from gradtool.graph import reachable_parameters
from gradtool.problem import Problem

Strategy = Literal["auto", "batched", "loop", "backward"]
STRATEGIES: tuple[str, ...] = ("auto", "batched", "loop", "backward")
# On the CPU, "auto" runs the loop from this many selected parameter values on (see the docstring).
AUTO_LOOP_MIN_NUMEL = 0


@dataclass
class BatchJacobian:
    """One batch's per-loss gradients: `blocks[b]` is (m, numel_b) or None if no loss reaches b."""

    loss_values: list[float]
    blocks: list[torch.Tensor | None]
    reached: list[set[int]]  # per loss: indices of the parameters its graph reaches
    strategy: str
    fallback_reason: str | None = None


@dataclass
class EngineResult:
    """Gramians of the mean per-loss gradients, per parameter block, and what else the report needs.

    `gramians[b]` is G_b = J_b J_b^T (float64, m x m) for parameter b; the model's Gramian is
    their sum. `batch_gramians[k]` is batch k's whole-model Gramian (only with several batches).
    """

    loss_names: list[str]
    loss_values: list[float]
    param_names: list[str]
    param_numels: list[int]
    gramians: torch.Tensor  # (P, m, m) float64, on CPU
    max_abs: list[float]  # per loss, over all selected parameters (NaN if non-finite entries)
    nonfinite: torch.Tensor  # (P, m) int64: non-finite entries of each loss's gradient per block
    reached: torch.Tensor  # (P, m) bool: loss reaches the parameter in at least one batch
    batch_gramians: torch.Tensor | None  # (B, m, m) float64, or None with a single batch
    num_batches: int
    strategy: str
    fallback_reason: str | None

    @property
    def gramian(self) -> torch.Tensor:
        """Return the whole-model Gramian G = sum_b G_b (m x m, float64)."""
        return self.gramians.sum(dim=0)


def compute_gramians(
    problem: Problem,
    *,
    strategy: Strategy = "auto",
    progress: Callable[[int], None] | None = None,
    low_memory: bool = False,
) -> EngineResult:
    """Return the Gramians of the mean per-loss gradients of `problem` over its batches.

    `low_memory` takes each parameter block's Gramian as its gradients arrive, so no loss's
    whole gradient is held: O(m x largest block) extra memory (see `gradtool.low_memory`).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy should be one of {STRATEGIES}; found {strategy!r}")
    if low_memory:
        from gradtool.low_memory import compute_gramians_low_memory

        return compute_gramians_low_memory(problem, strategy=strategy, progress=progress)
    params = [p for _, p in problem.parameters]
    selected = {id(p) for p in params}
    others = [p for p in problem.model.parameters() if id(p) not in selected]
    acc = GramianAccumulator(problem.parameters)
    for batch in problem.iter_batches():
        losses = problem.evaluate(batch)
        acc.add(
            list(losses), batch_jacobian(losses, params, strategy=strategy, other_leaves=others)
        )
        del losses
        if progress is not None:
            progress(acc.count)
    return acc.result()


class GramianAccumulator:
    """Sums per-batch Jacobian blocks (for the mean gradient) and keeps per-batch Gramians."""

    def __init__(self, parameters: Sequence[tuple[str, torch.Tensor]]) -> None:
        self.names = [n for n, _ in parameters]
        self.numels = [p.numel() for _, p in parameters]
        self.sums: list[torch.Tensor | None] = [None] * len(parameters)
        self.loss_names: list[str] = []
        self.loss_sums: list[float] = []
        self.reached: list[list[bool]] = []
        self.batch_gramians: list[torch.Tensor] = []
        # The first batch's per-block (Gramian, row max |.|): with a single batch, the result's.
        self.first_stats: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(parameters)
        # Non-finite counts of blocks added with keep=False (single batch, block not kept).
        self.unkept: list[torch.Tensor | None] = [None] * len(parameters)
        self.batch_gramian: torch.Tensor | None = None
        self.strategy = "auto"
        self.fallback: str | None = None
        self.count = 0

    def add(self, loss_names: list[str], jac: BatchJacobian) -> None:
        """Add one batch's Jacobian (its blocks are consumed: summed in place, not copied)."""
        self.begin_batch(loss_names, jac.loss_values)
        for b, block in enumerate(jac.blocks):
            if block is not None:
                self.add_block(b, block)
        self.end_batch(jac.reached, jac.strategy, jac.fallback_reason)

    def begin_batch(self, loss_names: list[str], loss_values: Sequence[float]) -> None:
        """Start a batch whose (m, numel) blocks then arrive one at a time through `add_block`."""
        m = len(loss_names)
        if self.count == 0:
            self.loss_names = loss_names
            self.loss_sums = [0.0] * m
            self.reached = [[False] * m for _ in self.names]
        elif any(u is not None for u in self.unkept):
            raise RuntimeError("a second batch after blocks added with keep=False")
        self.loss_sums = [a + b for a, b in zip(self.loss_sums, loss_values, strict=True)]
        self.batch_gramian = torch.zeros(m, m, dtype=torch.float64)

    def add_block(self, b: int, block: torch.Tensor, *, keep: bool = True) -> None:
        """Add block b of the current batch: its Gramian (and statistics) are taken now.

        With `keep` the block is also summed in place for the mean gradient. `keep=False` is for
        a problem known to have a single batch: the block is not referenced after this returns,
        so it can be freed at once (the low-memory engine: O(m x largest block) extra memory).
        """
        if self.batch_gramian is None:
            raise RuntimeError("add_block outside begin_batch / end_batch")
        if self.count == 0:
            gram, block_max = _block_stats(block)
            self.first_stats[b] = (gram.cpu(), block_max.cpu())
            if not keep:
                self.unkept[b] = _nonfinite_counts(block, self.first_stats[b][0])
        elif not keep:
            raise RuntimeError("keep=False is only for a single batch")
        else:
            gram = block_gramian(block)
        self.batch_gramian += gram.cpu()
        if keep:
            data = block.detach()
            total = self.sums[b]
            if total is not None:
                total.add_(data)
                return
            # The running sum must be a buffer of ours, dense and at least float32: a batched
            # gradient can be a zero-stride broadcast, and bf16 sums over batches drift.
            acc = torch.promote_types(data.dtype, torch.float32)
            owned = data.dtype == acc and data.is_contiguous() and data.data_ptr() != 0
            self.sums[b] = data if owned else data.to(acc, copy=True).contiguous()

    def end_batch(
        self, reached: Sequence[set[int]], strategy: str, fallback_reason: str | None = None
    ) -> None:
        """Close the current batch: `reached[i]` are the parameters loss i's graph reaches."""
        if self.batch_gramian is None:
            raise RuntimeError("end_batch without begin_batch")
        self.strategy = strategy
        self.fallback = self.fallback or fallback_reason
        for i, found in enumerate(reached):
            for b in found:
                self.reached[b][i] = True
        self.batch_gramians.append(self.batch_gramian)
        self.batch_gramian = None
        self.count += 1

    def result(self) -> EngineResult:
        """Return the Gramians of the mean gradients; the summed blocks are freed one by one."""
        if self.count == 0:
            raise GradientError(
                "`batches` produced no batch",
                hint="check that the iterable is not empty (and not an exhausted generator)",
            )
        m, count, P = len(self.loss_names), self.count, len(self.names)
        gramians = torch.zeros(P, m, m, dtype=torch.float64)
        nonfinite = torch.zeros(P, m, dtype=torch.int64)
        max_abs = torch.zeros(m, dtype=torch.float64)
        for b, total in enumerate(self.sums):
            unkept, first = self.unkept[b], self.first_stats[b]
            if unkept is not None and first is not None:  # single batch, block not kept
                gramians[b] = first[0]
                nonfinite[b] = unkept
                max_abs = torch.maximum(max_abs, first[1].to(torch.float64))
                self.first_stats[b] = self.unkept[b] = None
                continue
            if total is None:
                continue
            mean = total.div_(count) if count > 1 else total  # the sums are ours: in place
            gram, block_max = _block_stats(mean) if count > 1 or first is None else first
            gramians[b] = gram.cpu()
            nonfinite[b] = _nonfinite_counts(mean, gramians[b])
            max_abs = torch.maximum(max_abs, block_max.to(torch.float64).cpu())
            self.sums[b] = None  # free the block as soon as its Gramian is formed
            self.first_stats[b] = None
        return EngineResult(
            loss_names=self.loss_names,
            loss_values=[v / count for v in self.loss_sums],
            param_names=self.names,
            param_numels=self.numels,
            gramians=gramians,
            max_abs=max_abs.tolist(),
            nonfinite=nonfinite,
            reached=torch.tensor(self.reached, dtype=torch.bool).reshape(P, m),
            batch_gramians=torch.stack(self.batch_gramians) if count > 1 else None,
            num_batches=count,
            strategy=self.strategy,
            fallback_reason=self.fallback,
        )


def batch_jacobian(
    losses: Mapping[str, torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    strategy: Strategy = "auto",
    retain_graph: bool = False,
    create_graph: bool = False,
    other_leaves: Sequence[torch.Tensor] = (),
) -> BatchJacobian:
    """Return the per-loss gradients of `losses` w.r.t. `params`, one (m, numel) block each.

    `retain_graph` keeps the losses' graph for the caller's own backward afterwards;
    `create_graph` makes the returned gradients differentiable (for higher-order analyses);
    `other_leaves` are tensors whose `.grad` the "backward" strategy must leave as it found them.
    """
    tensors = [t.reshape(()) for t in losses.values()]
    names = list(losses)
    values = [float(t.detach().real) for t in tensors]
    reach = reachable_parameters(tensors, params)
    keep = retain_graph or create_graph
    if strategy == "backward" or (strategy == "auto" and reach.opaque):
        extra = [*other_leaves, *reach.leaves]  # e.g. inputs with requires_grad: .grad kept too
        blocks, via_grad = _backward_blocks(tensors, params, keep, extra, names=names)
        reached = [r | g for r, g in zip(reach.reached, via_grad, strict=True)]
        reason = (
            "reentrant activation checkpoint: autograd.grad cannot pass it"
            if reach.opaque
            else None
        )
        return BatchJacobian(values, blocks, reached, "backward", reason)
    if reach.opaque:
        raise GradientError(
            f"strategy {strategy!r} cannot differentiate through a reentrant activation checkpoint "
            "(torch.utils.checkpoint(..., use_reentrant=True))",
            hint="use --strategy auto (or backward), or use_reentrant=False in the model",
        )
    reason: str | None = None
    if strategy == "auto" and _loop_is_faster(tensors, params):
        strategy = "loop"
        reason = "auto on the CPU: the loop, measured at least as fast there as batched"
    if strategy in ("auto", "batched"):
        try:
            blocks = _batched_blocks(tensors, params, keep or strategy == "auto", create_graph)
            if strategy == "batched" or _all_finite(blocks):
                return BatchJacobian(values, blocks, reach.reached, "batched")
            # one batched backward computes 0 * inf = NaN in rows of losses that never touch
            # the offending node; the loop attributes non-finite entries to the right loss.
            reason = "non-finite entries in the batched gradients: recomputed loss by loss"
            del blocks
        except (RuntimeError, NotImplementedError) as exc:
            if strategy == "batched":
                raise GradientError(
                    f"the batched strategy cannot run this model's backward: {_first_line(exc)}",
                    hint="use --strategy loop (or auto, which falls back by itself)",
                ) from None
            reason = f"vmap over backward failed: {_first_line(exc)}"
    blocks, via_grad = _loop_blocks(tensors, params, keep, create_graph, names=names)
    reached = [r | g for r, g in zip(reach.reached, via_grad, strict=True)]
    return BatchJacobian(values, blocks, reached, "loop", reason)


def _loop_is_faster(losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> bool:
    return losses[0].device.type == "cpu" and sum(p.numel() for p in params) >= AUTO_LOOP_MIN_NUMEL


def _batched_blocks(
    losses: list[torch.Tensor], params: Sequence[torch.Tensor], retain: bool, create: bool
) -> list[torch.Tensor | None]:
    dtype = _common_dtype(losses)
    stacked = torch.stack([t.to(dtype) for t in losses])
    eye = torch.eye(len(losses), dtype=dtype, device=stacked.device)
    grads = torch.autograd.grad(
        stacked,
        list(params),
        grad_outputs=eye,
        is_grads_batched=True,
        retain_graph=retain,
        create_graph=create,
        allow_unused=True,
    )
    return [None if g is None else _dense(g).reshape(len(losses), -1) for g in grads]


def _loop_blocks(
    losses: list[torch.Tensor],
    params: Sequence[torch.Tensor],
    retain: bool,
    create: bool,
    *,
    names: Sequence[str] | None = None,
) -> tuple[list[torch.Tensor | None], list[set[int]]]:
    rows = _Rows(params, len(losses), differentiable=create)
    via_grad: list[set[int]] = []
    for i, loss in enumerate(losses):
        try:
            grads = torch.autograd.grad(
                loss,
                list(params),
                retain_graph=retain or i < len(losses) - 1,
                create_graph=create,
                allow_unused=True,
            )
        except Exception as exc:
            raise backward_error(exc, names[i] if names else f"#{i}") from exc
        rows.put(i, grads)
        via_grad.append({b for b, g in enumerate(grads) if g is not None})
        del grads
    return rows.blocks(), via_grad


def _backward_blocks(
    losses: list[torch.Tensor],
    params: Sequence[torch.Tensor],
    retain: bool,
    other_leaves: Sequence[torch.Tensor],
    *,
    names: Sequence[str] | None = None,
) -> tuple[list[torch.Tensor | None], list[set[int]]]:
    # .backward() writes .grad into every leaf it reaches: save them all, put them back after.
    unique = {id(t): t for t in [*params, *other_leaves]}
    leaves = list(unique.values())
    saved = [p.grad for p in leaves]
    rows = _Rows(params, len(losses), differentiable=False)
    via_grad: list[set[int]] = []
    try:
        for i, loss in enumerate(losses):
            for p in leaves:
                p.grad = None
            try:
                loss.backward(retain_graph=retain or i < len(losses) - 1)
            except Exception as exc:
                raise backward_error(exc, names[i] if names else f"#{i}") from exc
            grads = [p.grad for p in params]
            rows.put(i, grads)
            via_grad.append({b for b, g in enumerate(grads) if g is not None})
            del grads
    finally:
        for p, g in zip(leaves, saved, strict=True):
            p.grad = g
    return rows.blocks(), via_grad


class _Rows:
    """Per-loss gradients gathered into (m, numel) blocks as each loss's pass returns them.

    Each gradient is copied into its row at once (zeros where a loss does not reach the block),
    so the m passes' gradients are never held twice; with `differentiable`, the rows are kept and
    stacked at the end instead, which keeps the blocks in the autograd graph.
    """

    def __init__(self, params: Sequence[torch.Tensor], m: int, differentiable: bool) -> None:
        self.params, self.m, self.differentiable = params, m, differentiable
        self.rows: list[list[torch.Tensor | None]] = []
        self.filled: list[torch.Tensor | None] = [None] * len(params)
        self.unset: list[list[int]] = [[] for _ in params]  # rows not written yet, per block

    def put(self, i: int, grads: Sequence[torch.Tensor | None]) -> None:
        """Store loss i's gradients (None: the loss does not reach that parameter)."""
        if self.differentiable:
            self.rows.append(list(grads))
            return
        for b, g in enumerate(grads):
            if g is None:
                continue
            block = self.filled[b]
            if block is None:  # uninitialised: rows no loss writes are zeroed at the end
                block = self.params[b].new_empty((self.m, self.params[b].numel()))
                self.filled[b] = block
                self.unset[b] = [k for k in range(self.m) if k != i]
            else:
                self.unset[b].remove(i)
            block[i].copy_(_dense(g).reshape(-1))

    def blocks(self) -> list[torch.Tensor | None]:
        """Return the (m, numel) blocks, None where no loss reaches the parameter."""
        if self.differentiable:
            return _stack_rows(self.rows, self.params)
        for block, unset in zip(self.filled, self.unset, strict=True):
            if block is not None:
                for k in unset:
                    block[k].zero_()
        return self.filled


def _stack_rows(
    rows: list[list[torch.Tensor | None]], params: Sequence[torch.Tensor]
) -> list[torch.Tensor | None]:
    blocks: list[torch.Tensor | None] = []
    for b, p in enumerate(params):
        column = [row[b] for row in rows]
        if all(g is None for g in column):
            blocks.append(None)
            continue
        blocks.append(
            torch.stack(
                [
                    torch.zeros_like(p).reshape(-1) if g is None else _dense(g).reshape(-1)
                    for g in column
                ]
            )
        )
    return blocks


def backward_error(exc: BaseException, loss: str) -> GradientError:
    """Return the one-line error for a backward pass of `loss` that raised `exc`."""
    if "backward through the graph a second time" in str(exc):
        return GradientError(
            "the losses' graph was already freed by a backward pass",
            hint="call gradtool before loss.backward(), or run that backward with "
            "retain_graph=True",
        )
    return GradientError(
        f"differentiating loss '{loss}' failed: {type(exc).__name__}: {_first_line(exc, 240)}",
        hint="autograd raised this while running the model's backward (an in-place change of a "
        "saved tensor, a custom backward, ...); GRADTOOL_DEBUG=1 shows the full traceback",
    )


def _dense(g: torch.Tensor) -> torch.Tensor:
    """Return `g` as a strided tensor: sparse gradients (nn.Embedding(sparse=True)) densified."""
    return g if g.layout == torch.strided else g.to_dense()


def _all_finite(blocks: Sequence[torch.Tensor | None]) -> bool:
    # A non-finite entry makes the block's sum non-finite, so a finite sum (one cheap pass, no
    # temporary) settles it; only a non-finite sum (or an overflow) needs the entry-wise scan.
    return all(
        b is None or bool(torch.isfinite(b.sum())) or bool(torch.isfinite(b).all()) for b in blocks
    )


# Values converted to float64 at a time by `block_gramian` (2 MiB): the copy stays in cache.
_GRAMIAN_CHUNK = 1 << 18


def block_gramian(block: torch.Tensor) -> torch.Tensor:
    """Return J J^T in float64 for one (m, numel) Jacobian block."""
    return _block_stats(block, with_max=False)[0]


def _block_stats(block: torch.Tensor, with_max: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (J J^T in float64, max_k |J_ik| per row) for one (m, numel) Jacobian block.

    A block in another dtype is converted a chunk of columns at a time, G = sum_c J_c J_c^T, and
    each chunk's row maxima are taken while it is in cache: no float64 copy of the whole block
    is made (it cost more than the product) and the block is read once. The maxima are exact
    (the conversion is), NaN where a row holds a NaN; without `with_max` they are not computed
    (an empty tensor is returned).
    """
    j = block.detach()
    cols = max(1, _GRAMIAN_CHUNK // max(1, j.shape[0]))
    if j.dtype == torch.float64 or j.shape[1] <= cols or j.is_complex():
        maxima = _row_max_abs(j) if with_max else j.new_empty(0)
        j = j.to(torch.float64)
        return j @ j.T, maxima
    gramian = torch.zeros(j.shape[0], j.shape[0], dtype=torch.float64, device=j.device)
    parts: list[torch.Tensor] = []
    for start in range(0, j.shape[1], cols):
        chunk = j[:, start : start + cols].to(torch.float64)
        gramian.addmm_(chunk, chunk.T)
        if with_max:
            parts.append(_row_max_abs(chunk))
    maxima = torch.stack(parts, dim=1).amax(dim=1) if parts else j.new_empty(0)
    return gramian, maxima


def _nonfinite_counts(block: torch.Tensor, gramian: torch.Tensor) -> torch.Tensor:
    """Return the number of non-finite entries in each row of `block` (int64, on CPU).

    A non-finite entry makes its row's squared norm G_ii non-finite, so the (costly) scan runs
    only when the float64 Gramian's diagonal is not all finite.
    """
    if bool(torch.isfinite(gramian.diagonal()).all()):
        return torch.zeros(block.shape[0], dtype=torch.int64)
    return (~torch.isfinite(block)).sum(dim=1).cpu()


def _row_max_abs(block: torch.Tensor) -> torch.Tensor:
    """Return max_k |block[i, k]| per row (NaN where a row holds a NaN), without a copy."""
    if block.is_complex():
        return block.abs().amax(dim=1)
    return torch.maximum(block.amax(dim=1), -block.amin(dim=1))


def _common_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."
