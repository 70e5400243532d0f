"""Figures (matplotlib, the optional `plot` extra): a run's timeline and a single snapshot.

The figures only draw what `gradtool.analysis` computed (a `TimelineReport`, a `Report`). They are
made with `matplotlib.figure.Figure` directly, never pyplot, so no global backend or figure state is
touched (safe inside a notebook or a training script) and no display is needed. Every figure
names its losses on the curves or axes themselves, so it reads without a legend hunt.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradtool.errors import MissingDependencyError
from gradtool.results.report import Report
from gradtool.results.timeline import TimelineReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
TIMELINE_FIGURES = ("cosine_pairs.png", "grad_norms.png", "mgda_weights.png", "layer_conflict.png")
SNAPSHOT_SUFFIXES = (".png", ".svg", ".pdf")
CONFLICT_CMAP = "RdBu"  # red for negative cosines (conflict), blue for agreement
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


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
    """Return the paths of the PNG figures written to `out_dir` (created if needed):

    cosine_pairs.png (cos of each pair over steps), grad_norms.png (|g_i| over steps, log
    scale), mgda_weights.png (stacked MGDA weights) and layer_conflict.png (layer x step heat
    map of the lowest pairwise cosine). A figure with nothing to show (one loss: no pair; no
    layer shared by two losses) is not written.
    """
    require_matplotlib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, draw in (
        ("cosine_pairs.png", _cosine_figure),
        ("grad_norms.png", _norms_figure),
        ("mgda_weights.png", _mgda_figure),
        ("layer_conflict.png", _layer_figure),
    ):
        fig = draw(report)
        if fig is None:
            continue
        path = out / name
        fig.savefig(path, dpi=DPI)
        written.append(path)
    return written


def plot_snapshot(report: Report, path: str | Path) -> Path:
    """Return `path` after writing one snapshot's figure there: the pairwise cosine matrix and
    the per-layer cosine (layers x pairs), both as annotated heat maps (red: conflict)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    path = Path(path)
    names = report.losses
    m = len(names)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    layers = [x for x in report.layers if any(x.cosine[i][j] is not None for i, j in pairs)]
    has_layers = bool(pairs and layers)
    width = 4.0 + 0.6 * m + (2.5 + 1.1 * len(pairs) if has_layers else 0.0)
    height = max(3.8, 1.8 + 0.45 * max(m, len(layers)))
    fig = Figure(figsize=(width, height), layout="constrained")
    ratios = [m, max(len(pairs), 1) * 1.4] if has_layers else [1]
    axes = fig.subplots(1, len(ratios), width_ratios=ratios, squeeze=False)[0]
    matrix = [[_nan(report.cosine[i][j]) for j in range(m)] for i in range(m)]
    image = _heatmap(axes[0], matrix, names, names)
    axes[0].set_title("Gradient cosine, whole model")
    if has_layers:
        cells = [[_nan(x.cosine[i][j]) for i, j in pairs] for x in layers]
        labels = [f"{names[i]} ~\n{names[j]}" for i, j in pairs]
        _heatmap(axes[1], cells, [x.name for x in layers], labels)
        axes[1].set_title("Gradient cosine per layer")
        axes[1].set_xlabel("pair of losses")
        axes[1].set_ylabel("module")
    fig.colorbar(image, ax=list(axes), label="cosine (red: the gradients conflict)", shrink=0.8)
    source = report.meta.get("gradfile")
    fig.suptitle(f"gradtool {report.command}" + (f": {source}" if source else ""), fontsize=11)
    fig.savefig(path, dpi=DPI)
    return path


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


def _cosine_figure(report: TimelineReport) -> Figure | None:
    if not report.pairs:
        return None
    steps = report.series.steps
    fig, ax = _figure(
        "Gradient cosine between losses over training",
        "training step",
        "cosine of the two gradients",
    )
    values = [v for p in report.pairs for v in report.series.cosine[p.key] if v is not None]
    low = min([*values, -0.1])
    high = max([*values, 0.1])
    pad = 0.08 * (high - low)
    low, high = max(low - pad, -1.05), min(high + pad, 1.05)
    ax.axhspan(low, 0.0, color="#d62728", alpha=0.07, lw=0)
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.text(0.01, 0.02, "conflict (cos < 0)", transform=ax.transAxes, color="#a01818", va="bottom")
    ends = []
    for k, p in enumerate(report.pairs):
        ys = [_nan(v) for v in report.series.cosine[p.key]]
        color = PALETTE[k % len(PALETTE)]
        ax.plot(steps, ys, color=color, lw=1.8, marker="o", ms=2.5)
        ends.append((_last(ys), f"{p.a} ~ {p.b}", color))
    ax.set_ylim(low, high)
    _label_ends(ax, steps, ends, span=high - low)
    return fig


def _norms_figure(report: TimelineReport) -> Figure:
    steps = report.series.steps
    fig, ax = _figure(
        "Gradient norm of each loss over training",
        "training step",
        "gradient norm |∇ loss| (log scale)",
    )
    ends = []
    for k, name in enumerate(report.losses):
        ys = [v if v is not None and v > 0 else math.nan for v in report.series.norms[name]]
        color = PALETTE[k % len(PALETTE)]
        ax.plot(steps, ys, color=color, lw=1.8, marker="o", ms=2.5)
        last = _last(ys)
        ends.append((math.log10(last) if last > 0 else math.nan, name, color))
    ax.set_yscale("log")
    low, high = (math.log10(v) for v in ax.get_ylim())
    _label_ends(ax, steps, ends, span=high - low, log=True)
    return fig


def _mgda_figure(report: TimelineReport) -> Figure | None:
    names = report.losses
    weights = report.series.mgda_weights
    if len(names) < 2 or not any(v is not None for w in weights.values() for v in w):
        return None
    steps = report.series.steps
    fig, ax = _figure(
        "MGDA min-norm weights over training (stacked)",
        "training step",
        "weight of each loss (they sum to 1)",
    )
    rows = [[v if v is not None else 0.0 for v in weights[name]] for name in names]
    colors = [PALETTE[k % len(PALETTE)] for k in range(len(names))]
    ax.stackplot(steps, rows, colors=colors, alpha=0.85, edgecolor="white", lw=0.5)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1)
    base = [0.0] * len(steps)
    unlabelled = []
    for name, row, color in zip(names, rows, colors, strict=True):
        thick = max(range(len(steps)), key=lambda t: row[t])
        if row[thick] >= 0.06:
            ax.text(
                steps[thick] if len(steps) > 1 else steps[0] + 0.5,
                base[thick] + row[thick] / 2,
                name,
                ha="center",
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
    fig = Figure(figsize=(8.5, 1.6 + 0.42 * len(rows)), layout="constrained")
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
    ax.set_yticks(np.arange(len(rows)) + 0.5, [name for name, _ in rows])
    ax.invert_yaxis()
    ax.set_title("Where the gradients conflict: lowest pairwise cosine per layer and step")
    ax.set_xlabel("training step")
    ax.set_ylabel("module")
    fig.colorbar(mesh, ax=ax, label="lowest pairwise cosine\n(red: conflict)")
    return fig


# -- helpers ------------------------------------------------------------------------------------


def _heatmap(
    ax: Axes, cells: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str]
) -> Any:
    import numpy as np
    from matplotlib import colormaps

    data = np.array(cells, dtype=float)
    cmap = colormaps[CONFLICT_CMAP].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-1.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=0 if len(cols) <= 3 else 30, ha="center")
    ax.set_yticks(range(len(rows)), rows)
    for (r, c), v in np.ndenumerate(data):
        label = "--" if not math.isfinite(v) else f"{v:+.2f}"
        color = "white" if math.isfinite(v) and abs(v) > 0.6 else "black"
        ax.text(c, r, label, ha="center", va="center", color=color, fontsize=9)
    return image


def _label_ends(
    ax: Axes,
    steps: Sequence[int],
    ends: list[tuple[float, str, str]],
    *,
    span: float,
    log: bool = False,
) -> None:
    """Write each curve's name just right of the plot, level with its last value, pushed apart
    so none overlap (`span`: the y range, in log10 units if `log`)."""
    x0, x1 = steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1
    ax.set_xlim(x0, x1)
    gap = 0.06 * span
    placed: list[float] = []
    for y, label, color in sorted((e for e in ends if math.isfinite(e[0])), key=lambda e: e[0]):
        y_text = max(y, placed[-1] + gap) if placed else y
        placed.append(y_text)
        ax.annotate(
            label,
            xy=(1.0, 10**y_text if log else y_text),
            xycoords=("axes fraction", "data"),
            xytext=(6, 0),
            textcoords="offset points",
            color=color,
            va="center",
            fontweight="bold",
            annotation_clip=False,
        )


def _edges(steps: Sequence[int]) -> list[float]:
    """Return cell edges around each step (midpoints between steps), for pcolormesh."""
    if len(steps) == 1:
        return [steps[0] - 0.5, steps[0] + 0.5]
    mids = [(a + b) / 2 for a, b in itertools.pairwise(steps)]
    return [steps[0] - (mids[0] - steps[0]), *mids, steps[-1] + (steps[-1] - mids[-1])]


def _last(ys: Sequence[float]) -> float:
    return next((y for y in reversed(ys) if math.isfinite(y)), math.nan)


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)
