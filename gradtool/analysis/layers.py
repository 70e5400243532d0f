"""Parameter blocks grouped for the layer table: by module path, cut to a depth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gradtool.engine import EngineResult
from gradtool.errors import UsageError, opt


@dataclass(frozen=True)
class Group:
    """A set of parameter blocks reported together (a module path at some depth)."""

    name: str
    indices: tuple[int, ...]


def module_path(param_name: str) -> str:
    """Return the dotted path of the module owning `param_name` ('' for the root module)."""
    head, _, _ = param_name.rpartition(".")
    return head


def group_by_module(param_names: Sequence[str], depth: int | None) -> list[Group]:
    """Return the parameters grouped by module path cut to `depth` components, in first-seen order.

    depth=None keeps each parameter's full module path (one group per module owning parameters);
    parameters of the root module form the group '(root)'.
    """
    if depth is not None and depth < 1:
        raise UsageError(
            f"{opt('depth')} should be at least 1 (or None for full module paths); found {depth}",
            hint="depth 1 groups by top-level module, 2 by their children, ...",
            option="depth",
        )
    order: dict[str, list[int]] = {}
    for i, name in enumerate(param_names):
        parts = module_path(name).split(".") if module_path(name) else []
        key = ".".join(parts if depth is None else parts[:depth]) or "(root)"
        order.setdefault(key, []).append(i)
    return [Group(name=k, indices=tuple(v)) for k, v in order.items()]


@dataclass(frozen=True)
class Layer:
    """A module path's share of the engine result: its blocks, values and Gramian
    G_layer = sum over its blocks b of G_b (float64, m x m)."""

    name: str
    indices: list[int]
    numel: int
    gramian: torch.Tensor


def layers_of(result: EngineResult, depth: int | None) -> list[Layer]:
    """Return the layers of `result` grouped by module path cut to `depth` (see
    `group_by_module`), each with its numel and Gramian."""
    return [
        Layer(
            name=group.name,
            indices=list(group.indices),
            numel=sum(result.param_numels[b] for b in group.indices),
            gramian=result.gramians[list(group.indices)].sum(dim=0),
        )
        for group in group_by_module(result.param_names, depth)
    ]
