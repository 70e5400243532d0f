"""The Monitor's writers: what lands in TensorBoard's event files, the CSV file and a W&B run,
and the plumbing (`Monitor(writers=...)`: called with each record, failures never stop training)."""

from __future__ import annotations

import csv
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from gradtool import Monitor
from gradtool.errors import UsageError
from gradtool.integrations.writers import (
    COSINE_IMAGE,
    COSINE_TABLE,
    LAYER_IMAGE,
    CSVWriter,
    TensorBoardWriter,
    WandbWriter,
    heatmap,
    metric_keys,
)
from gradtool.monitoring import flat_metrics
from gradtool.results.runlog import Record, read_run

STEPS = 5
EVERY = 2


class FakeRun:
    """What WandbWriter needs of a wandb run: `log(data, step=...)`, noted."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, Any], int | None]] = []

    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        self.logged.append((data, step))


def train(monitor: Monitor, *, dead: bool = False) -> list[Record]:
    """Run STEPS steps of a small two-head model; with `dead`, loss `b`'s gradient is zero
    (its cosine undefined). Return the records the monitor made."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    for _ in range(STEPS):
        y = model(torch.randn(6, 3))
        b = 0.0 * y[:, 1].sum() if dead else y[:, 1].mean()
        losses = {"a": (y[:, 0] ** 2).mean(), "b": b}
        record = monitor.step(model, losses)
        if record is not None:
            records.append(record)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    monitor.close()
    return records


def test_tensorboard_gets_the_scalars_and_images(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(tmp_path / "tb")
    records = train(Monitor(tmp_path / "run.jsonl", EVERY, writers=[TensorBoardWriter(tb)]))
    tb.close()

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(flat_metrics(records[0]))
    assert set(events.Tags()["images"]) == {COSINE_IMAGE, LAYER_IMAGE}
    cosines = events.Scalars("grad_cos/a~b")
    assert [e.step for e in cosines] == [0, 2, 4]
    for event, record in zip(cosines, records, strict=True):
        assert event.value == pytest.approx(record.cosine[0][1], rel=1e-6)  # float32 in TB
    image = events.Images(COSINE_IMAGE)[-1]
    assert image.step == 4 and image.width > 50 and image.height > 50
    assert image.encoded_image_string.startswith(b"\x89PNG\r\n\x1a\n")


def test_csv_has_a_column_per_scalar_and_empty_cells_where_undefined(tmp_path: Path) -> None:
    path = tmp_path / "out" / "metrics.csv"
    writer = CSVWriter(path)
    records = train(Monitor(tmp_path / "run.jsonl", EVERY, writers=[writer]), dead=True)
    assert writer.columns == ["step", "run", *metric_keys(records[0])]
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    for row, record in zip(rows, records, strict=True):
        assert row["run"] == record.run
        assert row["grad_cos/a~b"] == ""  # b's gradient is zero: its cosine is undefined
        assert float(row["grad_norm/b"]) == 0.0
        for key, value in flat_metrics(record).items():
            assert float(row[key]) == pytest.approx(value, rel=1e-12)

    # A second writer on the same file (a resumed run) keeps its header and appends.
    again = CSVWriter(path)
    train(Monitor(tmp_path / "run.jsonl", EVERY, writers=[again]), dead=True)
    with open(path, newline="") as fh:
        lines = list(csv.reader(fh))
    assert lines[0] == writer.columns and len(lines) == 1 + 6
    assert lines.count(lines[0]) == 1


def test_wandb_run_gets_the_scalars_at_the_record_step(tmp_path: Path) -> None:
    run = FakeRun()
    writer = WandbWriter(run, images=False)
    records = train(Monitor(tmp_path / "run.jsonl", EVERY, writers=[writer]))
    assert run.logged == [(flat_metrics(r), r.step) for r in records]
    off = FakeRun()
    records = train(
        Monitor(
            tmp_path / "run2.jsonl", EVERY, writers=[WandbWriter(off, step=False, images=False)]
        )
    )
    assert [data["gradtool_step"] for data, _ in off.logged] == [0, 2, 4]
    assert all(step is None for _, step in off.logged)


def test_wandb_media_where_wandb_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: dict[str, list[Any]] = {"Image": [], "Table": []}

    class Image:
        def __init__(self, data: np.ndarray, caption: str = "") -> None:
            made["Image"].append((data, caption))

    class Table:
        def __init__(self, columns: list[str], data: list[list[Any]]) -> None:
            made["Table"].append((columns, data))

    fake = types.ModuleType("wandb")
    fake.Image = Image  # type: ignore[attr-defined]
    fake.Table = Table  # type: ignore[attr-defined]
    fake.run = FakeRun()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    records = train(Monitor(tmp_path / "run.jsonl", EVERY, writers=[WandbWriter(prefix="gt/")]))

    logged = fake.run.logged  # type: ignore[attr-defined]
    assert [step for _, step in logged] == [0, 2, 4]
    data, _ = logged[-1]
    assert isinstance(data["gt/" + COSINE_IMAGE], Image)
    assert isinstance(data["gt/" + COSINE_TABLE], Table)
    assert data["gt/grad_cos/a~b"] == flat_metrics(records[-1])["grad_cos/a~b"]
    columns, rows = made["Table"][-1]
    assert columns == ["loss", "a", "b"]
    assert rows[0][0] == "a" and rows[0][2] == pytest.approx(records[-1].cosine[0][1])
    image, caption = made["Image"][-1]
    assert image.dtype == np.uint8 and image.ndim == 3 and caption == "step 4"


def test_a_failing_writer_warns_once_and_training_goes_on(tmp_path: Path) -> None:
    calls: list[int] = []

    def broken(record: Record) -> None:
        calls.append(record.step)
        raise OSError("the logging server is gone")

    with pytest.warns(
        RuntimeWarning, match=r"the writer \S*broken failed.*server is gone"
    ) as caught:
        records = train(Monitor(tmp_path / "run.jsonl", EVERY, writers=[broken]))
    assert len([w for w in caught if "writer" in str(w.message)]) == 1
    assert calls == [0, 2, 4]  # tried again at each record
    assert [r.step for r in read_run(tmp_path / "run.jsonl").records] == [0, 2, 4]
    assert len(records) == 3


def test_close_closes_the_writers(tmp_path: Path) -> None:
    writer = CSVWriter(tmp_path / "m.csv")
    monitor = Monitor(tmp_path / "run.jsonl", EVERY, writers=[writer])
    monitor.close()
    with pytest.raises(ValueError, match="closed"):
        writer(Record(step=0, losses=["a"], loss_values={"a": 1.0}, dot=[[1.0]]))


@pytest.mark.parametrize(
    ("writers", "match"),
    [(CSVWriter.__call__, "one writer, not in a list"), ([42], "callables taking a Record")],
)
def test_bad_writers_are_refused(tmp_path: Path, writers: Any, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        Monitor(tmp_path / "run.jsonl", writers=writers)
    with pytest.raises(UsageError, match="summary_writer should have add_scalar"):
        TensorBoardWriter(object())


def test_heatmap_without_matplotlib_colours_each_cell() -> None:
    image = heatmap([[1.0, -0.5], [None, 0.0]], ["a", "b"], ["a", "b"], "t", labelled=False)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    centre = lambda r, c: image[r * 24 + 12, c * 24 + 12].tolist()  # noqa: E731
    assert centre(0, 0) == [178, 24, 43]  # +1: red
    assert centre(0, 1) == [144, 178, 214]  # -0.5: half way from white to blue
    assert centre(1, 0) == [200, 200, 200]  # undefined: grey
    assert centre(1, 1) == [255, 255, 255]  # 0: white


def test_heatmap_with_matplotlib_is_a_labelled_figure() -> None:
    pytest.importorskip("matplotlib")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layout warning
        image = heatmap([[1.0, -0.5], [-0.5, 1.0]], ["a", "b"], ["a", "b"], "t", labelled=True)
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert image.shape[0] > 100 and image.shape[1] > 100
    colours = {tuple(p) for p in image.reshape(-1, 3)[::7].tolist()}
    assert len(colours) > 20  # text, colour bar and cells, not a blank canvas
