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
to "backward" where the graph holds a reentrant checkpoint. The engine never prints.
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
) -> EngineResult:
    """Return the Gramians of the mean per-loss gradients of `problem` over its batches."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy should be one of {STRATEGIES}; found {strategy!r}")
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
        self.strategy = "auto"
        self.fallback: str | None = None
        self.count = 0

    def add(self, loss_names: list[str], jac: BatchJacobian) -> None:
        """Add one batch's Jacobian (its blocks are consumed: summed in place, not copied)."""
        m = len(loss_names)
        if self.count == 0:
            self.loss_names = loss_names
            self.loss_sums = [0.0] * m
            self.reached = [[False] * m for _ in self.names]
        self.strategy = jac.strategy
        self.fallback = self.fallback or jac.fallback_reason
        self.loss_sums = [a + b for a, b in zip(self.loss_sums, jac.loss_values, strict=True)]
        for i, found in enumerate(jac.reached):
            for b in found:
                self.reached[b][i] = True
        batch_gramian = torch.zeros(m, m, dtype=torch.float64)
        for b, block in enumerate(jac.blocks):
            if block is None:
                continue
            batch_gramian += _block_gramian(block).cpu()
            total = self.sums[b]
            self.sums[b] = block.detach() if total is None else total.add_(block.detach())
        self.batch_gramians.append(batch_gramian)
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
            if total is None:
                continue
            mean = total / count if count > 1 else total
            nonfinite[b] = (~torch.isfinite(mean)).sum(dim=1).cpu()
            gramians[b] = _block_gramian(mean).cpu()
            max_abs = torch.maximum(max_abs, mean.abs().amax(dim=1).to(torch.float64).cpu())
            self.sums[b] = None  # free the block as soon as its Gramian is formed
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
    values = [float(t.detach().real) for t in tensors]
    reach = reachable_parameters(tensors, params)
    keep = retain_graph or create_graph
    if strategy == "backward" or (strategy == "auto" and reach.opaque):
        blocks, via_grad = _backward_blocks(tensors, params, keep, other_leaves)
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
    blocks, via_grad = _loop_blocks(tensors, params, keep, create_graph)
    reached = [r | g for r, g in zip(reach.reached, via_grad, strict=True)]
    return BatchJacobian(values, blocks, reached, "loop", reason)


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
    return [None if g is None else g.reshape(len(losses), -1) for g in grads]


def _loop_blocks(
    losses: list[torch.Tensor], params: Sequence[torch.Tensor], retain: bool, create: bool
) -> tuple[list[torch.Tensor | None], list[set[int]]]:
    rows: list[list[torch.Tensor | None]] = []
    via_grad: list[set[int]] = []
    for i, loss in enumerate(losses):
        grads = torch.autograd.grad(
            loss,
            list(params),
            retain_graph=retain or i < len(losses) - 1,
            create_graph=create,
            allow_unused=True,
        )
        rows.append(list(grads))
        via_grad.append({b for b, g in enumerate(grads) if g is not None})
    return _stack_rows(rows, params), via_grad


def _backward_blocks(
    losses: list[torch.Tensor],
    params: Sequence[torch.Tensor],
    retain: bool,
    other_leaves: Sequence[torch.Tensor],
) -> tuple[list[torch.Tensor | None], list[set[int]]]:
    # .backward() writes .grad into every leaf it reaches: save them all, put them back after.
    leaves = [*params, *other_leaves]
    saved = [p.grad for p in leaves]
    rows: list[list[torch.Tensor | None]] = []
    via_grad: list[set[int]] = []
    try:
        for i, loss in enumerate(losses):
            for p in leaves:
                p.grad = None
            loss.backward(retain_graph=retain or i < len(losses) - 1)
            grads = [p.grad for p in params]
            rows.append(grads)
            via_grad.append({b for b, g in enumerate(grads) if g is not None})
    finally:
        for p, g in zip(leaves, saved, strict=True):
            p.grad = g
    return _stack_rows(rows, params), via_grad


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
                [torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1) for g in column]
            )
        )
    return blocks


def _all_finite(blocks: Sequence[torch.Tensor | None]) -> bool:
    return all(b is None or bool(torch.isfinite(b).all()) for b in blocks)


def _block_gramian(block: torch.Tensor) -> torch.Tensor:
    """Return J J^T in float64 for one (m, numel) Jacobian block."""
    j = block.detach().to(torch.float64)
    return j @ j.T


def _common_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
