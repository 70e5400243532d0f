"""Gramian algebra: everything gradtool reports is a function of G = J J^T (float64).

Undefined values (the cosine of a zero gradient) are NaN here and `null` in the JSON.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def as_gramian(matrix: torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
    """Return `matrix` as a symmetric float64 CPU tensor, checking it is square."""
    g = torch.as_tensor(matrix, dtype=torch.float64).cpu()
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"a Gramian should be a square matrix; found shape {tuple(g.shape)}")
    return (g + g.T) / 2


def norms(g: torch.Tensor) -> torch.Tensor:
    """Return the gradient norms |g_i| = sqrt(G_ii) (negative round-off clamped to 0)."""
    return torch.sqrt(torch.clamp(torch.diagonal(g), min=0.0))


def cosine(g: torch.Tensor) -> torch.Tensor:
    """Return cos(g_i, g_j) = G_ij / sqrt(G_ii G_jj), NaN where either gradient is zero."""
    n = norms(g)
    denom = n[:, None] * n[None, :]
    cos = torch.where(denom > 0, g / torch.where(denom > 0, denom, 1.0), torch.nan)
    cos = torch.clamp(cos, -1.0, 1.0)
    idx = torch.arange(g.shape[0])
    diag = torch.where(n > 0, 1.0, torch.nan).to(cos.dtype)
    cos[idx, idx] = diag
    return cos


def lowest_pair(cos: torch.Tensor) -> tuple[int, int] | None:
    """Return (i, j), i < j, of the lowest defined off-diagonal cosine; None if there is none."""
    m = cos.shape[0]
    upper = torch.triu(torch.ones(m, m, dtype=torch.bool), diagonal=1) & ~torch.isnan(cos)
    if not bool(upper.any()):
        return None
    masked = torch.where(upper, cos, torch.inf)
    flat = int(torch.argmin(masked))
    return flat // m, flat % m


def angle_deg(cos: torch.Tensor) -> torch.Tensor:
    """Return the angle arccos(cos) in degrees (NaN stays NaN)."""
    return torch.rad2deg(torch.arccos(torch.clamp(cos, -1.0, 1.0)))


def magnitude_similarity(g: torch.Tensor) -> torch.Tensor:
    """Return 2 |g_i| |g_j| / (|g_i|^2 + |g_j|^2): 1 for equal norms, -> 0 when one dominates.

    NaN when both gradients are zero (0/0).
    """
    n = norms(g)
    num = 2 * n[:, None] * n[None, :]
    den = n[:, None] ** 2 + n[None, :] ** 2
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.nan)


def normalized(g: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Return D G D with D = diag(1 / scale): the Gramian of the gradients g_i / scale_i."""
    inv = 1.0 / scale.to(torch.float64)
    return g * inv[:, None] * inv[None, :]


def below(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """Return the boolean mask values < -threshold (NaN, an undefined value, is never below)."""
    return values < -threshold


def offdiagonal_below(cos: torch.Tensor, threshold: float) -> torch.Tensor:
    """Return the m x m mask cos_ij < -threshold off the diagonal (a gradient never conflicts with
    itself, and NaN entries never count)."""
    mask = below(cos, threshold)
    mask.fill_diagonal_(False)
    return mask


def batch_cosine_counts(
    batch_gramians: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (defined, below) over the batch axis, as m x m integer counts: the batches where
    cos_ij is defined, and those where cos_ij < -threshold."""
    cos = torch.stack([cosine(g) for g in batch_gramians])
    defined = (~torch.isnan(cos)).sum(dim=0)
    return defined, below(cos, threshold).sum(dim=0)


def batch_cosine_stats(
    batch_gramians: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (mean, std, conflict fraction) of per-batch cosines over the batch axis.

    std is the population standard deviation; conflict fraction = (batches with cos < 0) / B.
    Mean and std leave out batches where that cosine is undefined (NaN if none remain).
    """
    cos = torch.stack([cosine(g) for g in batch_gramians])
    defined = ~torch.isnan(cos)
    count = defined.sum(dim=0).to(torch.float64)
    safe = torch.where(defined, cos, 0.0)
    mean = torch.where(count > 0, safe.sum(dim=0) / count.clamp(min=1), torch.nan)
    var = torch.where(defined, (cos - mean) ** 2, 0.0).sum(dim=0) / count.clamp(min=1)
    std = torch.where(count > 0, torch.sqrt(var), torch.nan)
    conflict = torch.where(defined, (cos < 0).to(torch.float64), 0.0).sum(dim=0)
    fraction = conflict / cos.shape[0]  # of all batches: an undefined cosine is no conflict
    return mean, std, fraction


def lowest_pairs(cos: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """Return the (i, j), i < j, of the `k` lowest off-diagonal cosines, lowest first: defined
    ones by value (ties by (i, j)), then undefined (NaN) ones in (i, j) order."""
    m = cos.shape[0]
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    values = cos.tolist()

    def key(ij: tuple[int, int]) -> tuple[bool, float, int, int]:
        c = values[ij[0]][ij[1]]
        return (c != c, 0.0 if c != c else c, *ij)  # c != c: NaN

    return sorted(pairs, key=key)[: max(k, 0)]


def summed(g: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Return the q x q Gramian of the summed gradients g_A = sum_{i in A} g_i of the q groups
    (each a sequence of loss indices; a loss may be in several): G_AB = sum_{i in A, j in B} G_ij,
    i.e. S^T G S with S the m x q membership matrix. An undefined (NaN) entry G_ij spoils only
    the G_AB with i in A and j in B."""
    q = len(groups)
    out = torch.zeros(q, q, dtype=torch.float64)
    index = [torch.as_tensor(list(a), dtype=torch.long) for a in groups]
    for x in range(q):
        for y in range(x, q):
            value = g[index[x]][:, index[y]].to(torch.float64).sum()
            out[x, y] = out[y, x] = value
    return out
