"""The "backward" strategy: per-loss `.backward()` into `.grad`, saved and restored around it.

The only way through a reentrant activation checkpoint, which `autograd.grad` refuses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradtool.engine.blocks import Rows, backward_error


def backward_blocks(
    losses: list[torch.Tensor],
    params: Sequence[torch.Tensor],
    retain: bool,
    other_leaves: Sequence[torch.Tensor],
    *,
    names: Sequence[str] | None = None,
) -> tuple[list[torch.Tensor | None], list[set[int]]]:
    """Return the (m, numel) blocks and, per loss, the parameters whose `.grad` it filled."""
    # .backward() writes .grad into every leaf it reaches: save them all, put them back after.
    unique = {id(t): t for t in [*params, *other_leaves]}
    leaves = list(unique.values())
    saved = [p.grad for p in leaves]
    rows = Rows(params, len(losses), differentiable=False)
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
