"""The low-memory engine: per-block Gramians accumulated as the gradients arrive.

The default engine holds every loss's gradient of every selected parameter at once, one (m, numel)
block per parameter: O(m x all parameters) extra memory. Here a single batched backward
(`autograd.grad(..., is_grads_batched=True)` with identity grad_outputs, as the "batched" strategy)
runs with a hook on each selected parameter. When a parameter's m gradients are complete (summed
over all its uses, so tied parameters are exact), its hook takes the block's Gramian
`G_b = J_b J_b^T` (float64), row maxima and non-finite counts, and hands autograd a zero-stride
stand-in, so the block is freed at once: the extra memory is O(m x largest block), plus the batched
backward's own m x (activation gradients in flight), as in the "batched" strategy.

How: autograd runs a batched backward under the legacy vmap (`torch._vmap_internals`), so a hook
receives one logical gradient; `torch._remove_batch_dim` at the current vmap level gives the
physical (m, *shape) block. These are private torch APIs: a self-test on first use checks that they
are there and give the right numbers, and the default engine runs instead (with the reason) if not.

Several batches: the Gramian of the mean gradient needs the summed Jacobian (its cross terms
J_k J_l^T between batches), so each block is also added in place to a running sum, O(m x all
parameters) for the sums; what is saved is the default's second copy (the current batch's
blocks). With a single batch (known by looking one batch ahead) nothing is kept.

A batch falls back, and the reason is reported (`EngineResult.fallback_reason`), where:
- the strategy asked is "loop" or "backward", or the graph holds a reentrant checkpoint (which
  `autograd.grad` cannot pass): the default engine's path, O(m x all parameters);
- vmap cannot run the model's backward: the parameters whose hooks had not fired yet are
  differentiated loss by loss, O(m x those parameters);
- a block has non-finite entries: one batched backward can leak NaN (0 * inf) into rows of losses
  that never touch the offending node, so those blocks are recomputed loss by loss, as the default
  `auto` does (with the "batched" strategy they are kept as computed, as the default does).
The reachability (which loss reaches which parameter) comes from `gradtool.engine.graph`, as always.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from gradtool.engine.accumulator import GramianAccumulator
from gradtool.engine.batched import batched_failed, batched_grads
from gradtool.engine.blocks import all_finite, check_compiled_backward, first_line
from gradtool.engine.graph import reachable_parameters
from gradtool.engine.jacobian import batch_jacobian
from gradtool.engine.loop import loop_blocks
from gradtool.engine.result import Fallback, FallbackReason, Strategy

__all__ = ["accumulate_batch", "hooks_available", "look_ahead"]

_END = object()


def accumulate_batch(
    acc: GramianAccumulator,
    losses: Mapping[str, torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    strategy: Strategy = "auto",
    keep: bool = True,
    retain_graph: bool = False,
    other_leaves: Sequence[torch.Tensor] = (),
) -> None:
    """Add one batch of `losses` to `acc`, each parameter block's Gramian taken as it arrives.

    `keep=False` (only for a problem with a single batch) lets every block be freed as soon as its
    statistics are taken; with `keep` the blocks are summed in `acc` for the mean gradient.
    `retain_graph` leaves the losses' graph for the caller's own backward.
    """
    names = list(losses)
    tensors = [t.reshape(()) for t in losses.values()]
    reach = reachable_parameters(tensors, params)
    check_compiled_backward(reach.compiled, 2 if retain_graph or len(tensors) > 1 else 1)
    reason = _cannot_hook(strategy, reach.opaque)
    if reason is not None:
        jac = batch_jacobian(
            losses,
            params,
            strategy=strategy,
            retain_graph=retain_graph,
            other_leaves=other_leaves,
        )
        acc.add(names, replace(jac, fallbacks=(reason, *jac.fallbacks)))
        return
    m = len(tensors)
    acc.begin_batch(names, [float(t.detach().real) for t in tensors])
    done: set[int] = set()  # blocks added to acc
    flagged: set[int] = set()  # blocks with non-finite entries, to recompute loss by loss

    def take(b: int, block: torch.Tensor) -> None:
        if strategy == "auto" and not all_finite([block]):
            flagged.add(b)
            return
        acc.add_block(b, block, keep=keep)
        done.add(b)

    def hook_for(b: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            take(b, _physical(grad, m).reshape(m, -1))
            # A zero-stride stand-in: what autograd.grad returns for b then costs no memory.
            return torch.zeros((), dtype=grad.dtype, device=grad.device).expand(grad.shape)

        return hook

    reachable = set().union(*reach.reached) if reach.reached else set()
    handles = [params[b].register_hook(hook_for(b)) for b in sorted(reachable)]
    failure: BaseException | None = None
    try:
        # The graph is retained for a loss-by-loss recomputation of what the hooks did not take.
        grads = batched_grads(tensors, params, retain=True)
        for b, g in enumerate(grads):  # a gradient no hook saw (e.g. a non-leaf input)
            if g is not None and b not in done and b not in flagged:
                take(b, g.reshape(m, -1))
        del grads
    except Exception as exc:  # private vmap APIs: any failure falls back to the loss-by-loss path
        failure = exc
    finally:
        for handle in handles:
            handle.remove()

    reached = [set(r) for r in reach.reached]
    note: FallbackReason | None = None
    todo = sorted(flagged | (reachable - done if failure is not None else set()))
    if failure is not None and strategy == "batched":
        raise batched_failed(failure) from None
    if failure is not None:
        note = FallbackReason.of(Fallback.VMAP_FAILED, error=first_line(failure)).extended(
            f"; {len(todo)} parameter tensors differentiated loss by loss (their m gradients "
            "held at once)"
        )
    elif todo:
        what = f"{len(todo)} parameter tensors recomputed loss by loss"
        note = FallbackReason.of(Fallback.NONFINITE_BATCHED, what=what)
    if todo:
        blocks, via_grad = loop_blocks(tensors, [params[b] for b in todo], retain_graph, False)
        for k, block in enumerate(blocks):
            if block is not None:
                acc.add_block(todo[k], block, keep=keep)
        for i, found in enumerate(via_grad):
            reached[i] |= {todo[k] for k in found}
        del blocks
    strategy_used = "loop" if failure is not None and not done else "batched"
    acc.end_batch(reached, strategy_used, () if note is None else (note,))


def _cannot_hook(strategy: str, opaque: bool) -> FallbackReason | None:
    if strategy in ("loop", "backward"):
        return FallbackReason.of(Fallback.LOW_MEMORY_STRATEGY, strategy=strategy)
    if opaque:  # (with the "batched" strategy, batch_jacobian raises its usual error)
        return FallbackReason.of(Fallback.LOW_MEMORY_CHECKPOINT)
    if not hooks_available():
        return FallbackReason.of(Fallback.LOW_MEMORY_NO_HOOKS)
    return None


@functools.cache
def hooks_available() -> bool:
    """Return whether hooks see the physical (m, ...) gradients of a batched backward here."""
    try:
        p = torch.ones(3, requires_grad=True)
        seen: list[torch.Tensor] = []

        def hook(grad: torch.Tensor) -> torch.Tensor:
            seen.append(_physical(grad, 2).clone())
            return torch.zeros((), dtype=grad.dtype).expand(grad.shape)

        handle = p.register_hook(hook)
        try:
            (out,) = batched_grads([p.sum(), (2 * p).sum()], [p], retain=False)
        finally:
            handle.remove()
        expected = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
        return len(seen) == 1 and torch.equal(seen[0], expected) and not bool(out.any())
    except Exception:
        return False


def _physical(grad: torch.Tensor, m: int) -> torch.Tensor:
    """Return the (m, *shape) tensor behind a gradient seen inside a batched backward."""
    level = torch._C._vmapmode_increment_nesting()  # the level a nested vmap would get
    torch._C._vmapmode_decrement_nesting()
    return torch._remove_batch_dim(grad, level - 1, m, 0)


def look_ahead(batches: Iterator[Any]) -> tuple[Iterator[Any], bool]:
    """Return the batches and whether there is exactly one (one batch is fetched ahead)."""
    it = iter(batches)
    first = next(it, _END)
    if first is _END:
        return iter(()), False
    second = next(it, _END)
    if second is _END:
        return iter((first,)), True

    def chain() -> Iterator[Any]:
        yield first
        yield second
        yield from it

    return chain(), False
