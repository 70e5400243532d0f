"""Gramians of per-loss weight gradients from layer rows, without forming the gradients.

For rows X (N x s, shared by the losses) and D_i (N x r, loss i's gradient at the layer's
output), loss i's weight gradient is A_i = D_i^T X, and

    G_ij = <A_i, A_j> = tr(D_i^T (X X^T) D_j) = <D_i, K D_j>,   K = X X^T (N x N),

O(N^2 s + m N^2 r + m^2 N r) against O(m N r s + m^2 r s) for forming the A_i. Both forms are
exact; each is taken in float64 (the rows are converted), so the K form does not square the
cancellation of the row sums in float32. An embedding's gradient is the index_add of D over the
ids: S_i[v] = sum_{n: id_n = v} w_n D_i[n], and G_ij = sum_v <S_i[v], S_j[v]> over the ids used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# float64 products cost about this many float32 ones (CPU; the cost model's only constant).
FLOAT64_COST = 2.0
# Values of D converted to float64 at a time by `gramian` (2 MiB).
CHUNK = 1 << 18


@dataclass
class LayerRows:
    """One parameter's rows in one batch, all its uses concatenated.

    linear/conv: `shared` is X (N, s) and `grads` D (m, N, r), grad_i W = D_i^T X, or X^T D_i
    when `transposed` is False (x @ W); embedding: `shared` holds the N ids and `grads` the
    weighted D (m, N, d).
    """

    kind: str
    shared: torch.Tensor
    grads: torch.Tensor
    transposed: bool = True
    owned: bool = False  # `shared` is a copy of ours, not a view of a saved activation

    @property
    def count(self) -> int:
        return self.shared.shape[0]

    def numel_held(self) -> int:
        """Return the number of values these rows hold (the cost of keeping them)."""
        return self.shared.numel() + self.grads.numel()


def concat(parts: Sequence[LayerRows]) -> LayerRows:
    """Return the rows of several uses (or batches) of one parameter as one set of rows."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    dtype = first.grads.dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.grads.dtype)
    shared_dtype = first.shared.dtype
    for p in parts[1:]:
        shared_dtype = torch.promote_types(shared_dtype, p.shared.dtype)
    return LayerRows(
        first.kind,
        torch.cat([p.shared.to(shared_dtype) for p in parts]),
        torch.cat([p.grads.to(dtype) for p in parts], dim=1),
        first.transposed,
        owned=True,
    )


def ghost_cost(n: int, s: int, r: int, m: int) -> float:
    """Return the cost of the cheaper exact float64 form of G from N = n rows (see module)."""
    kernel = n * n * s + m * n * n * r + m * m * n * r
    dense = m * n * r * s + m * m * r * s
    return FLOAT64_COST * min(kernel, dense)


def gradient_cost(n: int, s: int, r: int, m: int) -> float:
    """Return the cost of forming the m weight gradients (autograd) and their float64 Gramian."""
    return m * n * r * s + FLOAT64_COST * m * m * r * s


def gramian(rows: LayerRows, scale: float = 1.0) -> torch.Tensor:
    """Return the (m, m) float64 Gramian of the weight gradients the rows define, times scale^2.

    D is converted to float64 a chunk of its r columns at a time (G is a sum over them in both
    forms), so the float64 temporaries stay near `CHUNK` values, not m N r.
    """
    if rows.kind == "embedding":
        return _embedding_gramian(rows) * (scale * scale)
    x = rows.shared.to(torch.float64)
    d = rows.grads
    m, n, r = d.shape
    s = x.shape[1]
    kernel = n * n * s + m * n * n * r + m * m * n * r <= m * n * r * s + m * m * r * s
    k = x @ x.T if kernel else None
    width = max(1, CHUNK // max(1, m * max(n, s if k is None else 1)))
    g = torch.zeros(m, m, dtype=torch.float64, device=d.device)
    for start in range(0, r, width):
        dc = d[:, :, start : start + width].to(torch.float64)  # (m, N, c)
        if k is not None:
            kd = torch.matmul(k, dc)
            g.addmm_(dc.reshape(m, -1), kd.reshape(m, -1).T)
        else:
            a = torch.matmul(dc.transpose(1, 2), x).reshape(m, -1)  # (m, c s)
            g.addmm_(a, a.T)
    g = (g + g.T) / 2  # the K form is symmetric only up to rounding
    return g * (scale * scale)


def _embedding_gramian(rows: LayerRows) -> torch.Tensor:
    ids, inverse = torch.unique(rows.shared, return_inverse=True)
    d = rows.grads.to(torch.float64)
    m = d.shape[0]
    sums = d.new_zeros((m, ids.numel(), d.shape[2]))
    sums.index_add_(1, inverse, d)
    flat = sums.reshape(m, -1)
    return flat @ flat.T


def materialise(rows: LayerRows, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Return the (m, numel) weight gradients the rows define, in `dtype` (for sums and counts)."""
    m = rows.grads.shape[0]
    if rows.kind == "embedding":
        out = torch.zeros((m, *shape), dtype=dtype, device=rows.grads.device)
        out.index_add_(1, rows.shared, rows.grads.to(dtype))
        return out.reshape(m, -1)
    x = rows.shared.to(dtype)
    d = rows.grads.to(dtype)
    a = torch.matmul(d.transpose(1, 2), x) if rows.transposed else torch.matmul(x.T, d)
    return a.reshape(m, -1)
