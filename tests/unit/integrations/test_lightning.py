"""The Lightning callback: it records at the right optimizer steps, before the backward, leaves the
training bit-identical, and sends the metrics to the trainer's logger."""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _models import SAMPLES
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning")
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger

from gradtool.errors import UsageError
from gradtool.integrations.lightning import GradtoolCallback, record_losses
from gradtool.results.runlog import read_run

BATCH = 8


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    """Silence Lightning's info lines and its advice warnings (few workers, small batches)."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


class TwoTask(LightningModule):
    """A shared trunk with dropout (the forward draws random numbers) and two heads; its
    training_step returns the total and the per-loss mapping, and notes each micro-batch's
    loss values."""

    def __init__(self, manual: bool = False, record: bool = False) -> None:
        super().__init__()
        self.record = record
        self.trunk = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.1))
        self.a = nn.Linear(16, 1)
        self.b = nn.Linear(16, 1)
        self.automatic_optimization = not manual
        self.seen: list[tuple[int, int, dict[str, float]]] = []

    def losses(self, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        h = self.trunk(x)
        return {"a": ((self.a(h) - y) ** 2).mean(), "b": ((self.b(h) + y) ** 2).mean()}

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> Any:
        losses = self.losses(batch)
        self.seen.append(
            (self.trainer.global_step, batch_idx, {k: v.item() for k, v in losses.items()})
        )
        if self.automatic_optimization:
            return {"loss": sum(losses.values()), "losses": losses}
        opt = self.optimizers()
        if self.record:
            record_losses(self, losses)  # before the backward
        opt.zero_grad()
        self.manual_backward(sum(losses.values()))
        opt.step()
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.05)


def loader() -> DataLoader[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8 * BATCH, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=BATCH)


def fit(
    tmp_path: Path,
    callbacks: list[Any],
    *,
    steps: int = 6,
    accumulate: int = 1,
    manual: bool = False,
    logger: Any = False,
) -> TwoTask:
    torch.manual_seed(0)
    model = TwoTask(manual=manual, record=manual and bool(callbacks))
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=logger,
        accumulate_grad_batches=accumulate,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader())
    return model


def test_records_every_n_steps_bit_identical_and_logged(tmp_path: Path) -> None:
    plain = fit(tmp_path / "plain", [])
    callback = GradtoolCallback(tmp_path / "run.jsonl", every=2)
    logger = CSVLogger(tmp_path / "logs", name="", version="")
    model = fit(tmp_path / "cb", [callback], logger=logger)

    # Training bit-identical: every parameter, after 6 Adam steps with dropout.
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert "training_step" not in vars(model)  # unwrapped at the end
    assert callback.monitor is not None and callback.monitor.closed

    run = read_run(tmp_path / "run.jsonl")
    assert [r.step for r in run.records] == [0, 2, 4]
    # Each record holds the loss values the step computed (before the backward moved anything).
    seen = {step: values for step, _, values in model.seen}
    for record in run.records:
        assert record.losses == ["a", "b"]
        assert record.loss_values == pytest.approx(seen[record.step], rel=1e-6)

    with open(tmp_path / "logs" / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("grad_cos/a~b")]
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    for row, record in zip(rows, run.records, strict=True):
        assert float(row["grad_cos/a~b"]) == pytest.approx(record.cosine[0][1], rel=1e-6)
        assert float(row["loss/a"]) == pytest.approx(record.loss_values["a"], rel=1e-6)


def test_gradient_accumulation_records_the_first_micro_batch(tmp_path: Path) -> None:
    plain = fit(tmp_path / "plain", [], steps=3, accumulate=2)
    callback = GradtoolCallback(tmp_path / "run.jsonl", every=2)
    model = fit(tmp_path / "cb", [callback], steps=3, accumulate=2)
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)
    run = read_run(tmp_path / "run.jsonl")
    assert [r.step for r in run.records] == [0, 2]
    # Optimizer step k is made of batches 2k and 2k + 1: the record is of batch 2k.
    by_batch = {batch: values for _, batch, values in model.seen}
    assert run.records[0].loss_values == pytest.approx(by_batch[0], rel=1e-6)
    assert run.records[1].loss_values == pytest.approx(by_batch[4], rel=1e-6)
    assert by_batch[4] != pytest.approx(by_batch[5], rel=1e-6)


def test_manual_optimisation_records_through_record_losses(tmp_path: Path) -> None:
    plain = fit(tmp_path / "plain", [], steps=4, manual=True)
    with pytest.raises(UsageError, match="no GradtoolCallback"):
        record_losses(plain, plain.losses(next(iter(loader()))))
    callback = GradtoolCallback(tmp_path / "run.jsonl", every=2)
    model = fit(tmp_path / "cb", [callback], steps=4, manual=True)
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [r.step for r in read_run(tmp_path / "run.jsonl").records] == [0, 2]


def test_resuming_from_a_checkpoint_continues_the_run(tmp_path: Path) -> None:
    def trainer(steps: int, callback: GradtoolCallback) -> Trainer:
        return Trainer(
            max_steps=steps,
            callbacks=[callback],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )

    torch.manual_seed(0)
    first = GradtoolCallback(tmp_path / "run.jsonl", every=1)
    trainer(2, first).fit(TwoTask(), loader())
    (checkpoint,) = tmp_path.glob("**/*.ckpt")

    second = GradtoolCallback(tmp_path / "run.jsonl", every=1)
    trainer(4, second).fit(TwoTask(), loader(), ckpt_path=checkpoint)
    assert second.monitor is not None and second.monitor.run_id == first.state_dict()["run_id"]
    run = read_run(tmp_path / "run.jsonl")
    assert [r.step for r in run.records] == [0, 1, 2, 3]
    assert {r.run for r in run.records} == {second.monitor.run_id}


def test_a_step_without_losses_warns_once(tmp_path: Path) -> None:
    class TotalOnly(TwoTask):
        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> Any:
            return sum(self.losses(batch).values())

    callback = GradtoolCallback(tmp_path / "run.jsonl", every=1)
    torch.manual_seed(0)
    trainer = Trainer(
        max_steps=2,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    with pytest.warns(RuntimeWarning, match="returned no 'losses' mapping") as caught:
        trainer.fit(TotalOnly(), loader())
    assert len([w for w in caught if "no 'losses'" in str(w.message)]) == 1
    assert callback.monitor is not None and callback.monitor.records == 0


def test_the_lightning_sample_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lightning_multitask", SAMPLES / "lightning_multitask.py"
    )
    assert spec is not None and spec.loader is not None
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    sample.STEPS = 30
    sample.main(str(tmp_path / "run.jsonl"))
    out = capsys.readouterr().out
    assert "30 steps in" in out and "3 records" in out
    run = read_run(tmp_path / "run.jsonl")
    assert [r.step for r in run.records] == [0, 10, 20]
    assert run.records[0].losses == ["depth", "segmentation", "normals"]
    assert run.records[0].cosine is not None and run.records[0].cosine[0][2] < -0.4
