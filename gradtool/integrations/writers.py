"""Writers: where a Monitor's records go besides the run log (TensorBoard, W&B, a CSV file).

    from torch.utils.tensorboard import SummaryWriter
    from gradtool.integrations.writers import TensorBoardWriter

    tb = SummaryWriter("runs/tb")
    monitor = gradtool.Monitor("runs/train.jsonl", every=100, writers=[TensorBoardWriter(tb)])

A writer is any callable taking a `Record`: the Monitor calls it on rank 0 with each recorded
step, and `Monitor.close()` calls its `close()`. A writer that raises warns once and training
goes on, as with a failing run-log write. The scalars are `flat_metrics(record)` (`loss/a`,
`grad_norm/a`, `grad_cos/a~b`, `mgda_weight/a`, `mgda_min_norm`); the images are the whole
model's cosine matrix and the per-layer cosine of each pair (layers x pairs), drawn with
matplotlib where it is installed (labelled), else as plain coloured cells (no labels).
"""

from __future__ import annotations

import csv
import importlib
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from gradtool.errors import UsageError, opt
from gradtool.monitoring import flat_metrics
from gradtool.results.base import Matrix
from gradtool.results.runlog import Record

# Image tags (TensorBoard) and keys (W&B), after the writer's prefix.
COSINE_IMAGE = "grad_cos_matrix"
LAYER_IMAGE = "layer_grad_cos"
COSINE_TABLE = "grad_cos_table"

_CELL = 24  # pixels per cell of a heatmap drawn without matplotlib
_NEGATIVE = np.array([33.0, 102.0, 172.0])  # cosine -1 (blue), as matplotlib's RdBu_r
_POSITIVE = np.array([178.0, 24.0, 43.0])  # cosine +1 (red)
_UNDEFINED = np.array([200.0, 200.0, 200.0])  # an undefined cosine (a zero gradient): grey


class TensorBoardWriter:
    """Writes each record to a TensorBoard `SummaryWriter`: the flat scalars, and (`images=True`)
    the cosine matrix and the per-layer cosines as images, all at the record's step.

    `summary_writer` is `torch.utils.tensorboard.SummaryWriter` (or tensorboardX's, or a Lightning
    `TensorBoardLogger.experiment`); the writer flushes it after each record and never closes it
    (it is yours). Images need Pillow (matplotlib brings it).
    """

    def __init__(self, summary_writer: Any, *, prefix: str = "", images: bool = True) -> None:
        _check_duck(summary_writer, "summary_writer", ("add_scalar", "add_image"))
        self.summary_writer = summary_writer
        self.prefix = prefix
        self.images = images

    def __call__(self, record: Record) -> None:
        """Write `record`'s scalars (and images) at step `record.step`."""
        writer = self.summary_writer
        for key, value in flat_metrics(record, self.prefix).items():
            writer.add_scalar(key, value, record.step)
        if self.images:
            for tag, image in record_images(record).items():
                writer.add_image(self.prefix + tag, image, record.step, dataformats="HWC")
        flush = getattr(writer, "flush", None)
        if callable(flush):
            flush()

    def close(self) -> None:
        """Flush the SummaryWriter (it stays open: its owner closes it)."""
        flush = getattr(self.summary_writer, "flush", None)
        if callable(flush):
            flush()


class WandbWriter:
    """Logs each record to a Weights & Biases run: the flat scalars, and (`images=True`, where
    `wandb` is importable) the cosine matrix as a `wandb.Image` and a `wandb.Table`.

    `run` is what `wandb.init()` returned (None: the current `wandb.run`, looked up at each
    record). `step=True` logs at `step=record.step`, which W&B accepts only if it is not behind
    the step of your own `wandb.log` calls: log your own metrics with the same step, or pass
    `step=False` to let W&B count and find the training step under `gradtool_step`.
    """

    def __init__(
        self, run: Any = None, *, prefix: str = "", images: bool = True, step: bool = True
    ) -> None:
        if run is not None:
            _check_duck(run, "run", ("log",))
        self.run = run
        self.prefix = prefix
        self.images = images
        self.step = step
        self._wandb: Any = None
        self._looked_up = False

    def __call__(self, record: Record) -> None:
        """Log `record` to the run (one `run.log` call)."""
        run = self.run if self.run is not None else self._module_attr("run")
        if run is None:
            raise UsageError(
                f"WandbWriter has no run: pass {opt('run')} (what wandb.init() returns) or call "
                "wandb.init() before training",
                option="run",
            )
        data: dict[str, Any] = dict(flat_metrics(record, self.prefix))
        wandb = self._module()
        if self.images and wandb is not None:
            cos = record_cosine(record)
            data[self.prefix + COSINE_IMAGE] = wandb.Image(
                heatmap(cos, record.losses, record.losses, f"gradient cosine, step {record.step}"),
                caption=f"step {record.step}",
            )
            data[self.prefix + COSINE_TABLE] = wandb.Table(
                columns=["loss", *record.losses],
                data=[[name, *row] for name, row in zip(record.losses, cos, strict=True)],
            )
        if self.step:
            run.log(data, step=record.step)
        else:
            run.log({**data, self.prefix + "gradtool_step": record.step})

    def _module(self) -> Any:
        """Return the `wandb` module, or None where it is not installed (imported once)."""
        if not self._looked_up:
            self._looked_up = True
            try:
                self._wandb = importlib.import_module("wandb")
            except ImportError:
                self._wandb = None
        return self._wandb

    def _module_attr(self, name: str) -> Any:
        wandb = self._module()
        if wandb is None:
            raise UsageError(
                f"WandbWriter needs {opt('run')} where wandb is not installed",
                hint="pip install 'gradtool[wandb]'",
                option="run",
            )
        return getattr(wandb, name, None)


class CSVWriter:
    """Appends each record to a CSV file: one row per record, columns `step`, `run` and the flat
    scalars (an undefined value is an empty cell), flushed after each row.

    The columns are fixed by the first record (every scalar its losses can have). Appending to
    a file that already has a header (a resumed run) keeps that header's columns: a scalar it
    has no column for is left out, with one warning. `append=False` starts the file afresh.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, prefix: str = "", append: bool = True
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UsageError(f"{opt('path')} should be a file; {self.path} is a directory")
        self.prefix = prefix
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._columns: list[str] | None = _csv_header(self.path) if append else None
        self._file: IO[str] | None = open(  # noqa: SIM115 (held open between records)
            self.path, "a" if append else "w", encoding="utf-8", newline=""
        )
        self._warned = False

    @property
    def columns(self) -> list[str] | None:
        """Return the file's columns (None before the first record of a new file)."""
        return None if self._columns is None else list(self._columns)

    def __call__(self, record: Record) -> None:
        """Append `record` as one row (the header first, in a new file)."""
        if self._file is None:
            raise ValueError(f"CSVWriter for {self.path} is closed")
        values = flat_metrics(record, self.prefix)
        out = csv.writer(self._file)
        if self._columns is None:
            keys = metric_keys(record, self.prefix)
            self._columns = ["step", "run", *keys, *(k for k in values if k not in keys)]
            out.writerow(self._columns)
        row: dict[str, Any] = {"step": record.step, "run": record.run or "", **values}
        left_out = [k for k in values if k not in self._columns]
        if left_out and not self._warned:
            self._warned = True
            warnings.warn(
                f"gradtool CSVWriter: {self.path} has no column for {', '.join(left_out)} "
                "(its header was written by another run); these values are left out",
                RuntimeWarning,
                stacklevel=2,
            )
        out.writerow([_cell(row.get(c)) for c in self._columns])
        self._file.flush()

    def close(self) -> None:
        """Close the file (once)."""
        fh, self._file = self._file, None
        if fh is not None:
            fh.close()


# -- what the writers draw -------------------------------------------------------------------


def metric_keys(record: Record, prefix: str = "") -> list[str]:
    """Return every flat scalar key a record of these losses can have, in `flat_metrics` order
    (`flat_metrics` leaves out undefined values; a CSV keeps a column for them)."""
    names = record.losses
    keys = [f"loss/{a}" for a in names] + [f"grad_norm/{a}" for a in names]
    keys += [f"grad_cos/{a}~{b}" for i, a in enumerate(names) for b in names[i + 1 :]]
    if record.pareto is not None:
        keys += [f"mgda_weight/{a}" for a in names] + ["mgda_min_norm"]
    return [prefix + k for k in keys]


def cosine_of(dot: Matrix) -> Matrix:
    """Return the cosine matrix G_ij / sqrt(G_ii G_jj) of a Gramian (None where a gradient is
    zero or an entry is undefined), clipped to [-1, 1]."""
    m = len(dot)
    out: Matrix = []
    for i in range(m):
        row: list[float | None] = []
        for j in range(m):
            gij, gii, gjj = dot[i][j], dot[i][i], dot[j][j]
            if gij is None or gii is None or gjj is None or not (gii > 0 and gjj > 0):
                row.append(None)
            else:
                row.append(max(-1.0, min(1.0, gij / math.sqrt(gii * gjj))))
        out.append(row)
    return out


def record_cosine(record: Record) -> Matrix:
    """Return the record's whole-model cosine matrix (stored, else computed from `dot`)."""
    return record.cosine if record.cosine is not None else cosine_of(record.dot)


def layer_cosines(record: Record) -> tuple[list[str], list[str], Matrix]:
    """Return (layer names, pair names `a~b`, layers x pairs cosines) of the record's layers."""
    names = record.losses
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    rows: Matrix = []
    for layer in record.layers:
        cos = cosine_of(layer.dot)
        rows.append([cos[i][j] for i, j in pairs])
    return (
        [layer.name for layer in record.layers],
        [f"{names[i]}~{names[j]}" for i, j in pairs],
        rows,
    )


def record_images(record: Record) -> dict[str, np.ndarray]:
    """Return the record's images (tag -> H x W x 3 uint8): the cosine matrix, and the layers x
    pairs cosines where the record has layers and at least two losses."""
    images = {
        COSINE_IMAGE: heatmap(
            record_cosine(record),
            record.losses,
            record.losses,
            f"gradient cosine, step {record.step}",
        )
    }
    layers, pairs, values = layer_cosines(record)
    if layers and pairs:
        images[LAYER_IMAGE] = heatmap(
            values, layers, pairs, f"per-layer gradient cosine, step {record.step}"
        )
    return images


def heatmap(
    values: Matrix,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    *,
    labelled: bool | None = None,
) -> np.ndarray:
    """Return `values` (in [-1, 1], None undefined) drawn as an RGB image (H x W x 3, uint8),
    blue for -1, white for 0, red for +1: a labelled matplotlib figure where matplotlib is
    installed (`labelled=None`) or asked for, else plain cells of 24 pixels, grey where
    undefined."""
    if labelled is None:
        labelled = _has_matplotlib()
    if labelled:
        return _figure(values, rows, columns, title)
    return _cells(values)


def _cells(values: Matrix) -> np.ndarray:
    """Return the heatmap as coloured square cells, without labels."""
    n_rows, n_cols = len(values), max((len(r) for r in values), default=0)
    image = np.full((max(n_rows, 1) * _CELL, max(n_cols, 1) * _CELL, 3), 255.0)
    for r, row in enumerate(values):
        for c, v in enumerate(row):
            colour = _colour(v)
            image[r * _CELL + 1 : (r + 1) * _CELL - 1, c * _CELL + 1 : (c + 1) * _CELL - 1] = colour
    return image.round().astype(np.uint8)


def _colour(v: float | None) -> np.ndarray:
    """Return the RGB colour of one cosine: white to blue below 0, white to red above."""
    if v is None or not math.isfinite(v):
        return _UNDEFINED
    t = min(abs(v), 1.0)
    end = _NEGATIVE if v < 0 else _POSITIVE
    return (1.0 - t) * 255.0 + t * end


def _figure(values: Matrix, rows: Sequence[str], columns: Sequence[str], title: str) -> np.ndarray:
    """Return the heatmap drawn by matplotlib (Agg, no pyplot state), with labels and values."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = np.ma.masked_invalid(
        np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    )
    width = min(2.5 + 0.9 * len(columns) + 0.06 * max((len(c) for c in rows), default=0), 16.0)
    height = min(1.6 + 0.45 * len(rows), 12.0)
    fig = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_facecolor("#c8c8c8")  # undefined cells
    im = ax.imshow(data, cmap="RdBu_r", vmin=-1.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    if len(rows) * len(columns) <= 64:
        for r, row in enumerate(values):
            for c, v in enumerate(row):
                dark = v is not None and abs(v) > 0.6
                text = "-" if v is None else f"{v:+.2f}"
                ax.text(c, r, text, ha="center", va="center", color="white" if dark else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # type: ignore[attr-defined]


def _has_matplotlib() -> bool:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return False
    return True


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _csv_header(path: Path) -> list[str] | None:
    """Return the columns of an existing CSV file's header, or None (no file, or empty)."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            first = next(csv.reader(fh), None)
    except FileNotFoundError:
        return None
    return list(first) if first else None


def _check_duck(obj: Any, name: str, methods: tuple[str, ...]) -> None:
    """Raise UsageError unless `obj` has each of `methods` (a writer given the wrong object)."""
    missing = [m for m in methods if not callable(getattr(obj, m, None))]
    if missing:
        raise UsageError(
            f"{opt(name)} should have {', '.join(m + '()' for m in missing)}; found "
            f"{type(obj).__name__}",
            option=name,
        )
