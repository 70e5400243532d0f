"""Figures (matplotlib, the optional `plot` extra): a run's timeline and a single snapshot.

The figures only draw what `gradtool.analysis` computed (a `TimelineReport`, a `Report`). They are
made with `matplotlib.figure.Figure` directly, never pyplot, so no global backend or figure state is
touched (safe inside a notebook or a training script) and no display is needed. Every figure
names its losses on the curves or axes themselves, so it reads without a legend hunt.

Many losses keep a figure readable: at most MAX_PAIRS pairs (the most conflicting), MAX_CURVES
named norm curves, MAX_BANDS weight bands, and no figure above MAX_WIDTH x MAX_HEIGHT inches.
matplotlib's own warnings are silenced while a figure is drawn; a figure that cannot be written
is a `UsageError` naming its path.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import statistics
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradtool.errors import MissingDependencyError, UsageError
from gradtool.results.report import Report
from gradtool.results.timeline import PairTimeline, TimelineReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
TIMELINE_FIGURES = ("cosine_pairs.png", "grad_norms.png", "mgda_weights.png", "layer_conflict.png")
SNAPSHOT_SUFFIXES = (".png", ".svg", ".pdf")
CONFLICT_CMAP = "RdBu"  # red for negative cosines (conflict), blue for agreement
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#393b79",
)
OTHER_COLOR = "0.62"  # the grey of grouped losses
RAW_ALPHA = 0.3  # the opacity of the raw records drawn behind their EMA
# Bounds that keep a figure of many losses readable and of a sensible size:
MAX_PAIRS = 10  # pairs drawn: with more, the MAX_PAIRS most conflicting (lowest cosine)
MAX_CURVES = 10  # losses named in the norms figure: with more, the largest; the rest grey
MAX_BANDS = 8  # MGDA bands: with more losses, the MAX_BANDS - 1 heaviest and one "other" band
MAX_WIDTH = 16.0  # inches, any figure
MAX_HEIGHT = 12.0  # inches, any figure


def require_matplotlib() -> None:
    """Return None if matplotlib can be imported; raise a `GradtoolError` with the install hint."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "plotting needs matplotlib, which is not installed",
            hint="pip install 'gradtool[plot]'",
        ) from None


def plot_timeline(report: TimelineReport, out_dir: str | Path) -> list[Path]:
    """Return the paths of the PNG figures written to `out_dir` (created if needed), those of
    `timeline_figures`. A folder or file that cannot be written is a `UsageError` naming it
    (reason "plot_failed"); figures written before it stay."""
    require_matplotlib()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(out, exc) from None
    written: list[Path] = []
    for name, fig in timeline_figures(report):
        path = out / name
        _save(fig, path)
        written.append(path)
    return written


def timeline_figures(report: TimelineReport) -> Iterator[tuple[str, Figure]]:
    """Yield (file name, figure) for each timeline figure with something to show, in the order
    of TIMELINE_FIGURES:

    cosine_pairs.png (cos of each pair over steps; with more than MAX_PAIRS pairs, the
    MAX_PAIRS whose lowest cosine is lowest), grad_norms.png (|g_i| over steps, log scale; with
    more than MAX_CURVES losses, the MAX_CURVES of largest norm are named, the rest drawn grey as
    one group), mgda_weights.png (stacked MGDA weights; with more than MAX_BANDS losses, the
    lightest are stacked as one "other" band) and layer_conflict.png (layer x step heat map of
    the lowest pairwise cosine). With an EMA (`report.series_ema`), the cosines, norms and
    weights drawn are the smoothed ones, the raw records faint behind the first two. A figure
    with nothing to show (one loss: no pair; no layer shared by two losses) is left out. No
    figure exceeds MAX_WIDTH x MAX_HEIGHT inches, and matplotlib's warnings (a glyph missing
    from the font, a tight layout) are silenced.
    """
    require_matplotlib()
    for name, draw in (
        ("cosine_pairs.png", _cosine_figure),
        ("grad_norms.png", _norms_figure),
        ("mgda_weights.png", _mgda_figure),
        ("layer_conflict.png", _layer_figure),
    ):
        with _quiet():
            fig = draw(report)
        if fig is not None:
            yield name, fig


def plot_snapshot(report: Report, path: str | Path) -> Path:
    """Return `path` after writing `snapshot_figure(report)` there; a path that cannot be
    written (or of a type matplotlib cannot write) is a `UsageError` naming it."""
    require_matplotlib()
    path = Path(path)
    _save(snapshot_figure(report), path)
    return path


def snapshot_figure(report: Report) -> Figure:
    """Return one snapshot's figure: the pairwise cosine matrix and the per-layer cosine (layers x
    pairs), both as annotated heat maps (red: conflict). With more than MAX_PAIRS pairs, the
    per-layer map shows the MAX_PAIRS of lowest whole-model cosine. The figure stays within
    MAX_WIDTH x MAX_HEIGHT inches: labels shrink with the cells, and cells too small to hold
    their value are left unlabelled."""
    require_matplotlib()
    with _quiet():
        return _snapshot_figure(report)


def _snapshot_figure(report: Report) -> Figure:
    from matplotlib.figure import Figure

    names = report.losses
    m = len(names)
    all_pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    ranked = sorted(all_pairs, key=lambda ij: _rank_low(report.cosine[ij[0]][ij[1]]))
    pairs = sorted(ranked[:MAX_PAIRS])
    layers = [x for x in report.layers if any(x.cosine[i][j] is not None for i, j in pairs)]
    has_layers = bool(pairs and layers)
    k = max(len(pairs), 1)
    width = min(MAX_WIDTH, 4.0 + 0.6 * m + (2.5 + 1.1 * k if has_layers else 0.0))
    height = min(MAX_HEIGHT, max(3.8, 1.8 + 0.45 * max(m, len(layers))))
    fig = Figure(figsize=(width, height), layout="constrained")
    ratios = [m, k * 1.4] if has_layers else [1]
    axes = fig.subplots(1, len(ratios), width_ratios=ratios, squeeze=False)[0]
    # The inches each cell gets: the figure less its labels and colour bar, shared by ratio.
    area_w, area_h = max(width - 3.5, 1.0), max(height - 1.8, 1.0)
    share = m / sum(ratios) if has_layers else 1.0
    matrix = [[_nan(report.cosine[i][j]) for j in range(m)] for i in range(m)]
    image = _heatmap(axes[0], matrix, names, names, (area_w * share / m, area_h / m))
    axes[0].set_title("Gradient cosine, whole model")
    if has_layers:
        cells = [[_nan(x.cosine[i][j]) for i, j in pairs] for x in layers]
        labels = [f"{names[i]} ~\n{names[j]}" for i, j in pairs]
        cell = (area_w * (1.0 - share) / k, area_h / len(layers))
        _heatmap(axes[1], cells, [x.name for x in layers], labels, cell)
        title = "Gradient cosine per layer"
        if len(pairs) < len(all_pairs):
            title += f"\n(the {len(pairs)} most conflicting of {len(all_pairs)} pairs)"
        axes[1].set_title(title)
        axes[1].set_xlabel("pair of losses")
        axes[1].set_ylabel("module")
    fig.colorbar(image, ax=list(axes), label="cosine (red: the gradients conflict)", shrink=0.8)
    source = report.meta.get("gradfile")
    fig.suptitle(f"gradtool {report.command}" + (f": {source}" if source else ""), fontsize=11)
    return fig


def _save(fig: Figure, path: Path) -> None:
    """Write `fig` to `path` (its type from the suffix); raise a `UsageError` naming `path`
    where that fails (a folder that vanished, no permission, a full disk, an unknown type)."""
    try:
        with _quiet():
            fig.savefig(path, dpi=DPI)
    except (OSError, ValueError) as exc:
        raise _cannot_write(path, exc) from None


def _cannot_write(path: Path, exc: OSError | ValueError) -> UsageError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UsageError(
        f"cannot write the figure {path}: {reason}",
        hint="write the figures where you can write files",
        reason="plot_failed",
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence matplotlib while the block runs: its warnings (a glyph missing from the font, a
    layout that cannot fit) and its logger (font look-ups), so stderr carries gradtool's lines
    only. Every figure is still drawn; only the noise goes."""
    logger = logging.getLogger("matplotlib")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


# -- timeline figures ---------------------------------------------------------------------------


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 4.6), layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def most_conflicting(pairs: Sequence[PairTimeline], k: int = MAX_PAIRS) -> list[PairTimeline]:
    """Return the `k` pairs whose lowest cosine over the run is lowest (undefined ones last),
    most conflicting first: the pairs the cosine figure draws when there are more than `k`."""
    return sorted(pairs, key=lambda p: _rank_low(p.cos_min))[:k]


def _cosine_figure(report: TimelineReport) -> Figure | None:
    if not report.pairs:
        return None
    pairs = most_conflicting(report.pairs) if len(report.pairs) > MAX_PAIRS else report.pairs
    title = "Gradient cosine between losses over training"
    if len(pairs) < len(report.pairs):
        title += f"\n(the {len(pairs)} most conflicting of {len(report.pairs)} pairs)"
    steps = report.series.steps
    smooth = report.series_ema
    shown = smooth.cosine if smooth is not None else report.series.cosine
    title += _ema_title(report)
    fig, ax = _figure(title, "training step", "cosine of the two gradients")
    values = [v for p in pairs for v in shown[p.key] if v is not None]
    low = min([*values, -0.1])
    high = max([*values, 0.1])
    pad = 0.08 * (high - low)
    low, high = max(low - pad, -1.05), min(high + pad, 1.05)
    line = -report.conflict_threshold
    ax.axhspan(low, line, color="#d62728", alpha=0.07, lw=0)
    ax.axhline(0.0, color="0.3", lw=0.8)
    if line < 0:
        ax.axhline(line, color="#a01818", lw=0.6, ls="--")
    label = f"conflict (cos < {line:g})"
    ax.text(0.01, 0.02, label, transform=ax.transAxes, color="#a01818", va="bottom")
    ends = []
    for k, p in enumerate(pairs):
        ys = [_nan(v) for v in shown[p.key]]
        color = PALETTE[k % len(PALETTE)]
        if smooth is not None:  # the raw records faint behind their average
            raw = [_nan(v) for v in report.series.cosine[p.key]]
            ax.plot(steps, raw, color=color, lw=0.8, alpha=RAW_ALPHA)
        ax.plot(steps, ys, color=color, lw=1.8, marker="o", ms=2.5, label=p.key)
        ends.append((_last(ys), f"{p.a} ~ {p.b}", color))
    ax.set_ylim(low, high)
    _label_ends(ax, steps, ends, low=low, high=high)
    return fig


def _norms_figure(report: TimelineReport) -> Figure:
    steps = report.series.steps
    smooth = report.series_ema

    def positive(values: Sequence[float | None]) -> list[float]:
        return [v if v is not None and v > 0 else math.nan for v in values]

    norms = {
        name: positive((smooth.norms if smooth is not None else report.series.norms)[name])
        for name in report.losses
    }
    named = list(report.losses)
    title = "Gradient norm of each loss over training"
    if len(named) > MAX_CURVES:
        largest = sorted(named, key=lambda n: -_finite_max(norms[n]))[:MAX_CURVES]
        named = [n for n in report.losses if n in largest]
        title += f"\n(the {MAX_CURVES} largest named; {len(report.losses) - MAX_CURVES} in grey)"
    title += _ema_title(report)
    fig, ax = _figure(title, "training step", "gradient norm |∇ loss| (log scale)")
    ends: list[tuple[float, str, str]] = []
    grey_ends: list[float] = []
    for name in report.losses:
        ys = norms[name]
        last = _last(ys)
        end = math.log10(last) if last > 0 else math.nan
        if name in named:
            color = PALETTE[named.index(name) % len(PALETTE)]
            if smooth is not None:  # the raw records faint behind their average
                raw = positive(report.series.norms[name])
                ax.plot(steps, raw, color=color, lw=0.8, alpha=RAW_ALPHA)
            ax.plot(steps, ys, color=color, lw=1.8, marker="o", ms=2.5, label=name)
            ends.append((end, name, color))
        else:
            ax.plot(steps, ys, color=OTHER_COLOR, lw=0.9, alpha=0.8, label=name)
            grey_ends.append(end)
    finite = [e for e in grey_ends if math.isfinite(e)]
    if finite:
        ends.append((statistics.median(finite), f"{len(grey_ends)} others", OTHER_COLOR))
    ax.set_yscale("log")
    low, high = (math.log10(v) for v in ax.get_ylim())
    _label_ends(ax, steps, ends, low=low, high=high, log=True)
    return fig


def _mgda_figure(report: TimelineReport) -> Figure | None:
    smooth = report.series_ema
    weights = smooth.mgda_weights if smooth is not None else report.series.mgda_weights
    if len(report.losses) < 2 or not any(v is not None for w in weights.values() for v in w):
        return None
    steps = report.series.steps
    full = {name: [v if v is not None else 0.0 for v in weights[name]] for name in report.losses}
    names = list(report.losses)
    rest: list[str] = []
    title = "MGDA min-norm weights over training (stacked)"
    if len(names) > MAX_BANDS:
        heaviest = sorted(names, key=lambda n: -sum(full[n]))[: MAX_BANDS - 1]
        rest = [n for n in names if n not in heaviest]
        names = [n for n in names if n in heaviest]
        title += f"\n(the {len(names)} heaviest; {len(rest)} more as one grey band)"
    title += _ema_title(report, faint=False)
    rows = [full[name] for name in names]
    colors = [PALETTE[k % len(PALETTE)] for k in range(len(names))]
    if rest:
        rows.append([sum(col) for col in zip(*(full[n] for n in rest), strict=True)])
        names.append(f"{len(rest)} others")
        colors.append(OTHER_COLOR)
    fig, ax = _figure(title, "training step", "weight of each loss (they sum to 1)")
    ax.stackplot(steps, rows, colors=colors, alpha=0.85, edgecolor="white", lw=0.5, labels=names)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1)
    base = [0.0] * len(steps)
    last = len(steps) - 1
    unlabelled = []
    for name, row, color in zip(names, rows, colors, strict=True):
        # its thickest step, the most central among (nearly) equal ones, so the name fits
        thick = max(range(len(steps)), key=lambda t: (round(row[t], 3), -abs(2 * t - last)))
        if row[thick] >= 0.06:
            ax.text(
                steps[thick] if len(steps) > 1 else steps[0] + 0.5,
                base[thick] + row[thick] / 2,
                name,
                ha="left" if thick == 0 < last else "right" if thick == last > 0 else "center",
                va="center",
                color="white",
                fontweight="bold",
                clip_on=True,
            )
        else:
            unlabelled.append((name, color))
        base = [b + r for b, r in zip(base, row, strict=True)]
    if unlabelled:  # bands too thin to hold their name
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color=c, label=n) for n, c in unlabelled],
            loc="upper right",
            title="thin bands",
            fontsize=8,
        )
    return fig


def _layer_figure(report: TimelineReport) -> Figure | None:
    series = report.series
    rows = [
        (name, values)
        for name, values in zip(series.layer_names, series.layer_lowest_cos, strict=True)
        if any(v is not None for v in values)
    ]
    if not rows:
        return None
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    steps = series.steps
    data = np.array([[_nan(v) for v in values] for _, values in rows], dtype=float)
    limit = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
    limit = min(1.0, max(0.1, math.ceil(limit * 10) / 10))
    height = min(MAX_HEIGHT, 1.6 + 0.42 * len(rows))
    fig = Figure(figsize=(8.5, height), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps[CONFLICT_CMAP].with_extremes(bad="0.85")
    mesh = ax.pcolormesh(
        _edges(steps),
        np.arange(len(rows) + 1),
        np.ma.masked_invalid(data),
        cmap=cmap,
        vmin=-limit,
        vmax=limit,
        shading="flat",
    )
    font = _label_font((height - 1.6) / len(rows))
    ax.set_yticks(np.arange(len(rows)) + 0.5, [name for name, _ in rows], fontsize=font)
    ax.invert_yaxis()
    ax.set_title("Where the gradients conflict: lowest pairwise cosine per layer and step")
    ax.set_xlabel("training step")
    ax.set_ylabel("module")
    fig.colorbar(mesh, ax=ax, label="lowest pairwise cosine\n(red: conflict)")
    return fig


# -- helpers ------------------------------------------------------------------------------------


def _ema_title(report: TimelineReport, *, faint: bool = True) -> str:
    """Return the title's line saying the curves are smoothed, and (`faint`) that the raw
    records are drawn faint behind them; '' without an EMA."""
    smooth = report.series_ema
    if smooth is None:
        return ""
    raw = "; raw records faint" if faint else ""
    life = f"half-life {smooth.half_life:.3g} records"
    return f"\n(EMA {smooth.alpha:g} over the records, {life}{raw})"


def _heatmap(
    ax: Axes,
    cells: Sequence[Sequence[float]],
    rows: Sequence[str],
    cols: Sequence[str],
    cell: tuple[float, float],
) -> Any:
    """Draw `cells` as a cosine heat map; `cell` is (width, height) of one cell in inches, which
    sets the tick labels' size and whether each cell can hold its value ("+0.00", 5 characters
    of about 0.6 em)."""
    import numpy as np
    from matplotlib import colormaps

    data = np.array(cells, dtype=float)
    cmap = colormaps[CONFLICT_CMAP].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-1.0, vmax=1.0, aspect="auto")
    cell_w, cell_h = cell
    ax.set_xticks(
        range(len(cols)),
        cols,
        rotation=0 if len(cols) <= 3 else 30,
        ha="center",
        fontsize=_label_font(cell_w if len(cols) <= 3 else cell_w * 2),
    )
    ax.set_yticks(range(len(rows)), rows, fontsize=_label_font(cell_h))
    value_font = min(9.0, cell_w * 72 / 3.2, cell_h * 72 * 0.6)
    if value_font < 5.0:
        return image  # too small to read: the colour says it
    for (r, c), v in np.ndenumerate(data):
        label = "--" if not math.isfinite(v) else f"{v:+.2f}"
        color = "white" if math.isfinite(v) and abs(v) > 0.6 else "black"
        ax.text(c, r, label, ha="center", va="center", color=color, fontsize=value_font)
    return image


def _label_font(inches: float) -> float:
    """Return the font size (points) of a label with `inches` of room across its line: about
    70% of the room, between 4 and 10 points."""
    return max(4.0, min(10.0, 0.7 * 72 * inches))


def _label_ends(
    ax: Axes,
    steps: Sequence[int],
    ends: list[tuple[float, str, str]],
    *,
    low: float,
    high: float,
    log: bool = False,
) -> None:
    """Write each curve's name just right of the plot, level with its last value, pushed apart
    so none overlap and none leave the y range [low, high] (in log10 units if `log`); the gap
    and the font shrink when many names share the range."""
    x0, x1 = steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1
    ax.set_xlim(x0, x1)
    placed = sorted((e for e in ends if math.isfinite(e[0])), key=lambda e: e[0])
    if not placed:
        return
    gap = min(0.06, 1.0 / len(placed)) * (high - low)
    ys = _spread([y for y, _, _ in placed], gap, low, high)
    font = 10.0 if len(placed) <= 8 else max(6.0, 10.0 * 8 / len(placed))
    for y_text, (_, label, color) in zip(ys, placed, strict=True):
        ax.annotate(
            label,
            xy=(1.0, 10**y_text if log else y_text),
            xycoords=("axes fraction", "data"),
            xytext=(6, 0),
            textcoords="offset points",
            color=color,
            va="center",
            fontweight="bold",
            fontsize=font,
            annotation_clip=False,
        )


def _spread(targets: Sequence[float], gap: float, low: float, high: float) -> list[float]:
    """Return positions for labels wanted at `targets` (ascending): neighbours at least `gap`
    apart, each run of labels that would overlap centred on its targets (least squares: the
    run starts at mean(t_k - k gap)), and kept within [low, high] where the run fits."""

    def fit(start: float, count: int) -> float:
        return max(low, min(start, high - (count - 1) * gap))

    runs: list[tuple[float, int, float]] = []  # (start, count, sum of t_k - k * gap)
    for t in targets:
        start, count, shifted = fit(t, 1), 1, t
        while runs:
            prev_start, prev_count, prev_shifted = runs[-1]
            if prev_start + prev_count * gap <= start + 1e-9 * gap:
                break
            runs.pop()
            shifted = prev_shifted + shifted - count * prev_count * gap
            count += prev_count
            start = fit(shifted / count, count)
        runs.append((start, count, shifted))
    return [start + k * gap for start, count, _ in runs for k in range(count)]


def _edges(steps: Sequence[int]) -> list[float]:
    """Return cell edges around each step (midpoints between steps), for pcolormesh."""
    if len(steps) == 1:
        return [steps[0] - 0.5, steps[0] + 0.5]
    mids = [(a + b) / 2 for a, b in itertools.pairwise(steps)]
    return [steps[0] - (mids[0] - steps[0]), *mids, steps[-1] + (steps[-1] - mids[-1])]


def _rank_low(v: float | None) -> tuple[bool, float]:
    """Sort key putting the lowest cosine first and undefined ones last."""
    return (v is None, 0.0 if v is None else float(v))


def _finite_max(ys: Sequence[float]) -> float:
    return max((y for y in ys if math.isfinite(y)), default=-math.inf)


def _last(ys: Sequence[float]) -> float:
    return next((y for y in reversed(ys) if math.isfinite(y)), math.nan)


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)
