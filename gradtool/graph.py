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


@dataclass(frozen=True)
class Reachability:
    """For each loss, which of the parameters its graph reaches; `opaque` if a node hides some."""

    reached: list[set[int]]  # per loss: indices into the parameter list
    opaque: bool


def reachable_parameters(
    losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]
) -> Reachability:
    """Return, per loss, the indices of `params` whose AccumulateGrad node its graph reaches."""
    index = {id(p): i for i, p in enumerate(params)}
    reached: list[set[int]] = []
    opaque = False
    for loss in losses:
        found: set[int] = set()
        root = loss.grad_fn
        if root is None:
            if loss.requires_grad and id(loss) in index:  # the loss is a parameter itself
                found.add(index[id(loss)])
            reached.append(found)
            continue
        stack = [root]
        seen = {root}
        while stack:
            node = stack.pop()
            name = type(node).__name__
            if name == "AccumulateGrad":
                i = index.get(id(node.variable))
                if i is not None:
                    found.add(i)
                continue
            if name in OPAQUE_NODES:
                opaque = True
            for child, _ in node.next_functions:
                if child is not None and child not in seen:
                    seen.add(child)
                    stack.append(child)
        reached.append(found)
    return Reachability(reached=reached, opaque=opaque)
