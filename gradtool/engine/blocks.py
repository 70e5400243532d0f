"""Jacobian blocks: (m, numel) per-loss gradients of one parameter, and their statistics.

Shared by every strategy: the Gramian of a block in float64, its row maxima and non-finite
counts, the gathering of per-loss gradients into blocks, and the one-line backward error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from gradtool.errors import GradientError

# torch.compile (AOT autograd) refuses a retained backward through a graph whose backward was
# first compiled without one (it then frees or reuses the saved activations: "donated buffers").
DONATED_BUFFER_TEXT = "compiled with non-empty donated buffers"
DONATED_BUFFER_REASON = "donated_buffer"
# With donated buffers off, inductor's in-place buffers still write over saved activations in a
# backward (torch 2.13, measured: the second retained backward and the caller's own are wrong).
COMPILED_INPLACE_REASON = "compiled_inplace"
COMPILED_HINT = (
    "before the compiled model's first forward, set torch._functorch.config.donated_buffer = "
    "False (torch's switch for a retained backward) and torch._inductor.config.inplace_buffers "
    "= False (without it, inductor's in-place kernels overwrite saved activations)"
)


def unsafe_compiled_backward() -> bool:
    """Return whether a second backward through a torch.compile'd graph may be wrong here:
    donated buffers off while inductor's in-place buffers and buffer reuse are on.

    Read from the configuration modules only if torch.compile has loaded them (a process that
    never compiled has nothing to check, and importing inductor costs seconds).
    """
    functorch = sys.modules.get("torch._functorch.config")
    inductor = sys.modules.get("torch._inductor.config")
    if functorch is None or inductor is None:
        return False
    return (
        not getattr(functorch, "donated_buffer", True)
        and bool(getattr(inductor, "inplace_buffers", False))
        and bool(getattr(inductor, "allow_buffer_reuse", False))
    )


def check_compiled_backward(compiled: bool, passes: int) -> None:
    """Raise a `GradientError` before any backward when the graph holds a torch.compile'd region
    that `passes` backward passes (more than one: gradtool's own, then the caller's) would
    corrupt; see `unsafe_compiled_backward`."""
    if compiled and passes > 1 and unsafe_compiled_backward():
        raise GradientError(
            "the losses come from a torch.compile'd model compiled with donated buffers off but "
            "inductor's in-place buffers on: a second backward through its graph reads saved "
            "activations the first one overwrote, so these gradients (and a backward of yours "
            "afterwards) would be wrong",
            hint=COMPILED_HINT,
            reason=COMPILED_INPLACE_REASON,
        )


class Rows:
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
            block[i].copy_(dense(g).reshape(-1))

    def blocks(self) -> list[torch.Tensor | None]:
        """Return the (m, numel) blocks, None where no loss reaches the parameter."""
        if self.differentiable:
            return stack_rows(self.rows, self.params)
        for block, unset in zip(self.filled, self.unset, strict=True):
            if block is not None:
                for k in unset:
                    block[k].zero_()
        return self.filled


def stack_rows(
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
                    torch.zeros_like(p).reshape(-1) if g is None else dense(g).reshape(-1)
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
    if DONATED_BUFFER_TEXT in str(exc):
        return GradientError(
            "the losses come from a torch.compile'd model whose backward was compiled with donated "
            "buffers, which refuse the retained backward gradtool needs (each loss is "
            "differentiated on the same graph)",
            hint=COMPILED_HINT,
            loss=loss,
            reason=DONATED_BUFFER_REASON,
        )
    return GradientError(
        f"differentiating loss '{loss}' failed: {type(exc).__name__}: {first_line(exc, 240)}",
        hint="autograd raised this while running the model's backward (an in-place change of a "
        "saved tensor, a custom backward, ...); GRADTOOL_DEBUG=1 shows the full traceback",
    )


def dense(g: torch.Tensor) -> torch.Tensor:
    """Return `g` as a strided tensor: sparse gradients (nn.Embedding(sparse=True)) densified."""
    return g if g.layout == torch.strided else g.to_dense()


def all_finite(blocks: Sequence[torch.Tensor | None]) -> bool:
    # A non-finite entry makes the block's sum non-finite, so a finite sum (one cheap pass, no
    # temporary) settles it; only a non-finite sum (or an overflow) needs the entry-wise scan.
    return all(
        b is None or bool(torch.isfinite(b.sum())) or bool(torch.isfinite(b).all()) for b in blocks
    )


# Values converted to float64 at a time by `block_gramian` (2 MiB): the copy stays in cache.
GRAMIAN_CHUNK = 1 << 18


def block_gramian(block: torch.Tensor) -> torch.Tensor:
    """Return J J^T in float64 for one (m, numel) Jacobian block."""
    return block_stats(block, with_max=False)[0]


def block_stats(block: torch.Tensor, with_max: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (J J^T in float64, max_k |J_ik| per row) for one (m, numel) Jacobian block.

    A block in another dtype is converted a chunk of columns at a time, G = sum_c J_c J_c^T, and
    each chunk's row maxima are taken while it is in cache: no float64 copy of the whole block
    is made (it cost more than the product) and the block is read once. The maxima are exact
    (the conversion is), NaN where a row holds a NaN; without `with_max` they are not computed
    (an empty tensor is returned).

    The chunks go through one float64 buffer, reused, and the maxima through one running tensor:
    a fresh chunk per step, each followed by a small tensor that stays alive (the chunk's
    maxima), left a chunk-sized hole behind per step that glibc's aligned allocator could not
    reuse, so the heap grew by the whole block converted (measured: +0.9 GB on a 16.8M-value
    block with 8 losses, in some runs; benchmarks/bench_low_memory.py).
    """
    j = block.detach()
    rows, n = j.shape
    cols = max(1, GRAMIAN_CHUNK // max(1, rows))
    if j.dtype == torch.float64 or n <= cols or j.is_complex():
        maxima = row_max_abs(j) if with_max else j.new_empty(0)
        j = j.to(torch.float64)
        return j @ j.T, maxima
    gramian = torch.zeros(rows, rows, dtype=torch.float64, device=j.device)
    buffer = torch.empty(rows, cols, dtype=torch.float64, device=j.device)
    maxima: torch.Tensor | None = None
    for start in range(0, n, cols):
        width = min(cols, n - start)
        chunk = buffer if width == cols else buffer[:, :width]
        chunk.copy_(j[:, start : start + width])
        gramian.addmm_(chunk, chunk.T)
        if with_max:
            part = row_max_abs(chunk)
            maxima = part if maxima is None else torch.maximum(maxima, part, out=maxima)
    del buffer
    return gramian, (maxima if maxima is not None else j.new_empty(0))


def nonfinite_counts(block: torch.Tensor, gramian: torch.Tensor) -> torch.Tensor:
    """Return the number of non-finite entries in each row of `block` (int64, on CPU).

    A non-finite entry makes its row's squared norm G_ii non-finite, so the (costly) scan runs
    only when the float64 Gramian's diagonal is not all finite.
    """
    if bool(torch.isfinite(gramian.diagonal()).all()):
        return torch.zeros(block.shape[0], dtype=torch.int64)
    return (~torch.isfinite(block)).sum(dim=1).cpu()


def row_max_abs(block: torch.Tensor) -> torch.Tensor:
    """Return max_k |block[i, k]| per row (NaN where a row holds a NaN), without a copy."""
    if block.is_complex():
        return block.abs().amax(dim=1)
    return torch.maximum(block.amax(dim=1), -block.amin(dim=1))


def common_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."
