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

from gradtool.analysis.layers import check_groups
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
    """Return `groups` as {name: (glob, ...)} after checking its form (None when no group), as
    parameter groups are checked; whether each glob matches a loss is `group_losses`'s check."""
    return check_groups(groups, option="loss_groups", subject="globs on the loss names", hint=_HINT)


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
