"""The "batched" strategy: one `autograd.grad` call with `is_grads_batched=True` and identity
grad_outputs, so vmap carries the m losses through a single backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradtool.engine.blocks import common_dtype, dense, first_line
from gradtool.errors import GradientError, opt


def batched_grads(
    losses: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    retain: bool,
    create: bool = False,
) -> tuple[torch.Tensor | None, ...]:
    """Return d losses / d params as one (m, *shape) gradient per parameter (None: unreached).

    Row i of each is the gradient of loss i: grad_outputs is the m x m identity, batched.
    """
    dtype = common_dtype(losses)
    stacked = torch.stack([t.to(dtype) for t in losses])
    eye = torch.eye(len(losses), dtype=dtype, device=stacked.device)
    return torch.autograd.grad(
        stacked,
        list(params),
        grad_outputs=eye,
        is_grads_batched=True,
        retain_graph=retain,
        create_graph=create,
        allow_unused=True,
    )


def batched_blocks(
    losses: list[torch.Tensor], params: Sequence[torch.Tensor], retain: bool, create: bool
) -> list[torch.Tensor | None]:
    """Return the (m, numel) block of every parameter from one batched backward."""
    grads = batched_grads(losses, params, retain=retain, create=create)
    return [None if g is None else dense(g).reshape(len(losses), -1) for g in grads]


def batched_failed(exc: BaseException) -> GradientError:
    """Return the error for the "batched" strategy asked explicitly on a model vmap cannot run."""
    return GradientError(
        f"the batched strategy cannot run this model's backward: {first_line(exc)}",
        hint=f"use {opt('strategy', 'loop')} (or 'auto', which falls back by itself)",
        option="strategy",
        reason="vmap_failed",
    )
