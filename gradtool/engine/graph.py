"""Which parameters a loss reaches, read off its autograd graph.

"Unused" must not come from zero checks: a dead ReLU gives an exact zero gradient through a real
path. A parameter is reached when its `AccumulateGrad` node is in the loss's `grad_fn` graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Autograd nodes whose backward re-runs a forward the graph does not show (reentrant checkpoint):
# parameters used inside are invisible to a graph walk and to `torch.autograd.grad`.
OPAQUE_NODES = frozenset({"CheckpointFunctionBackward"})
# The node of a `torch.compile`d region: its backward is AOT autograd's compiled one.
COMPILED_NODES = frozenset({"CompiledFunctionBackward"})


@dataclass(frozen=True)
class Reachability:
    """For each loss, which of the parameters its graph reaches; `opaque` if a node hides some."""

    reached: list[set[int]]  # per loss: indices into the parameter list
    opaque: bool
    leaves: tuple[torch.Tensor, ...] = ()  # every leaf the graph accumulates into, selected or not
    compiled: bool = False  # the graph holds a torch.compile'd region


def reachable_parameters(
    losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]
) -> Reachability:
    """Return, per loss, the indices of `params` whose AccumulateGrad node its graph reaches.

    One walk over the union of the losses' graphs, not one per loss: each node gets the bitmask
    of the losses that reach it (bit i for loss i), the OR of its parents' masks, propagated in
    topological order; an AccumulateGrad node's mask says which losses reach its parameter. So
    the cost is O(nodes + edges) whatever the number of losses, which share most of the graph.
    """
    index = {id(p): i for i, p in enumerate(params)}
    reached: list[set[int]] = [set() for _ in losses]
    masks: dict[object, int] = {}
    for i, loss in enumerate(losses):
        root = loss.grad_fn
        if root is None:
            if loss.requires_grad and id(loss) in index:  # the loss is a parameter itself
                reached[i].add(index[id(loss)])
            continue
        masks[root] = masks.get(root, 0) | (1 << i)
    # Collect the union graph: each node's children and how many edges enter it.
    children: dict[object, list[object]] = {}
    entering: dict[object, int] = dict.fromkeys(masks, 0)
    stack = list(masks)
    while stack:
        node = stack.pop()
        if type(node).__name__ == "AccumulateGrad":
            children[node] = []
            continue
        kids = [child for child, _ in node.next_functions if child is not None]
        children[node] = kids
        for child in kids:
            if child not in entering:
                entering[child] = 0
                stack.append(child)
            entering[child] += 1
    # Propagate the masks from the roots down, each node once all its parents are done.
    opaque = compiled = False
    leaves: list[torch.Tensor] = []
    decoded: dict[int, list[int]] = {}  # mask -> its set bits (most parameters share a mask)
    ready = [node for node, count in entering.items() if count == 0]
    while ready:
        node = ready.pop()
        mask = masks.get(node, 0)
        name = type(node).__name__
        if name == "AccumulateGrad":
            leaves.append(node.variable)
            i = index.get(id(node.variable))
            if i is not None:
                bits = decoded.get(mask)
                if bits is None:
                    bits = decoded[mask] = _bits(mask)
                for loss_index in bits:
                    reached[loss_index].add(i)
            continue
        if name in OPAQUE_NODES:
            opaque = True
        elif name in COMPILED_NODES:
            compiled = True
        for child in children[node]:
            masks[child] = masks.get(child, 0) | mask
            entering[child] -= 1
            if entering[child] == 0:
                ready.append(child)
    return Reachability(reached=reached, opaque=opaque, leaves=tuple(leaves), compiled=compiled)


def _bits(mask: int) -> list[int]:
    """Return the positions of the set bits of `mask`, increasing."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out
