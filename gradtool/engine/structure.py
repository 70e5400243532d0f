"""Which parameters the structured engine may take from layer inputs and output gradients.

Read off the losses' autograd graph, never assumed from module types: a parameter is *covered*
when every edge into its `AccumulateGrad` node comes, through transposes and casts only, from a
recognised product whose saved input is there:
- linear: `addmm` (weight as `mat2`) or `mm` (weight as the second factor), the nodes of
  `nn.Linear`, `F.linear` and `x @ W.T` alike; grad W = D^T X (or X^T D untransposed);
- conv: an ungrouped, untransposed `convolution` of 1 or 2 spatial dims; grad W = D^T unfold(X);
- embedding: `embedding` (not `embedding_bag`); grad W = index_add of D over the ids.
Every use of the parameter must be of one kind and orientation, so all its uses' rows concatenate
(a module called twice, weights tied across layers). A parameter with any other use (a weight
also used elementwise, a functional use through another op, a torch.compile'd region, a
`create_graph` gradient that reads it) is not covered, with the reason, and its gradient is
formed the plain way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

Kind = Literal["linear", "conv", "embedding"]

# The slot (index in next_functions) of the weight operand in a recognised product's node.
_LINEAR_SLOT = {"AddmmBackward0": 2, "MmBackward0": 1}
_SAVED_INPUT = {"AddmmBackward0": "_saved_mat1", "MmBackward0": "_saved_self"}
# Nodes between a product and the weight's AccumulateGrad that only move or cast it.
_TRANSPOSE = "TBackward0"
_CAST = "ToCopyBackward0"
# How far through transposes and casts a weight's use is followed.
_MAX_CHAIN = 4


@dataclass(frozen=True)
class Use:
    """One recognised use of a parameter: the gradient at `node`'s output is this use's D."""

    kind: Kind
    node: Any  # torch.autograd.graph.Node
    transposed: bool = False  # linear: the weight enters the product as W^T (nn.Linear)
    cast: bool = False  # the weight went through a dtype cast (autocast) on its way


@dataclass
class Structure:
    """Per parameter index: its recognised uses (covered) or why it is not covered."""

    uses: dict[int, list[Use]] = field(default_factory=dict)
    uncovered: dict[int, str] = field(default_factory=dict)
    # The layer class of each parameter with a recognised use (covered or not), for reports.
    kinds: dict[int, str] = field(default_factory=dict)


def find_structure(
    losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor], candidates: set[int]
) -> Structure:
    """Return the uses of each candidate parameter (indices into `params`) in the losses' graph.

    One walk over the union of the losses' graphs collects, for every node, the nodes that feed
    their gradient into it (its parents in the backward direction); a candidate's uses are then
    followed from its AccumulateGrad node up to the products that consume it.
    """
    index = {id(params[b]): b for b in candidates}
    parents: dict[Any, list[tuple[Any, int]]] = {}
    accumulators: dict[int, Any] = {}
    roots = [t.grad_fn for t in losses if t.grad_fn is not None]
    seen = set(roots)
    stack = list(roots)
    while stack:
        node = stack.pop()
        if type(node).__name__ == "AccumulateGrad":
            b = index.get(id(node.variable))
            if b is not None:
                accumulators[b] = node
            continue
        for slot, (child, _) in enumerate(node.next_functions):
            if child is None:
                continue
            parents.setdefault(child, []).append((node, slot))
            if child not in seen:
                seen.add(child)
                stack.append(child)
    out = Structure()
    for b, acc in accumulators.items():
        unfit = _unfit(params[b])
        if unfit is not None:
            out.uncovered[b] = unfit
            continue
        uses: list[Use] = []
        why = _collect(acc, parents, params[b].dim(), False, False, uses, 0)
        if why is None and not uses:
            why = "no recognised use"
        if why is None:
            why = _consistent(uses)
        if uses:
            out.kinds[b] = uses[0].kind
        if why is None:
            out.uses[b] = uses
        else:
            out.uncovered[b] = why
    return out


def _unfit(param: torch.Tensor) -> str | None:
    """Return why a parameter's gradient must be formed whatever its uses, or None."""
    if getattr(param, "_backward_hooks", None):
        return "a tensor hook on it changes its gradient"
    if param.dtype == torch.float16:
        return "float16: its own gradient can overflow where float64 rows do not"
    return None


def _collect(
    node: Any,
    parents: dict[Any, list[tuple[Any, int]]],
    dim: int,
    transposed: bool,
    cast: bool,
    uses: list[Use],
    depth: int,
) -> str | None:
    """Append the uses reached from `node` up; return why the parameter is not covered, if so
    (the first reason; every recognised use is still collected, for the layer class)."""
    why: str | None = None
    for parent, slot in parents.get(node, []):
        name = type(parent).__name__
        found: str | None = None
        if name in (_TRANSPOSE, _CAST) and depth < _MAX_CHAIN:
            found = _collect(
                parent,
                parents,
                dim,
                transposed ^ (name == _TRANSPOSE),
                cast or name == _CAST,
                uses,
                depth + 1,
            )
        elif name in _LINEAR_SLOT and slot == _LINEAR_SLOT[name] and dim == 2:
            uses.append(Use("linear", parent, transposed, cast))
        elif name == "EmbeddingBackward0" and slot == 0 and dim == 2 and not transposed:
            uses.append(Use("embedding", parent, False, cast))
        elif name == "ConvolutionBackward0" and slot == 1 and not transposed:
            found = _conv_unsupported(parent, dim)
            if found is None:
                uses.append(Use("conv", parent, False, cast))
        else:
            found = f"also used by {name}"
        why = why or found
    return why


def _conv_unsupported(node: Any, dim: int) -> str | None:
    if dim not in (3, 4):
        return f"a convolution of {dim - 2} spatial dims"
    if bool(node._saved_transposed):
        return "a transposed convolution"
    if int(node._saved_groups) != 1:
        return "a grouped convolution"
    return None


def _consistent(uses: list[Use]) -> str | None:
    kinds = {(u.kind, u.transposed) for u in uses}
    if len(kinds) > 1:
        return "used by layers of different kinds or orientations"
    return None


@dataclass
class Rows:
    """One use's rows: grad W = sum_n D[n] (x) X[n] over rows n, in the weight's layout.

    linear/conv: `matrix()` is X (N, s) and D (N, r) per loss, grad W = D^T X (reshaped to W);
    untransposed linear: grad W = X^T D. embedding: `shared` holds the N ids and D (N, d) per
    loss is multiplied by `scale` (1 / the id's count under scale_grad_by_freq). `select` keeps
    only some rows of D (an embedding's padding positions are dropped, as its backward does).
    A convolution's input is unfolded only when `matrix()` is first asked (k^2 times its size).
    """

    kind: Kind
    shared: torch.Tensor
    scale: float | torch.Tensor = 1.0  # multiplies D: addmm's alpha, or per-row id weights
    select: torch.Tensor | None = None  # indices of the rows of D that count
    conv: tuple[tuple[int, int], ...] | None = None  # kernel, dilation, padding, stride (2-d)
    one_d: bool = False

    def matrix(self) -> torch.Tensor:
        """Return the shared factor as (N, s) rows (unfolding a convolution's input)."""
        if self.conv is None:
            return self.shared
        kernel, dilation, padding, stride = self.conv
        x = self.shared.unsqueeze(-2) if self.one_d else self.shared
        unfolded = F.unfold(
            x, kernel_size=kernel, dilation=dilation, padding=padding, stride=stride
        )  # (B, C k, L)
        self.shared, self.conv = unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1]), None
        return self.shared


def _at(values: Sequence[int], k: int) -> int:
    """Return values[k], or values[0] where one value stands for every dimension."""
    return int(values[k] if len(values) > k else values[0])


def _input(node: Any, attribute: str) -> torch.Tensor:
    """Return a product's saved input, checked to be a dense real floating tensor."""
    x = getattr(node, attribute)
    if x.layout != torch.strided:
        raise ValueError(f"a {x.layout} input")
    if not x.is_floating_point():
        raise ValueError(f"a {x.dtype} input")
    return x


def rows_shape(use: Use) -> tuple[int, int]:
    """Return (N, s), the number of rows and the shared width of a linear or conv use, from the
    saved tensors' shapes (no unfolding)."""
    node = use.node
    if use.kind == "linear":
        x = _input(node, _SAVED_INPUT[type(node).__name__])
        return x.shape[0], x.shape[1]
    x = _input(node, "_saved_input")
    w = node._saved_weight
    spatial = w.dim() - 2
    batch = x.shape[0] if x.dim() == w.dim() else 1  # an unbatched input has no batch dim
    size = 1
    for k, length in enumerate(x.shape[-spatial:]):
        kernel = w.shape[2 + k]
        stride, pad, dil = (
            _at(v, k) for v in (node._saved_stride, node._saved_padding, node._saved_dilation)
        )
        size *= (length + 2 * pad - dil * (kernel - 1) - 1) // stride + 1
    return batch * size, w[0].numel()


def shared_rows(use: Use) -> Rows:
    """Return the per-loss-independent factor of `use`, read from its node's saved tensors
    (raise `ValueError` where it cannot be used: a sparse or complex input)."""
    node = use.node
    name = type(node).__name__
    if use.kind == "linear":
        x = _input(node, _SAVED_INPUT[name])
        alpha = float(node._saved_alpha) if name == "AddmmBackward0" else 1.0
        return Rows("linear", x.detach(), alpha)
    if use.kind == "conv":
        x = _input(node, "_saved_input").detach()
        w = node._saved_weight
        one_d = w.dim() == 3
        if x.dim() == w.dim() - 1:  # an unbatched input
            x = x.unsqueeze(0)
        kernel = (1, w.shape[-1]) if one_d else (w.shape[-2], w.shape[-1])

        def two(values: Sequence[int], pad: int) -> tuple[int, int]:
            return (pad, _at(values, 0)) if one_d else (_at(values, 0), _at(values, 1))

        spec = (
            kernel,
            two(node._saved_dilation, 1),
            two(node._saved_padding, 0),
            two(node._saved_stride, 1),
        )
        return Rows("conv", x, conv=spec, one_d=one_d)
    ids = node._saved_indices.reshape(-1)
    weights = torch.ones(ids.shape, dtype=torch.float64, device=ids.device)
    if bool(node._saved_scale_grad_by_freq):
        _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
        weights = weights / counts[inverse].to(torch.float64)
    padding = int(node._saved_padding_idx)
    select = None
    if padding >= 0:  # padding rows get no gradient: dropped, not multiplied by 0 (NaN * 0)
        select = (ids != padding).nonzero().reshape(-1)
        ids, weights = ids[select], weights[select]
    return Rows("embedding", ids.clone(), weights, select)


def loss_rows(use: Use, grad: torch.Tensor, m: int | None = None) -> torch.Tensor:
    """Return D for `use` as (N, r) rows from one loss's gradient at the use's output, or as
    (m, N, r) from the m losses' gradients stacked (`m` given)."""
    lead = () if m is None else (m,)
    k = len(lead)
    if use.kind == "conv":  # (B, C_out, *spatial) -> (B L, C_out)
        if grad.dim() - k == use.node._saved_weight.dim() - 1:  # an unbatched input
            grad = grad.unsqueeze(k)
        b, c = grad.shape[k], grad.shape[k + 1]
        return grad.reshape(*lead, b, c, -1).transpose(-1, -2).reshape(*lead, -1, c)
    return grad.reshape(*lead, -1, grad.shape[-1])
