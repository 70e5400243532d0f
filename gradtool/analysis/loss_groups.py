"""Loss groups: named sets of losses (fnmatch globs on the loss names) whose gradients are summed,
g_A = sum_{i in A} g_i, so that 10 to 100 losses can be read as a few groups.

Everything follows from the losses' Gramian G: G_AB = <g_A, g_B> = sum_{i in A, j in B} G_ij,
|g_A| = sqrt(G_AA), cos(g_A, g_B) = G_AB / sqrt(G_AA G_BB). A loss may be in several groups; the
losses in no group are stated.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gradtool.errors import UsageError, opt
from gradtool.problem import closest_patterns

# What `loss_groups=` takes: a group name -> one glob, or several (a loss matching any is in it).
LossGroupsArg = Mapping[str, str | Iterable[str]]

_HINT = "e.g. {'depth': 'depth*', 'aux': ['aux_*', 'reg_*']}"


@dataclass(frozen=True)
class LossGroup:
    """A named set of losses: their indices in the report's loss order, and their names."""

    name: str
    indices: tuple[int, ...]
    losses: tuple[str, ...]


def check_loss_groups(groups: LossGroupsArg | None) -> dict[str, tuple[str, ...]] | None:
    """Return `groups` as {name: (glob, ...)} after checking its form (None when no group).

    Each name and each glob is a non-empty string; a glob given twice for one group is refused.
    Whether each glob matches a loss is checked against the loss names (`group_losses`).
    """
    if groups is None:
        return None
    if not isinstance(groups, Mapping):
        raise UsageError(
            f"{opt('loss_groups')} should map group names to globs on the loss names; found "
            f"{type(groups).__name__}",
            hint=_HINT,
            option="loss_groups",
        )
    out: dict[str, tuple[str, ...]] = {}
    for name, value in groups.items():
        if not isinstance(name, str) or not name:
            raise UsageError(
                f"{opt('loss_groups')}: a group name should be a non-empty string; found {name!r}",
                hint=_HINT,
                option="loss_groups",
            )
        globs = (value,) if isinstance(value, str) else value
        try:
            globs = tuple(globs)
        except TypeError:
            globs = (value,)  # not iterable: refused below as not a string
        if not globs:
            raise UsageError(
                f"{opt('loss_groups')}: group {name!r} has no glob",
                hint=_HINT,
                option="loss_groups",
            )
        for glob in globs:
            if not isinstance(glob, str) or not glob:
                raise UsageError(
                    f"{opt('loss_groups')}: group {name!r} should hold non-empty glob strings; "
                    f"found {glob!r}",
                    hint=_HINT,
                    option="loss_groups",
                )
        repeated = [g for k, g in enumerate(globs) if g in globs[:k]]
        if repeated:
            raise UsageError(
                f"{opt('loss_groups')}: group {name!r} holds the glob {repeated[0]!r} twice",
                hint="a glob given twice adds nothing: give each glob of a group once",
                option="loss_groups",
            )
        out[name] = globs
    return out or None


def group_losses(loss_names: Sequence[str], groups: Mapping[str, Sequence[str]]) -> list[LossGroup]:
    """Return one LossGroup per named group of `groups` (name -> globs, as `check_loss_groups`
    returns), in the order given: the losses whose name matches any of its globs (fnmatch,
    case-sensitive), in loss order. A glob matching no loss is a `UsageError` suggesting the
    closest globs that do."""
    out = []
    for group, globs in groups.items():
        for glob in globs:
            if not any(fnmatch.fnmatchcase(name, glob) for name in loss_names):
                close = closest_patterns([glob], list(loss_names))
                suggestion = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
                shown = ", ".join(repr(n) for n in loss_names[:4])
                shown += ", ..." if len(loss_names) > 4 else ""
                raise UsageError(
                    f"loss group {group!r} ({opt('loss_groups')}): the glob {glob!r} matched none "
                    f"of the {len(loss_names)} losses",
                    hint=f"{suggestion}a glob matches whole loss names, e.g. {shown}",
                    option="loss_groups",
                )
        indices = tuple(
            i
            for i, name in enumerate(loss_names)
            if any(fnmatch.fnmatchcase(name, glob) for glob in globs)
        )
        out.append(LossGroup(group, indices, tuple(loss_names[i] for i in indices)))
    return out


def losses_in_no_group(loss_names: Sequence[str], groups: Sequence[LossGroup]) -> list[str]:
    """Return the losses (of `loss_names`, in order) that are in none of `groups`."""
    taken = {i for group in groups for i in group.indices}
    return [name for i, name in enumerate(loss_names) if i not in taken]
