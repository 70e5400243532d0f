"""The `report` command's document: how the gradients of the losses relate over a training run.

A record's cosine is a conflict when it is below `-conflict_threshold`; the analysis stores that
decision as flags beside the raw cosines, and fractions count the records where the cosine is
defined.

Runs recorded under DDP (records with `world` ranks and a rank-local Gramian `local`) also get a
gradient-noise section (`noise`, null otherwise), estimated from the two batch sizes as in
McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", appendix A.1.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gradtool.results.base import Document

Series = list[float | None]


@dataclass
class PairTimeline:
    """One pair of losses over the records: its whole-model cosine, and when it conflicted."""

    a: str
    b: str
    cos_start: float | None
    cos_min: float | None
    cos_max: float | None
    cos_end: float | None
    step_min: int | None  # the step where cos_min was recorded
    defined_records: int  # records where the cosine is defined
    conflict_records: int  # of those, records with cos < -conflict_threshold
    conflict_fraction: float | None  # conflict_records / defined_records (None if none defined)
    first_conflict_step: int | None
    last_conflict_step: int | None
    trend: Series  # cos, downsampled to at most TREND_POINTS bin means
    # below -conflict_threshold: cos_start, cos_min, cos_max, cos_end, and each trend bin
    start_conflict: bool
    min_conflict: bool
    max_conflict: bool
    end_conflict: bool
    trend_conflict: list[bool]
    cos_mean: float | None = None  # the mean of the defined cosines over the records
    mean_conflict: bool = False  # cos_mean < -conflict_threshold

    @property
    def key(self) -> str:
        """Return the pair's name, 'a~b' (as in `flat_metrics`)."""
        return f"{self.a}~{self.b}"


@dataclass
class LossTimeline:
    """One loss over the records: its value and its gradient norm at the start and the end."""

    name: str
    value_start: float | None
    value_end: float | None
    norm_start: float | None
    norm_min: float | None
    norm_max: float | None
    norm_end: float | None
    norm_ratio: float | None  # norm_end / norm_start
    trend: Series  # gradient norm, downsampled


@dataclass
class WeightTimeline:
    """One loss's MGDA min-norm weight over the records."""

    name: str
    start: float | None
    mean: float | None
    end: float | None
    min: float | None
    max: float | None


@dataclass
class MgdaRow:
    """The MGDA result at one recorded step."""

    step: int
    weights: dict[str, float | None]
    min_norm: float | None
    stationary: bool


@dataclass
class LayerTimeline:
    """One layer over the records: how often some pair conflicts there (its lowest cosine is below
    -conflict_threshold)."""

    name: str
    numel: int
    records: int  # records holding this layer with a defined cosine
    conflict_records: int  # of those, records whose lowest pairwise cos < -conflict_threshold
    conflict_fraction: float | None  # conflict_records / records (None if no record)
    mean_lowest_cos: float | None
    mean_lowest_conflict: bool  # mean_lowest_cos < -conflict_threshold
    first_conflict_step: int | None
    worst_pair: str | None  # the pair with the lowest mean cosine here, 'a~b' (if it conflicts)
    worst_pair_indices: tuple[int, int] | None  # its (i, j) in `losses`
    worst_pair_mean_cos: float | None
    worst_pair_conflict: bool  # worst_pair_mean_cos < -conflict_threshold
    worst_pair_fraction: float | None  # its records with cos < -conflict_threshold / its records


@dataclass
class NoiseRow:
    """One loss's gradient-noise estimate, from the records of a DDP run (R ranks, batch b each).

    signal S = (R G - L) / (R - 1) estimates |E g|^2, noise N = R (L - G) / (R - 1) estimates
    tr(Sigma) / b (the noise of one rank's batch gradient), where G is the global batch's Gramian
    and L the mean rank-local one; noise_scale = N / S = B_simple / b (the critical batch size in
    units of one rank's batch), noise_share = N / (N + S). Averages are means of the per-record S
    and N, then their ratio; a ratio is None where S <= 0 (the noise swamps the signal).
    """

    name: str
    records: int  # records where this loss's S and N are both defined
    signal: float | None  # mean S over those records
    noise: float | None  # mean N over those records
    noise_share: float | None  # noise / (noise + signal); None where signal <= 0
    noise_scale: float | None  # noise / signal (x one rank's batch); None where signal <= 0
    signal_end: float | None  # S at the last record with a rank-local Gramian
    noise_end: float | None
    noise_scale_end: float | None


@dataclass
class NoiseTimeline:
    """The gradient-noise section of a DDP run: `world` ranks (the last such record's), the
    `records` that hold a rank-local Gramian (the last at `last_step`), one row per loss."""

    world: int
    records: int
    last_step: int
    rows: list[NoiseRow]


@dataclass
class TimelineSeries:
    """Per-record values, one entry per step, for plots and machine readers."""

    steps: list[int]
    loss_values: dict[str, Series]
    norms: dict[str, Series]
    cosine: dict[str, Series]  # keyed 'a~b'
    mgda_weights: dict[str, Series]
    mgda_min_norm: Series
    layer_names: list[str]
    layer_lowest_cos: list[Series]  # layers x steps: the lowest pairwise cosine in the layer


@dataclass
class SmoothedSeries:
    """The per-record series smoothed by an exponential moving average over the records:
    s_0 = x_0, s_t = alpha x_t + (1 - alpha) s_{t-1}, so x_{t-k} weighs alpha (1 - alpha)^k and
    the weight halves every `half_life` = ln 2 / -ln(1 - alpha) records. An undefined value
    stays undefined (None) and leaves the average as it was."""

    alpha: float
    half_life: float
    norms: dict[str, Series]
    cosine: dict[str, Series]  # keyed 'a~b'
    mgda_weights: dict[str, Series]


@dataclass
class LossGroupTimeline:
    """The loss groups over the records: each group A's summed gradient g_A = sum_{i in A} g_i,
    from each record's Gramian G as G_AB = sum_{i in A, j in B} G_ij. `pairs` and `trends` are
    shaped like the losses' (a trend's value is the sum of the members' values); the series are
    per record, `*_ema` their smoothed versions (None without an EMA)."""

    names: list[str]
    members: dict[str, list[str]]
    ungrouped: list[str]  # losses in no group
    pairs: list[PairTimeline]
    trends: list[LossTimeline]
    loss_values: dict[str, Series]
    norms: dict[str, Series]
    cosine: dict[str, Series]  # keyed 'A~B'
    norms_ema: dict[str, Series] | None = None
    cosine_ema: dict[str, Series] | None = None


@dataclass
class TimelineReport(Document):
    """What `gradtool report RUN.jsonl` found: tables over time, the series, a verdict."""

    source: str
    losses: list[str]
    num_records: int
    first_step: int
    last_step: int
    conflict_threshold: float  # a cosine below -conflict_threshold is a conflict
    pairs: list[PairTimeline]
    loss_trends: list[LossTimeline]
    mgda: list[WeightTimeline]
    mgda_rows: list[MgdaRow]
    mgda_stationary_fraction: float | None
    mgda_first_stationary_step: int | None
    layers: list[LayerTimeline]
    series: TimelineSeries
    verdict: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    noise: NoiseTimeline | None = None  # only for runs recorded under DDP (records with `local`)
    # The pairs most often in conflict over the run (then of lowest mean cosine), at most `top`.
    top_pairs: list[PairTimeline] = field(default_factory=list)
    # The loss groups asked for (name -> globs on the loss names); absent when none was asked.
    loss_groups: LossGroupTimeline | None = None
    # With an EMA (alpha): `pairs`, `loss_trends`, `mgda`, `mgda_rows` weights, `top_pairs` and
    # the loss groups' tables are of the smoothed series; `series` stays raw, `series_ema` holds
    # the smoothed ones. The layers are always of the raw records.
    ema: float | None = None
    series_ema: SmoothedSeries | None = None

    _fixed: ClassVar[dict[str, Any]] = {"command": "report"}
    _optional: ClassVar[tuple[str, ...]] = ("loss_groups", "series_ema")

    def csv_columns(self) -> dict[str, Series]:
        """Return the per-record series as CSV columns, name -> one value per record (None where
        undefined), named as `flat_metrics` names a record's scalars: `loss/<a>`,
        `grad_norm/<a>`, `grad_cos/<a>~<b>`, `mgda_weight/<a>`, `mgda_min_norm`; with loss
        groups `group_loss/<A>`, `group_norm/<A>`, `group_cos/<A>~<B>`; with an EMA the
        smoothed series again under `ema/` (`ema/grad_cos/<a>~<b>`, ...); last, per layer, the
        lowest pairwise cosine there, `lowest_cos/<module>`."""
        series = self.series
        cols: dict[str, Series] = {}

        def add(prefix: str, columns: Mapping[str, Series] | None) -> None:
            for key, values in (columns or {}).items():
                cols[f"{prefix}/{key}"] = values

        add("loss", series.loss_values)
        add("grad_norm", series.norms)
        add("grad_cos", series.cosine)
        add("mgda_weight", series.mgda_weights)
        cols["mgda_min_norm"] = series.mgda_min_norm
        groups = self.loss_groups
        if groups is not None:
            add("group_loss", groups.loss_values)
            add("group_norm", groups.norms)
            add("group_cos", groups.cosine)
        smooth = self.series_ema
        if smooth is not None:
            add("ema/grad_norm", smooth.norms)
            add("ema/grad_cos", smooth.cosine)
            add("ema/mgda_weight", smooth.mgda_weights)
            if groups is not None:
                add("ema/group_norm", groups.norms_ema)
                add("ema/group_cos", groups.cosine_ema)
        for name, values in zip(series.layer_names, series.layer_lowest_cos, strict=True):
            cols[f"lowest_cos/{name}"] = values
        return cols

    def to_csv(self) -> str:
        """Return the per-record series as CSV text (RFC 4180 quoting, '\\n' line ends): a
        header row, `step` then the `csv_columns`, and one row per record; a float is written
        in its shortest exact form (`repr`), an undefined value as an empty cell."""
        cols = self.csv_columns()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["step", *cols])
        for t, step in enumerate(self.series.steps):
            writer.writerow([step, *(_cell(values[t]) for values in cols.values())])
        return out.getvalue()


def _cell(value: float | None) -> str:
    """Return a CSV cell: the float's shortest exact form, '' where undefined or non-finite."""
    if value is None or not math.isfinite(value):
        return ""
    return repr(float(value))
