"""Parameter blocks grouped for the layer table (by module path, cut to a depth) and for the
group table (by the user's named globs on parameter names, across modules)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradtool.engine import EngineResult
from gradtool.errors import UsageError, opt
from gradtool.problem import closest_patterns

# What `groups=` takes: a group name -> one glob, or several (a parameter matching any is in it).
GroupsArg = Mapping[str, str | Iterable[str]]


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
    """A module path's (or a parameter group's) share of the engine result: its blocks, values
    and Gramian G_layer = sum over its blocks b of G_b (float64, m x m)."""

    name: str
    indices: list[int]
    numel: int
    gramian: torch.Tensor


def _layer(result: EngineResult, group: Any) -> Layer:
    """Return the Layer of a group of parameter blocks: its numel and G = sum_b G_b."""
    return Layer(
        name=group.name,
        indices=list(group.indices),
        numel=sum(result.param_numels[b] for b in group.indices),
        gramian=result.gramians[list(group.indices)].sum(dim=0),
    )


def layers_of(result: EngineResult, depth: int | None) -> list[Layer]:
    """Return the layers of `result` grouped by module path cut to `depth` (see
    `group_by_module`), each with its numel and Gramian."""
    return [_layer(result, group) for group in group_by_module(result.param_names, depth)]


def check_groups(
    groups: GroupsArg | None,
    *,
    option: str = "groups",
    subject: str = "globs",
    hint: str = "e.g. {'attention': '*.attn.*', 'mlp': ['*.mlp.*', '*.ffn.*']}",
) -> dict[str, tuple[str, ...]] | None:
    """Return `groups` as {name: (glob, ...)} after checking its form (None when no group).

    Each name is a non-empty string, each glob a non-empty string; a glob given twice for one
    group is refused (it adds nothing: most likely another glob was meant). Whether each glob
    matches is checked against the names (`group_by_globs`, `group_losses`). `option` names the
    argument in errors (parameter groups, or `loss_groups`), `subject` what the globs match.
    """
    if groups is None:
        return None
    if not isinstance(groups, Mapping):
        raise UsageError(
            f"{opt(option)} should map group names to {subject}; found {type(groups).__name__}",
            hint=hint,
            option=option,
        )
    out: dict[str, tuple[str, ...]] = {}
    for name, value in groups.items():
        if not isinstance(name, str) or not name:
            raise UsageError(
                f"{opt(option)}: a group name should be a non-empty string; found {name!r}",
                hint=hint,
                option=option,
            )
        globs = (value,) if isinstance(value, str) else value
        try:
            globs = tuple(globs)
        except TypeError:
            globs = (value,)  # not iterable: refused below as not a string
        if not globs:
            raise UsageError(f"{opt(option)}: group {name!r} has no glob", hint=hint, option=option)
        for glob in globs:
            if not isinstance(glob, str) or not glob:
                raise UsageError(
                    f"{opt(option)}: group {name!r} should hold non-empty glob strings; "
                    f"found {glob!r}",
                    hint=hint,
                    option=option,
                )
        repeated = [g for k, g in enumerate(globs) if g in globs[:k]]
        if repeated:
            raise UsageError(
                f"{opt(option)}: group {name!r} holds the glob {repeated[0]!r} twice",
                hint="a glob given twice adds nothing: give each glob of a group once",
                option=option,
            )
        out[name] = globs
    return out or None


def group_by_globs(
    param_names: Sequence[str],
    groups: Mapping[str, Sequence[str]],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[Group]:
    """Return one Group per named group of `groups` (name -> globs, as `check_groups` returns),
    in the order given: the parameters whose dotted name matches any of its globs (fnmatch, as
    the parameter selection), in parameter order. A parameter may be in several groups.

    `aliases` gives the other names of a tied parameter: a glob matching any of them takes it.
    A glob matching none of `param_names` is a `UsageError` suggesting the closest globs.
    """
    aliases = aliases or {}
    names_of = [[name, *aliases.get(name, ())] for name in param_names]
    out = []
    for group, globs in groups.items():
        for glob in globs:
            if not any(fnmatch.fnmatchcase(a, glob) for names in names_of for a in names):
                every = [a for names in names_of for a in names]
                close = closest_patterns([glob], every)
                suggestion = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
                shown = ", ".join(param_names[:4]) + (", ..." if len(param_names) > 4 else "")
                module = module_path(param_names[0]) if param_names else ""
                example = f"; '{module}.*' takes every parameter under {module}" if module else ""
                raise UsageError(
                    f"group {group!r} ({opt('groups')}): the glob {glob!r} matched none of the "
                    f"{len(param_names)} selected parameters",
                    hint=f"{suggestion}parameter names are dotted, e.g. {shown}; a glob matches "
                    f"whole names{example}",
                    option="groups",
                )
        indices = tuple(
            b
            for b, names in enumerate(names_of)
            if any(fnmatch.fnmatchcase(a, glob) for a in names for glob in globs)
        )
        out.append(Group(name=group, indices=indices))
    return out


def groups_of(
    result: EngineResult,
    groups: GroupsArg,
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[Layer]:
    """Return the parameter groups of `result` (name -> globs on the dotted parameter names),
    each with its numel and Gramian G_group = sum over its blocks b of G_b: the Gramian of the
    per-loss gradients restricted to (concatenated over) the group's parameters."""
    checked = check_groups(groups) or {}
    found = group_by_globs(result.param_names, checked, aliases=aliases)
    return [_layer(result, group) for group in found]


def ungrouped(param_names: Sequence[str], groups: Sequence[Layer]) -> list[str]:
    """Return the parameters (of `param_names`, in order) that are in none of `groups`."""
    taken = {b for group in groups for b in group.indices}
    return [name for b, name in enumerate(param_names) if b not in taken]
