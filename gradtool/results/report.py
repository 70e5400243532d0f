"""The Report: plain data that the renderer shows and `--json` serialises (schema_version 1).

Nothing here computes gradients or statistics; `gradtool.analysis` fills it in.
Matrices are nested lists indexed like `losses`; undefined entries are None (JSON null).

Conflicts are decided by the analysis and stored as flags beside the raw numbers: a cosine is a
conflict when it is below `-conflict_threshold` (see `gradtool.analysis.report`), so the renderer
marks what the flags say and never compares a number itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from gradtool.results.base import Document, Matrix

Flags = list[list[bool]]  # m x m, True where the pair conflicts materially
Counts = list[list[int]]  # m x m


def conflict_line(tau: float) -> str:
    """Return the conflict line -tau as text: '-0.05', and '0' (not '-0') at tau = 0."""
    return f"{-tau:g}" if tau else "0"


def inert(name: str) -> str:
    """Return a user-provided name (a loss, parameter, module or file name) as text that is safe to
    print and cannot pass for another name.

    A plain name (non-empty, every character printable, no leading or trailing whitespace, not
    starting with a quote) is returned as it is; any other is returned as its Python `repr`:
    quoted, with control and other non-printable characters escaped (`'a\\x1b[31m'`, `'a '`,
    `''`). So no escape sequence reaches a terminal, and `a` and `a ` read differently: a plain
    name never starts with a quote, a quoted one always does, and `repr` is one-to-one.
    """
    if name and name.isprintable() and name == name.strip() and name[0] not in "'\"":
        return name
    return repr(name)


def printable(text: str) -> str:
    """Return `text` with every non-printable character (ESC, CR, LF, TAB, ...) written as its
    escape (`\\x1b`, `\\r`, ...): a last guard for lines that may hold names, such as verdicts."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class GradientStats:
    """One loss's gradient over the selected parameters."""

    norm: float | None
    max_abs: float | None
    nonfinite: int


@dataclass
class LayerStats:
    """One module path's (or parameter group's) share: numel, per-loss norms and the pairwise
    cosine there."""

    name: str
    numel: int
    norms: dict[str, float | None]
    cosine: Matrix
    dot: Matrix
    parameters: list[str]
    reached: dict[str, bool] = field(default_factory=dict)  # loss -> reaches some parameter here
    lowest_pair: tuple[int, int] | None = None  # (i, j) of the lowest cosine here
    conflict: Flags = field(default_factory=list)  # cosine[i][j] < -conflict_threshold


@dataclass
class BatchStats:
    """Per-batch cosine statistics over the batches where each cosine is defined.

    `cosine_mean`, `cosine_std` (population) and `cosine_stderr` = std / sqrt(defined);
    `conflict_fraction[i][j]` = batches with cos < 0 / all batches (the raw share, kept as the
    JSON contract states it); `defined[i][j]` = batches where the cosine is defined;
    `below_threshold[i][j]` = batches with cos < -conflict_threshold; `conflict[i][j]`: the pair
    conflicts over batches, mean + stderr < -conflict_threshold (below it by more than the
    standard error).
    """

    cosine_mean: Matrix
    cosine_std: Matrix
    conflict_fraction: Matrix
    cosine_stderr: Matrix = field(default_factory=list)
    defined: Counts = field(default_factory=list)
    below_threshold: Counts = field(default_factory=list)
    conflict: Flags = field(default_factory=list)


@dataclass
class TopPair:
    """One of the most conflicting pairs of losses (lowest whole-model cosine first).

    `cosine`, `angle_deg`, `conflict` are the whole-model ones (`conflict`: cos < -threshold).
    Over several batches (else None): the mean per-batch cosine and its standard error, whether
    the pair conflicts over batches (mean + s.e. < -threshold), and the batches below the
    threshold of those where the cosine is defined, with their share.
    """

    a: str
    b: str
    i: int
    j: int
    cosine: float | None
    angle_deg: float | None
    conflict: bool
    batch_cos_mean: float | None = None
    batch_cos_stderr: float | None = None
    batch_conflict: bool | None = None
    batches_defined: int | None = None
    batches_below: int | None = None
    batch_conflict_fraction: float | None = None  # batches_below / batches_defined


@dataclass
class LossGroupStats:
    """The loss groups: for each group A (a set of losses), the summed gradient
    g_A = sum_{i in A} g_i; `dot` G_AB = sum_{i in A, j in B} G_ij (q x q, in `names` order),
    norms |g_A|, cosines G_AB / sqrt(G_AA G_BB), angles, conflict flags (cos < -threshold);
    `loss_values` the sum of the members' values (the loss whose gradient g_A is). `members`
    lists each group's losses; `ungrouped` the losses in no group."""

    names: list[str]
    members: dict[str, list[str]]
    ungrouped: list[str]
    loss_values: dict[str, float | None]
    norms: dict[str, float | None]
    dot: Matrix
    cosine: Matrix
    angle_deg: Matrix
    conflict: Flags


@dataclass
class ParetoReport:
    """The min-norm (MGDA) result: weights, the combined direction's effect, stationarity.

    `relative_min_norm` = |sum_i w_i g_i / s_i| / max_i |g_i / s_i| (of the normalised problem;
    None when every gradient is 0): Pareto-stationary when it is <= `tol`.
    """

    method: str
    normalize: str
    weights: dict[str, float]
    loss_weights: dict[str, float]
    min_norm: float
    directional_derivatives: dict[str, float]
    stationary: bool
    unique: bool
    kkt_residual: float
    support: list[str]
    relative_min_norm: float | None
    tol: float


@dataclass
class MethodResult:
    """One weighting method's combined direction d = sum_i loss_weights_i g_i, from G and w only.

    `weights` are on the (normalised) gradients g_i / s_i, `loss_weights` = w / s on the raw
    losses; `norm` = |d| = sqrt(lw^T G lw); `cosine[i]` = (G lw)_i / (|d| |g_i|) (None where
    undefined); `directional_derivatives[i]` = (G lw)_i = <g_i, d>; `decreases_all`: every
    (G lw)_i >= 0 up to round-off, i.e. a small step along -d raises no loss to first order.
    `residual` is the relative violation of the method's own defining conditions at the weights
    (its certificate); `certified` when it is at most 1e-8, else the weights and what follows from
    them ("lowers all", verdicts) are not to be taken as fact. `diagnostics` holds what a method
    reports about itself (PCGrad: `removed[loss]`, the fraction of that loss's gradient norm its
    projections removed, and `still_conflicts`, the losses the summed direction still raises).
    """

    method: str
    name: str
    normalize: str
    preference: dict[str, float] | None
    weights: dict[str, float]
    loss_weights: dict[str, float]
    norm: float
    cosine: dict[str, float | None]
    directional_derivatives: dict[str, float]
    decreases_all: bool | None  # None where the method did not certify: no conclusion
    residual: float | None = None
    certified: bool = True
    diagnostics: dict[str, Any] = field(default_factory=dict)
    zero_direction: bool = False  # d = 0 up to round-off: no step, nothing lowered or raised


@dataclass
class Report(Document):
    """Everything one gradtool command found, in the order of the JSON contract."""

    command: str
    losses: list[str]
    loss_values: dict[str, float]
    num_batches: int
    parameters: dict[str, int]
    gradients: dict[str, GradientStats]
    unused: dict[str, list[str]]
    unreached: list[str]
    dot: Matrix
    cosine: Matrix
    angle_deg: Matrix
    magnitude_similarity: Matrix
    conflict_threshold: float  # a cosine below -conflict_threshold is a conflict
    conflict: Flags  # cosine[i][j] < -conflict_threshold
    layers: list[LayerStats]
    depth: int | None = None
    # The parameter groups asked for (name -> globs on parameter names, across modules), each
    # shaped like a layer, and the selected parameters in none of them; both absent (None) when
    # no group was asked.
    groups: list[LayerStats] | None = None
    ungrouped: list[str] | None = None
    # The most conflicting pairs (lowest cosine first), at most `top` of them (default 10).
    top_pairs: list[TopPair] = field(default_factory=list)
    # The loss groups asked for (name -> globs on the loss names): the Gramian of each group's
    # summed gradient; absent (None) when no loss group was asked.
    loss_groups: LossGroupStats | None = None
    batch_stats: BatchStats | None = None
    pareto: ParetoReport | None = None
    methods: list[MethodResult] | None = None
    verdict: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    _optional: ClassVar[tuple[str, ...]] = (
        "groups",
        "ungrouped",
        "loss_groups",
        "batch_stats",
        "pareto",
        "methods",
    )
