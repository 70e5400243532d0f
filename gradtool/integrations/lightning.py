"""PyTorch Lightning: `GradtoolCallback` records a LightningModule's per-loss gradients during
`trainer.fit`, into a run log that `gradtool report` reads.

    class Model(L.LightningModule):
        def training_step(self, batch, batch_idx):
            losses = {"depth": ..., "segmentation": ...}
            return {"loss": sum(losses.values()), "losses": losses}

    trainer = L.Trainer(callbacks=[GradtoolCallback("runs/train.jsonl", every=50)])

How it hooks in (Lightning 2.x): on `on_fit_start` it opens a `gradtool.Monitor` (the process
group exists by then, and a checkpoint's run id has been restored) and wraps the module's
`training_step` (an instance attribute, removed again at the end) to keep the `losses` mapping it
returns. Lightning calls `on_before_backward(trainer, module, loss)` after `training_step` and
right before `loss.backward()`: there the graph is still whole, and the callback records the kept
losses at step `trainer.global_step` (the optimizer steps taken). `on_train_batch_end` would be
too late (after the backward), and `on_before_backward` alone sees only the total loss.

- Records at global steps 0, every, 2 every, ... With gradient accumulation, once per optimizer
  step: on its first micro-batch (the losses of that micro-batch, not divided by the number of
  micro-batches; cosines do not depend on the scale).
- Training is unchanged: the Monitor only calls `torch.autograd.grad(retain_graph=True)`.
- The flat metrics (`grad_cos/a~b`, ...) of each record go to every logger of the trainer
  (`logger.log_metrics(..., step=global_step)`: CSV, TensorBoard, W&B alike), on rank 0;
  `log=False` turns that off. (`self.log` would reach a logger only every `log_every_n_steps`.)
- Manual optimisation (`automatic_optimization = False`): call `record_losses(self, losses)` in
  `training_step` before `self.manual_backward(...)` (the step is `trainer.global_step`, which
  advances once per `optimizer.step()`; pass `step=` to count otherwise).
- DDP: every rank runs the callback; the Monitor reduces across ranks and rank 0 writes.
- A checkpoint keeps the run id (the callback's state): `fit(ckpt_path=...)` continues the run.

Needs `lightning` (preferred) or `pytorch_lightning`: `pip install 'gradtool[lightning]'`.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from gradtool.errors import MissingDependencyError, UsageError, opt
from gradtool.monitoring import Monitor
from gradtool.results.runlog import Record


def _lightning() -> ModuleType:
    """Return `lightning.pytorch`, else `pytorch_lightning`; raise when neither is installed."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError(
        "gradtool.integrations.lightning needs PyTorch Lightning, which is not installed",
        hint="pip install 'gradtool[lightning]'",
    )


pl = _lightning()


class GradtoolCallback(pl.Callback):  # type: ignore[misc,name-defined]
    """Records the per-loss gradient analysis every `every` optimizer steps of `trainer.fit`.

    Args:
        path: the run log (JSON lines), as `gradtool.Monitor(path)`.
        every: record at global steps 0, every, 2 every, ...
        key: the key of `training_step`'s returned dict that holds the per-loss mapping.
        log: send each record's flat metrics to the trainer's loggers.
        prefix: put before each metric's name (e.g. "gradtool/").
        **monitor_kwargs: passed to `gradtool.Monitor` (`depth`, `pareto`, `parameters`,
            `writers`, `metadata`, `run_id`, `resume`, ...).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        every: int = 100,
        *,
        key: str = "losses",
        log: bool = True,
        prefix: str = "",
        **monitor_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UsageError(f"{opt('every')} should be an integer >= 1; found {every!r}")
        self.path = Path(path)
        self.every = every
        self.key = key
        self.log = log
        self.prefix = prefix
        self._monitor_kwargs = dict(monitor_kwargs)
        self.monitor: Monitor | None = None
        self._restored_run: str | None = None
        self._pending: Mapping[str, torch.Tensor] | None = None
        self._wrapped: Any = None  # the module whose training_step is wrapped
        self._had_attribute = False
        self._original: Any = None
        self._explicit = False  # record_losses was called: a step without `losses` is fine
        self._warned_missing = False

    @property
    def state_key(self) -> str:
        """Return the key of this callback's state in a checkpoint (one per run log)."""
        return self._generate_state_key(path=str(self.path))

    # -- Lightning hooks --------------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Open the Monitor and wrap `pl_module.training_step` to keep its per-loss mapping."""
        kwargs = dict(self._monitor_kwargs)
        if self._restored_run is not None and "run_id" not in kwargs and not kwargs.get("resume"):
            kwargs["run_id"] = self._restored_run  # a checkpoint's run goes on
        self.monitor = Monitor(self.path, self.every, **kwargs)
        self._wrap(pl_module)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        """Record the kept losses (automatic optimisation) before Lightning's backward."""
        pending, self._pending = self._pending, None
        if not pl_module.automatic_optimization or self.monitor is None:
            return
        if pending is None:
            self._warn_missing()
            return
        self.record(trainer, pl_module, pending)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Close the run log and unwrap `training_step` when fit fails."""
        self._finish()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Close the run log and unwrap `training_step` at the end of fit."""
        self._finish()

    def state_dict(self) -> dict[str, Any]:
        """Return the state a checkpoint keeps: the run id, so a resumed fit continues the run."""
        run = self.monitor.run_id if self.monitor is not None else self._restored_run
        return {"run_id": run}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the run id of a checkpoint (used when fit starts)."""
        run = state_dict.get("run_id")
        self._restored_run = run if isinstance(run, str) else None

    # -- recording --------------------------------------------------------------------------

    def record(
        self,
        trainer: Any,
        pl_module: Any,
        losses: Mapping[str, torch.Tensor],
        *,
        step: int | None = None,
        explicit: bool = False,
    ) -> Record | None:
        """Record `losses` (before their backward) at `step` (default `trainer.global_step`);
        log the metrics to the trainer's loggers. Return the Record, or None when not recorded."""
        if self.monitor is None:
            raise UsageError(
                "the GradtoolCallback records during trainer.fit only (its Monitor opens when "
                "fit starts)",
                reason="not_fitting",
            )
        self._explicit = self._explicit or explicit
        index = trainer.global_step if step is None else step
        record = self.monitor.step(pl_module, losses, step=index)
        if record is not None and self.log and trainer.is_global_zero:
            metrics = self.monitor.flat_metrics(record, self.prefix)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=record.step)
        return record

    # -- internals --------------------------------------------------------------------------

    def _wrap(self, pl_module: Any) -> None:
        """Make `pl_module.training_step` keep the `key` mapping of what it returns (automatic
        optimisation), as an instance attribute that `_unwrap` removes."""
        self._unwrap()
        original = pl_module.training_step
        callback = self

        @functools.wraps(original)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            callback._pending = None
            if pl_module.automatic_optimization and isinstance(out, Mapping):
                losses = out.get(callback.key)
                if isinstance(losses, Mapping):
                    callback._pending = losses
            return out

        self._had_attribute = "training_step" in vars(pl_module)
        self._original = original
        self._wrapped = pl_module
        pl_module.training_step = training_step

    def _unwrap(self) -> None:
        module, self._wrapped = self._wrapped, None
        if module is None:
            return
        if self._had_attribute:
            module.training_step = self._original
        else:
            vars(module).pop("training_step", None)
        self._original = None

    def _finish(self) -> None:
        self._unwrap()
        self._pending = None
        if self.monitor is not None:
            self._restored_run = self.monitor.run_id
            self.monitor.close()

    def _warn_missing(self) -> None:
        if self._explicit or self._warned_missing:
            return
        self._warned_missing = True
        warnings.warn(
            f"gradtool GradtoolCallback: training_step returned no {self.key!r} mapping, so "
            f"this step is not recorded; return {{'loss': total, {self.key!r}: {{name: loss}}}} "
            "or call gradtool.integrations.lightning.record_losses(self, losses) before the "
            "backward",
            RuntimeWarning,
            stacklevel=2,
        )


def record_losses(
    pl_module: Any, losses: Mapping[str, torch.Tensor], *, step: int | None = None
) -> Record | None:
    """Record `losses` now through the trainer's GradtoolCallback(s): for manual optimisation
    (call it in `training_step` before `self.manual_backward`), or instead of returning them.

    Returns the Record (of the first GradtoolCallback), or None on a step that is not recorded.
    """
    trainer = pl_module.trainer
    callbacks = [c for c in trainer.callbacks if isinstance(c, GradtoolCallback)]
    if not callbacks:
        raise UsageError(
            "record_losses found no GradtoolCallback in this trainer's callbacks",
            hint="pass callbacks=[GradtoolCallback(path, every=N)] to the Trainer",
            reason="no_callback",
        )
    records = [c.record(trainer, pl_module, losses, step=step, explicit=True) for c in callbacks]
    return records[0]
