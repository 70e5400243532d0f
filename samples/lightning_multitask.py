"""Train the multitask sample with PyTorch Lightning and gradtool's GradtoolCallback: the per-loss
gradients of the three tasks are recorded every 10 optimizer steps, before each backward, into a
run log, and their flat metrics (`grad_cos/depth~normals`, ...) go to the trainer's CSV logger.

Run: `python samples/lightning_multitask.py [RUN.jsonl]` (default runs/lightning_multitask.jsonl),
then `gradtool report runs/lightning_multitask.jsonl`. Needs Lightning
(`pip install 'gradtool[lightning]'`); takes a few seconds on a CPU.
This is a training script, not a gradfile: `gradtool inspect samples/multitask.py` is the gradfile.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from gradtool.integrations.lightning import GradtoolCallback

# The model and data come from the sample gradfile next to this script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import multitask

STEPS = 200
EVERY = 10
BATCH = 64


class MultiTask(LightningModule):
    """The multitask sample's network; `training_step` returns the total and the three losses."""

    def __init__(self) -> None:
        super().__init__()
        self.net = multitask.model()

    def training_step(
        self, batch: tuple[torch.Tensor, ...], batch_idx: int
    ) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        x, depth, segmentation, normals = batch
        out = self.net(x)
        losses = {
            "depth": F.mse_loss(out["depth"], depth),
            "segmentation": F.cross_entropy(out["segmentation"], segmentation),
            "normals": F.mse_loss(out["normals"], normals),
        }
        # The only thing the callback asks of the module: the per-loss mapping under "losses".
        return {"loss": sum(losses.values()), "losses": losses}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main(path: str = "runs/lightning_multitask.jsonl") -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 on torch 2.13
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    torch.manual_seed(0)
    data = TensorDataset(multitask.X, multitask.DEPTH, multitask.SEGMENTATION, multitask.NORMALS)
    loader = DataLoader(
        data, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    run = Path(path)
    logger = CSVLogger(run.parent / "lightning_logs", name=run.stem, version=0)
    callback = GradtoolCallback(run, every=EVERY, append=False, metadata={"steps": STEPS})
    trainer = Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        callbacks=[callback],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    start = time.perf_counter()
    trainer.fit(MultiTask(), loader)
    elapsed = time.perf_counter() - start

    with open(Path(logger.log_dir) / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("grad_cos/depth~normals")]
    for row in rows[:: len(rows) // 4 or 1]:
        shown = ("grad_cos/depth~normals", "grad_cos/depth~segmentation", "mgda_weight/depth")
        print(
            f"step {int(row['step']):3d}  " + "  ".join(f"{k} {float(row[k]):+.2f}" for k in shown)
        )
    records = callback.monitor.records if callback.monitor is not None else 0
    print(f"{STEPS} steps in {elapsed:.1f} s, {records} records -> {run}")
    print(f"metrics in {Path(logger.log_dir) / 'metrics.csv'} ({len(rows)} rows)")
    print(f"next: gradtool report {run}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
