"""The "loop" strategy: one `autograd.grad(..., retain_graph=True)` per loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradtool.engine.blocks import Rows, backward_error


def loop_blocks(
    losses: list[torch.Tensor],
    params: Sequence[torch.Tensor],
    retain: bool,
    create: bool,
    *,
    names: Sequence[str] | None = None,
) -> tuple[list[torch.Tensor | None], list[set[int]]]:
    """Return the (m, numel) blocks and, per loss, the parameters its gradient came back for."""
    rows = Rows(params, len(losses), differentiable=create)
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
