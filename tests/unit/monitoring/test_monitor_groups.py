"""Monitor(groups=...): each record carries each parameter group's Gramian, read back from the run
log; a log written without groups reads back as before (`Record.groups` is None)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _models import ROOT, TwoHeads
from torch import nn

import gradtool
import gradtool.monitoring.monitor
from gradtool import Monitor
from gradtool.errors import RunLogError, UsageError
from gradtool.results.runlog import Record, read_run

X = torch.linspace(-1, 1, 32).reshape(8, 4)
Y = X.sum(dim=1, keepdim=True)
GROUPS = {"heads": ["a.*", "b.*"], "weights": "*.weight"}


def make_model() -> TwoHeads:
    torch.manual_seed(0)
    return TwoHeads(nn.Linear(4, 8), nn.ReLU())


def task_losses(model: TwoHeads) -> dict[str, torch.Tensor]:
    a, b = model(X)
    return {"task_a": ((a - Y) ** 2).mean(), "task_b": ((b + Y) ** 2).mean()}


def test_records_carry_the_groups_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    model = make_model()
    with Monitor(path, every=2, groups=GROUPS) as monitor:
        for _ in range(4):
            monitor.step(model, task_losses(model))
    records = read_run(path).records
    assert [r.step for r in records] == [0, 2]
    for record in records:
        assert record.groups is not None
        assert [(g.name, g.numel) for g in record.groups] == [("heads", 18), ("weights", 48)]
    # what was read is what was written, and the live analysis agrees
    assert monitor.last is not None and records[-1].groups == monitor.last.groups
    report = gradtool.analyze(model, task_losses(model), groups=GROUPS)
    assert report.groups is not None
    for got, want in zip(records[-1].groups or [], report.groups, strict=True):
        torch.testing.assert_close(
            torch.tensor(got.gramian(), dtype=torch.float64),
            torch.tensor(want.dot, dtype=torch.float64),
            rtol=1e-12,
            atol=1e-15,
        )


def test_groups_are_recorded_without_the_layers(tmp_path: Path) -> None:
    model = make_model()
    with Monitor(
        tmp_path / "run.jsonl", every=1, layers=False, groups={"w": "*.weight"}
    ) as monitor:
        record = monitor.step(model, task_losses(model))
    assert record is not None and record.layers == []
    assert record.groups is not None and record.groups[0].name == "w"


def test_without_groups_no_key_is_written(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    model = make_model()
    with Monitor(path, every=1) as monitor:
        monitor.step(model, task_losses(model))
    line = json.loads(path.read_text().splitlines()[-1])
    assert "groups" not in line
    assert read_run(path).records[0].groups is None


def test_a_log_written_before_groups_reads_back() -> None:
    run = read_run(ROOT / "docs" / "runs" / "multitask.jsonl")
    assert run.records and all(r.groups is None for r in run.records)


def test_a_record_without_groups_reads_and_a_malformed_one_is_named() -> None:
    body = {"step": 3, "losses": ["a", "b"], "loss_values": {"a": 1.0, "b": 2.0}}
    body["dot"] = [[1.0, 0.0], [0.0, 1.0]]
    assert Record.from_dict(body).groups is None
    with_groups = {**body, "groups": [{"name": "g", "numel": 2, "dot": body["dot"]}]}
    record = Record.from_dict(with_groups)
    assert record.groups is not None and record.groups[0].name == "g"
    assert Record.from_dict(record.to_dict()) == record
    bad = {**body, "groups": [{"name": "g", "numel": 2, "dot": [[1.0]]}]}
    with pytest.raises(RunLogError, match=r"'groups\[0\]\.dot' should be a 2 x 2 matrix"):
        Record.from_dict(bad)


def test_malformed_groups_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^groups: group 'x' has no glob"):
        Monitor(tmp_path / "run.jsonl", groups={"x": []})
    assert not (tmp_path / "run.jsonl").exists()


def test_a_glob_matching_nothing_fails_at_the_first_record_before_any_gradient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_gradients(*args: object, **kwargs: object) -> None:
        raise AssertionError("the groups should be checked before any gradient is taken")

    monkeypatch.setattr(gradtool.monitoring.monitor, "compute_gramians", no_gradients)
    model = make_model()
    monitor = Monitor(tmp_path / "run.jsonl", every=1, groups={"attn": "*.attn.*"})
    with pytest.raises(UsageError, match=r"the glob '\*\.attn\.\*' matched none"):
        monitor.step(model, task_losses(model))
    monitor.close()
    assert len((tmp_path / "run.jsonl").read_text().splitlines()) == 1  # the header alone
