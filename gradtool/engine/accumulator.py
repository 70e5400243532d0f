"""The accumulator: per-batch Jacobian blocks summed for the mean gradient, reduced to Gramians."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradtool.engine.blocks import block_gramian, block_stats, nonfinite_counts
from gradtool.engine.result import BatchJacobian, EngineResult, FallbackReason
from gradtool.problem import no_batch_error


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
        # Blocks whose Gramian another engine formed (the structured one): (G_b, non-finite counts).
        self.final: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.unformed: set[int] = set()  # losses with a block whose entries were never formed
        self.strategy = "auto"
        self.fallbacks: tuple[FallbackReason, ...] = ()
        self.count = 0

    def add(self, loss_names: list[str], jac: BatchJacobian) -> None:
        """Add one batch's Jacobian (its blocks are consumed: summed in place, not copied)."""
        self.begin_batch(loss_names, jac.loss_values)
        for b, block in enumerate(jac.blocks):
            if block is not None:
                self.add_block(b, block)
        self.end_batch(jac.reached, jac.strategy, jac.fallbacks)

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
            gram, block_max = block_stats(block)
            self.first_stats[b] = (gram.cpu(), block_max.cpu())
            if not keep:
                self.unkept[b] = nonfinite_counts(block, self.first_stats[b][0])
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

    def add_batch_gramian(self, b: int, gram: torch.Tensor) -> None:
        """Add block b's Gramian in the current batch, formed without its gradients."""
        if self.batch_gramian is None:
            raise RuntimeError("add_batch_gramian outside begin_batch / end_batch")
        self.batch_gramian += gram.cpu()

    def add_sum(self, b: int, block: torch.Tensor) -> None:
        """Add an (m, numel) block to block b's running sum only (earlier batches' gradients)."""
        total = self.sums[b]
        if total is not None:
            total.add_(block.detach().to(total.dtype))
        else:
            acc = torch.promote_types(block.dtype, torch.float32)
            self.sums[b] = block.detach().to(acc, copy=True).contiguous()

    def set_final(self, b: int, gram: torch.Tensor, nonfinite: torch.Tensor) -> None:
        """Set block b's Gramian of the mean gradient (and its non-finite counts) outright."""
        self.final[b] = (gram.cpu(), nonfinite.cpu())

    def end_batch(
        self,
        reached: Sequence[set[int]],
        strategy: str,
        fallbacks: Sequence[FallbackReason] = (),
    ) -> None:
        """Close the current batch: `reached[i]` are the parameters loss i's graph reaches;
        `fallbacks` say why it ran another path (the first batch that fell back is reported)."""
        if self.batch_gramian is None:
            raise RuntimeError("end_batch without begin_batch")
        self.strategy = strategy
        self.fallbacks = self.fallbacks or tuple(fallbacks)
        for i, found in enumerate(reached):
            for b in found:
                self.reached[b][i] = True
        self.batch_gramians.append(self.batch_gramian)
        self.batch_gramian = None
        self.count += 1

    def result(self) -> EngineResult:
        """Return the Gramians of the mean gradients; the summed blocks are freed one by one."""
        if self.count == 0:
            raise no_batch_error()
        m, count, P = len(self.loss_names), self.count, len(self.names)
        gramians = torch.zeros(P, m, m, dtype=torch.float64)
        nonfinite = torch.zeros(P, m, dtype=torch.int64)
        max_abs = torch.zeros(m, dtype=torch.float64)
        for b, (gram, counts) in self.final.items():
            gramians[b] = gram
            nonfinite[b] = counts
        for b, total in enumerate(self.sums):
            if b in self.final:
                continue
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
            gram, block_max = block_stats(mean) if count > 1 or first is None else first
            gramians[b] = gram.cpu()
            nonfinite[b] = nonfinite_counts(mean, gramians[b])
            max_abs = torch.maximum(max_abs, block_max.to(torch.float64).cpu())
            self.sums[b] = None  # free the block as soon as its Gramian is formed
            self.first_stats[b] = None
        return EngineResult(
            loss_names=self.loss_names,
            loss_values=[v / count for v in self.loss_sums],
            param_names=self.names,
            param_numels=self.numels,
            gramians=gramians,
            max_abs=[None if i in self.unformed else v for i, v in enumerate(max_abs.tolist())],
            nonfinite=nonfinite,
            reached=torch.tensor(self.reached, dtype=torch.bool).reshape(P, m),
            batch_gramians=torch.stack(self.batch_gramians) if count > 1 else None,
            num_batches=count,
            strategy=self.strategy,
            fallbacks=self.fallbacks,
        )
