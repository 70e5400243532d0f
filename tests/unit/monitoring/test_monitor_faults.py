"""The Monitor never breaks training: failing writes, a compiled model, several runs in one file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _models import TwoHeads
from torch import nn

from gradtool import Monitor
from gradtool.results.runlog import read_run

X = torch.linspace(-1, 1, 32).reshape(8, 4)
Y = X.sum(dim=1, keepdim=True)


def make_model() -> TwoHeads:
    return TwoHeads(nn.Linear(4, 8), nn.Tanh())


def task_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    a, b = model(X)
    return {"task_a": ((a - Y) ** 2).mean(), "task_b": ((b + Y) ** 2).mean()}


def train(monitor: Monitor | None, steps: int = 6, compile_backend: str | None = None) -> Any:
    """Return the parameters and `.grad` after `steps` SGD steps (seed 0), the monitor watching.

    With `compile_backend`, the model is `torch.compile`d and the first step is trained without
    the monitor (so the compiled backward is first compiled by a plain `.backward()`).
    """
    torch.manual_seed(0)
    model = make_model()
    run = torch.compile(model, backend=compile_backend) if compile_backend else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for k in range(steps):
        losses = task_losses(run)
        if monitor is not None and not (compile_backend and k == 0):
            monitor.step(run, losses, step=k)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], [
        p.grad.clone() for p in model.parameters()
    ]


def assert_same_training(a: Any, b: Any) -> None:
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        assert torch.equal(x, y)


def disk_full(data: bytes) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# -- a full disk, or any write error -----------------------------------------------------------


def test_a_full_disk_warns_once_counts_dropped_records_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.jsonl"
    monitor = Monitor(path, every=1)
    assert monitor._file is not None
    monkeypatch.setattr(monitor._file, "write", disk_full)
    with pytest.warns(RuntimeWarning, match="No space left on device") as caught:
        watched = train(monitor)
    assert len([w for w in caught if "cannot write" in str(w.message)]) == 1
    assert "training goes on" in str(caught[0].message)
    assert monitor.dropped == 6 and monitor.records == 6 and monitor.last is not None
    assert_same_training(watched, train(None))
    monitor.close()
    assert [json.loads(line)["kind"] for line in path.read_text().splitlines()] == ["gradtool.run"]


def test_a_transient_write_error_drops_only_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.jsonl"
    model = make_model()
    with Monitor(path, every=1) as monitor:
        assert monitor._file is not None
        monitor.step(model, task_losses(model), step=0)
        with monkeypatch.context() as patch, pytest.warns(RuntimeWarning, match="cannot write"):
            patch.setattr(monitor._file, "write", disk_full)
            monitor.step(model, task_losses(model), step=1)
            monitor.step(model, task_losses(model), step=2)
        monitor.step(model, task_losses(model), step=3)  # the disk has room again
    assert monitor.dropped == 2
    run = read_run(path)
    assert [r.step for r in run.records] == [0, 3] and run.warnings == []


def test_a_line_torn_by_a_failing_write_stays_one_skipped_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.jsonl"
    model = make_model()
    calls: list[int] = []

    def half_then_full(data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            with open(path, "ab") as fh:  # the first half reaches the file, then the disk is full
                fh.write(data[: len(data) // 2])
            return len(data) // 2
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with Monitor(path, every=1, fsync=False) as monitor:
        assert monitor._file is not None
        with monkeypatch.context() as patch, pytest.warns(RuntimeWarning, match="cannot write"):
            patch.setattr(monitor._file, "write", half_then_full)
            monitor.step(model, task_losses(model), step=0)
        monitor.step(model, task_losses(model), step=1)
    assert monitor.dropped == 1
    run = read_run(path)
    assert [r.step for r in run.records] == [1]
    (warning,) = run.warnings
    assert "line 2" in warning and "not valid JSON" in warning


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_dev_full_as_the_run_log_never_raises(tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="cannot write to /dev/full") as caught:
        monitor = Monitor("/dev/full", every=2)  # the header write fails already
        watched = train(monitor)
        monitor.close()
    assert len(caught) == 1
    assert monitor.dropped == 3 and monitor.records == 3 and monitor.closed
    assert_same_training(watched, train(None))


def test_a_failing_fsync_drops_the_record_but_a_file_that_cannot_sync_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model()

    def sync_error(code: int) -> Any:
        def sync() -> None:
            raise OSError(code, os.strerror(code))

        return sync

    with Monitor(tmp_path / "eio.jsonl", every=1) as monitor, pytest.warns(RuntimeWarning):
        assert monitor._file is not None
        monkeypatch.setattr(monitor._file, "sync", sync_error(errno.EIO))
        monitor.step(model, task_losses(model))
    assert monitor.dropped == 1  # written, but not known to have reached the disk
    with Monitor(tmp_path / "pipe.jsonl", every=1) as monitor, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitor._file is not None
        monkeypatch.setattr(monitor._file, "sync", sync_error(errno.EINVAL))
        monitor.step(model, task_losses(model), step=0)
        monitor.step(model, task_losses(model), step=1)
    assert monitor.dropped == 0
    assert [r.step for r in read_run(tmp_path / "pipe.jsonl").records] == [0, 1]


def test_a_closed_file_and_a_failing_close_do_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model()
    monitor = Monitor(tmp_path / "run.jsonl", every=1)
    assert monitor._file is not None

    def closed(data: bytes) -> int:
        raise ValueError("I/O operation on closed file")

    def close_error() -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(monitor._file, "write", closed)
    monkeypatch.setattr(monitor._file, "close", close_error)
    with pytest.warns(RuntimeWarning) as caught:
        assert monitor.step(model, task_losses(model)) is not None
        monitor.close()
    assert [str(w.message).split(" (")[0] for w in caught] == [
        f"gradtool.Monitor: cannot write to {tmp_path / 'run.jsonl'}",
        f"gradtool.Monitor: closing {tmp_path / 'run.jsonl'} failed",
    ]
    assert monitor.closed and monitor.dropped == 1
    monitor.close()  # a second close does nothing


def test_a_path_that_cannot_be_opened_raises_at_construction(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError):
        Monitor(tmp_path / "file" / "run.jsonl")


# -- torch.compile ------------------------------------------------------------------------------


@pytest.fixture
def fresh_compile() -> Any:
    """Forget compiled graphs before and after: whether a graph's backward keeps donated buffers
    is settled by its first backward, and dynamo reuses a graph across model instances."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_compile")
def test_a_compiled_model_is_recorded_like_its_uncompiled_twin(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = make_model()
    compiled = torch.compile(model, backend="aot_eager")
    losses = task_losses(compiled)
    with Monitor(tmp_path / "c.jsonl", every=1) as monitor:
        record = monitor.step(compiled, losses)  # the first backward of this graph: retained
    sum(losses.values()).backward()
    with Monitor(tmp_path / "e.jsonl", every=1) as monitor:
        twin = monitor.step(model, task_losses(model))
    assert record is not None and twin is not None
    assert [layer.name for layer in record.layers] == [layer.name for layer in twin.layers]
    for row, twin_row in zip(record.dot, twin.dot, strict=True):
        assert row == pytest.approx(twin_row, rel=1e-6)


@pytest.mark.usefixtures("fresh_compile")
def test_donated_buffers_skip_the_step_with_one_warning_and_training_goes_on(
    tmp_path: Path,
) -> None:
    monitor = Monitor(tmp_path / "run.jsonl", every=1)
    with pytest.warns(RuntimeWarning, match="donated") as caught:
        watched = train(monitor, compile_backend="aot_eager")
    monitor.close()
    (warning,) = caught
    assert "torch._functorch.config.donated_buffer = False" in str(warning.message)
    assert monitor.skipped == 5 and monitor.records == 0
    torch._dynamo.reset()
    assert_same_training(watched, train(None, compile_backend="aot_eager"))


@contextlib.contextmanager
def compile_settings(donated_buffer: bool, inplace_buffers: bool) -> Iterator[None]:
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    with (
        functorch_config.patch(donated_buffer=donated_buffer),
        inductor_config.patch(inplace_buffers=inplace_buffers),
    ):
        yield


@pytest.mark.usefixtures("fresh_compile")
def test_the_documented_compile_settings_record_every_step(tmp_path: Path) -> None:
    with compile_settings(donated_buffer=False, inplace_buffers=False):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            with Monitor(tmp_path / "run.jsonl", every=1) as monitor:
                watched = train(monitor, compile_backend="aot_eager")
        assert monitor.records == 5 and monitor.skipped == 0
        torch._dynamo.reset()
        assert_same_training(watched, train(None, compile_backend="aot_eager"))
    steps = [r.step for r in read_run(tmp_path / "run.jsonl").records]
    assert steps == [1, 2, 3, 4, 5]


@pytest.mark.usefixtures("fresh_compile")
def test_donated_buffers_off_with_inplace_buffers_on_is_refused_before_any_backward(
    tmp_path: Path,
) -> None:
    with compile_settings(donated_buffer=False, inplace_buffers=True):
        monitor = Monitor(tmp_path / "run.jsonl", every=1)
        with pytest.warns(RuntimeWarning, match="inplace_buffers = False") as caught:
            watched = train(monitor, compile_backend="aot_eager")
        monitor.close()
        assert len(caught) == 1 and monitor.skipped == 5
        torch._dynamo.reset()
        assert_same_training(watched, train(None, compile_backend="aot_eager"))


# -- several runs in one file -------------------------------------------------------------------


def test_each_monitor_is_a_run_and_the_reader_keeps_them_apart(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    model = make_model()
    with Monitor(path, every=1) as first:
        for k in range(3):
            first.step(model, task_losses(model), step=k)
    with Monitor(path, every=1) as second:  # a re-run appending to the old log
        second.step(model, task_losses(model), step=0)
    assert first.run_id != second.run_id
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["run"] for d in lines] == [first.run_id] * 4 + [second.run_id] * 2
    run = read_run(path)
    assert run.run_id == second.run_id and [r.step for r in run.records] == [0]
    assert any("2 runs" in w and first.run_id in w for w in run.warnings)
    earlier = read_run(path, run=first.run_id)
    assert [r.step for r in earlier.records] == [0, 1, 2] and earlier.sessions == 1


def test_a_run_continues_by_resume_or_by_its_id(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    model = make_model()
    with Monitor(path, every=1) as monitor:
        monitor.step(model, task_losses(model), step=0)
    with Monitor(path, every=1, resume=True) as resumed:
        resumed.step(model, task_losses(model), step=1)
    with Monitor(path, every=1, run_id=monitor.run_id) as again:  # the id kept in a checkpoint
        again.step(model, task_losses(model), step=2)
    assert resumed.run_id == again.run_id == monitor.run_id
    run = read_run(path)
    assert [r.step for r in run.records] == [0, 1, 2]
    assert run.sessions == 3 and run.warnings == []


def test_resume_on_a_new_file_starts_a_run(tmp_path: Path) -> None:
    with Monitor(tmp_path / "new.jsonl", every=1, resume=True) as monitor:
        monitor.step(make_model(), task_losses(make_model()))
    assert monitor.run_id is not None
    assert read_run(tmp_path / "new.jsonl").run_id == monitor.run_id


def test_two_live_monitors_on_one_file_are_told_apart_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    model = make_model()
    with Monitor(path, every=1) as a, Monitor(path, every=1) as b:
        for k in range(3):
            a.step(model, task_losses(model), step=k)
            b.step(model, {"x": task_losses(model)["task_a"]}, step=10 * k)
    run_a = read_run(path, run=a.run_id)
    run_b = read_run(path)
    assert [r.step for r in run_a.records] == [0, 1, 2] and run_a.losses == ["task_a", "task_b"]
    assert [r.step for r in run_b.records] == [0, 10, 20] and run_b.losses == ["x"]
    assert any("interleaved" in w for w in run_b.warnings)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"run_id": ""}, "run_id should be"),
        ({"run_id": "has space"}, "run_id should be"),
        ({"run_id": "#1"}, "run_id should be"),
        ({"run_id": "x" * 65}, "run_id should be"),
        ({"resume": True, "run_id": "abc"}, "give resume or run_id"),
        ({"resume": True, "append": False}, "give resume or append=False"),
        ({"resume": "yes"}, "resume should be"),
    ],
)
def test_run_arguments_are_validated(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Monitor(tmp_path / "run.jsonl", **kwargs)
    assert not (tmp_path / "run.jsonl").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_compile")
def test_inductor_donated_buffers_then_the_documented_settings(tmp_path: Path) -> None:
    """The same with the default backend (inductor: a C++ compile, about 15 s): refused with one
    warning by default, recorded right (against the uncompiled twin) with the settings, and the
    training is the training without the monitor either way."""
    monitor = Monitor(tmp_path / "a.jsonl", every=1)
    with pytest.warns(RuntimeWarning, match="donated_buffer = False"):
        watched = train(monitor, steps=3, compile_backend="inductor")
    monitor.close()
    assert monitor.skipped == 2
    torch._dynamo.reset()
    assert_same_training(watched, train(None, steps=3, compile_backend="inductor"))
    torch._dynamo.reset()
    with compile_settings(donated_buffer=False, inplace_buffers=False):
        with Monitor(tmp_path / "b.jsonl", every=1) as monitor:
            watched = train(monitor, steps=3, compile_backend="inductor")
        torch._dynamo.reset()
        assert_same_training(watched, train(None, steps=3, compile_backend="inductor"))
    first, *_ = read_run(tmp_path / "b.jsonl").records
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sum(task_losses(model).values()).backward()
    optimizer.step()  # the uncompiled twin, one step in
    with Monitor(tmp_path / "twin.jsonl", every=1) as twin_monitor:
        twin = twin_monitor.step(model, task_losses(model), step=1)
    assert twin is not None and first.step == 1
    for row, twin_row in zip(first.dot, twin.dot, strict=True):
        assert row == pytest.approx(twin_row, rel=1e-5)
