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
The reachability (which loss reaches which parameter) comes from `gradtool.graph`, as always.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from gradtool.engine import (
    EngineResult,
    GramianAccumulator,
    Strategy,
    _all_finite,
    _common_dtype,
    _first_line,
    _loop_blocks,
    batch_jacobian,
)
from gradtool.errors import GradientError
from gradtool.graph import reachable_parameters
from gradtool.problem import Problem

__all__ = ["accumulate_batch", "compute_gramians_low_memory", "hooks_available"]

_END = object()


def compute_gramians_low_memory(
    problem: Problem,
    *,
    strategy: Strategy = "auto",
    progress: Callable[[int], None] | None = None,
) -> EngineResult:
    """Return the same `EngineResult` as `compute_gramians`, with O(m x largest block) memory.

    The extra memory bound holds for a single batch; with several, the running sums of the blocks
    (for the mean gradient) take O(m x all parameters), see the module docstring.
    """
    params = [p for _, p in problem.parameters]
    selected = {id(p) for p in params}
    others = [p for p in problem.model.parameters() if id(p) not in selected]
    acc = GramianAccumulator(problem.parameters)
    batches, single = _look_ahead(problem.iter_batches())
    for batch in batches:
        losses = problem.evaluate(batch)
        accumulate_batch(
            acc, losses, params, strategy=strategy, keep=not single, other_leaves=others
        )
        del losses
        if progress is not None:
            progress(acc.count)
    return acc.result()


def accumulate_batch(
    acc: GramianAccumulator,
    losses: Mapping[str, torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    strategy: Strategy = "auto",
    keep: bool = True,
    other_leaves: Sequence[torch.Tensor] = (),
) -> None:
    """Add one batch of `losses` to `acc`, each parameter block's Gramian taken as it arrives.

    `keep=False` (only for a problem with a single batch) lets every block be freed as soon as its
    statistics are taken; with `keep` the blocks are summed in `acc` for the mean gradient.
    """
    names = list(losses)
    tensors = [t.reshape(()) for t in losses.values()]
    reach = reachable_parameters(tensors, params)
    reason = _cannot_hook(strategy, reach.opaque)
    if reason is not None:
        jac = batch_jacobian(losses, params, strategy=strategy, other_leaves=other_leaves)
        acc.add(names, replace(jac, fallback_reason=_join(reason, jac.fallback_reason)))
        return
    m = len(tensors)
    acc.begin_batch(names, [float(t.detach().real) for t in tensors])
    done: set[int] = set()  # blocks added to acc
    flagged: set[int] = set()  # blocks with non-finite entries, to recompute loss by loss

    def take(b: int, block: torch.Tensor) -> None:
        if strategy == "auto" and not _all_finite([block]):
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
        dtype = _common_dtype(tensors)
        stacked = torch.stack([t.to(dtype) for t in tensors])
        eye = torch.eye(m, dtype=dtype, device=stacked.device)
        grads = torch.autograd.grad(
            stacked,
            list(params),
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=True,  # for a loss-by-loss recomputation of what the hooks did not take
            allow_unused=True,
        )
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
    note: str | None = None
    todo = sorted(flagged | (reachable - done if failure is not None else set()))
    if failure is not None and strategy == "batched":
        raise GradientError(
            f"the batched strategy cannot run this model's backward: {_first_line(failure)}",
            hint="use --strategy loop (or auto, which falls back by itself)",
        ) from None
    if failure is not None:
        note = (
            f"vmap over backward failed: {_first_line(failure)}; {len(todo)} parameter tensors "
            "differentiated loss by loss (their m gradients held at once)"
        )
    elif todo:
        note = (
            "non-finite entries in the batched gradients: "
            f"{len(todo)} parameter tensors recomputed loss by loss"
        )
    if todo:
        blocks, via_grad = _loop_blocks(tensors, [params[b] for b in todo], False, False)
        for k, block in enumerate(blocks):
            if block is not None:
                acc.add_block(todo[k], block, keep=keep)
        for i, found in enumerate(via_grad):
            reached[i] |= {todo[k] for k in found}
        del blocks
    strategy_used = "loop" if failure is not None and not done else "batched"
    acc.end_batch(reached, strategy_used, note)


def _cannot_hook(strategy: str, opaque: bool) -> str | None:
    if strategy in ("loop", "backward"):
        return f"low memory needs the batched backward; --strategy {strategy} holds all gradients"
    if opaque:  # (with --strategy batched, batch_jacobian raises its usual error)
        return "low memory needs autograd.grad, which a reentrant checkpoint blocks"
    if not hooks_available():
        return "low memory: this torch's batched backward does not expose gradients to hooks"
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
            (out,) = torch.autograd.grad(
                torch.stack([p.sum(), (2 * p).sum()]),
                [p],
                grad_outputs=torch.eye(2),
                is_grads_batched=True,
            )
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


def _look_ahead(batches: Iterator[Any]) -> tuple[Iterator[Any], bool]:
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


def _join(a: str | None, b: str | None) -> str | None:
    return "; ".join(x for x in (a, b) if x) or None
