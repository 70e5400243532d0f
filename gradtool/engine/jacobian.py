"""One batch's Jacobian blocks by the strategy asked, falling back where it cannot run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from gradtool.engine.backward import backward_blocks
from gradtool.engine.batched import batched_blocks, batched_failed
from gradtool.engine.blocks import all_finite, check_compiled_backward, first_line
from gradtool.engine.graph import Reachability, reachable_parameters
from gradtool.engine.loop import loop_blocks
from gradtool.engine.result import BatchJacobian, Fallback, FallbackReason, Strategy
from gradtool.errors import GradientError, opt

# On the CPU, "auto" runs the loop from this many selected parameter values on (see the docstring).
AUTO_LOOP_MIN_NUMEL = 0


def batch_jacobian(
    losses: Mapping[str, torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    strategy: Strategy = "auto",
    retain_graph: bool = False,
    create_graph: bool = False,
    other_leaves: Sequence[torch.Tensor] = (),
    reach: Reachability | None = None,
) -> BatchJacobian:
    """Return the per-loss gradients of `losses` w.r.t. `params`, one (m, numel) block each.

    `retain_graph` keeps the losses' graph for the caller's own backward afterwards;
    `create_graph` makes the returned gradients differentiable (for higher-order analyses);
    `other_leaves` are tensors whose `.grad` the "backward" strategy must leave as it found them;
    `reach`, the losses' reachability when the caller has it already.
    """
    if strategy == "structured":  # gradients are asked for: the structured engine forms none
        jac = batch_jacobian(
            losses,
            params,
            strategy="auto",
            retain_graph=retain_graph,
            create_graph=create_graph,
            other_leaves=other_leaves,
            reach=reach,
        )
        reason = FallbackReason.of(Fallback.STRUCTURED_GRADIENTS)
        return replace(jac, fallbacks=(reason, *jac.fallbacks))
    tensors = [t.reshape(()) for t in losses.values()]
    names = list(losses)
    values = [float(t.detach().real) for t in tensors]
    reach = reach or reachable_parameters(tensors, params)
    keep = retain_graph or create_graph
    check_compiled_backward(reach.compiled, len(tensors) + int(keep))
    if strategy == "backward" or (strategy == "auto" and reach.opaque):
        extra = [*other_leaves, *reach.leaves]  # e.g. inputs with requires_grad: .grad kept too
        blocks, via_grad = backward_blocks(tensors, params, keep, extra, names=names)
        reached = [r | g for r, g in zip(reach.reached, via_grad, strict=True)]
        reasons = (FallbackReason.of(Fallback.REENTRANT_CHECKPOINT),) if reach.opaque else ()
        return BatchJacobian(values, blocks, reached, "backward", reasons)
    if reach.opaque:
        raise GradientError(
            f"strategy {strategy!r} cannot differentiate through a reentrant activation checkpoint "
            "(torch.utils.checkpoint(..., use_reentrant=True))",
            hint=f"use {opt('strategy', 'auto')} (or 'backward'), or use_reentrant=False in the "
            "model",
            option="strategy",
            reason="reentrant_checkpoint",
        )
    reason: FallbackReason | None = None
    if strategy == "auto" and _loop_is_faster(tensors, params):
        strategy = "loop"
        reason = FallbackReason.of(Fallback.CPU_LOOP)
    if strategy in ("auto", "batched"):
        try:
            blocks = batched_blocks(tensors, params, keep or strategy == "auto", create_graph)
            if strategy == "batched" or all_finite(blocks):
                return BatchJacobian(values, blocks, reach.reached, "batched")
            # one batched backward computes 0 * inf = NaN in rows of losses that never touch
            # the offending node; the loop attributes non-finite entries to the right loss.
            reason = FallbackReason.of(Fallback.NONFINITE_BATCHED, what="recomputed loss by loss")
            del blocks
        except (RuntimeError, NotImplementedError) as exc:
            if strategy == "batched":
                raise batched_failed(exc) from None
            reason = FallbackReason.of(Fallback.VMAP_FAILED, error=first_line(exc))
    blocks, via_grad = loop_blocks(tensors, params, keep, create_graph, names=names)
    reached = [r | g for r, g in zip(reach.reached, via_grad, strict=True)]
    return BatchJacobian(values, blocks, reached, "loop", () if reason is None else (reason,))


def _loop_is_faster(losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> bool:
    return losses[0].device.type == "cpu" and sum(p.numel() for p in params) >= AUTO_LOOP_MIN_NUMEL
