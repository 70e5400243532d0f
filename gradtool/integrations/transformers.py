"""Hugging Face Transformers: record a `Trainer`'s per-loss gradients into a run log.

    from gradtool.integrations.transformers import GradtoolCallback, GradtoolTrainerMixin

    class PretrainingTrainer(GradtoolTrainerMixin, Trainer):
        def gradtool_losses(self, model, inputs, outputs):
            return {"mlm": ..., "nsp": ...}  # scalar tensors of this batch, with their graph

    trainer = PretrainingTrainer(
        model=model, args=args, train_dataset=data,
        callbacks=[GradtoolCallback("runs/bert.jsonl", every=50)],
    )

Why a mixin besides the callback: no `TrainerCallback` event falls between the forward and the
backward (`on_step_begin` comes before the forward, `on_pre_optimizer_step` after the backward),
and the Trainer knows one loss tensor, not its terms. The mixin's `compute_loss` runs the
Trainer's own (the loss is unchanged), asks `gradtool_losses(model, inputs, outputs)` for the
per-loss tensors (default: `outputs["losses"]`, for a model that returns them) and hands them to
the callback, on training forwards only (not in evaluation). The callback holds the Monitor: it
opens on `on_train_begin` and closes on `on_train_end`.

- Records at `state.global_step` 0, every, 2 every, ... (optimizer updates). With gradient
  accumulation, once per update: on its first micro-batch.
- Training is unchanged (the Monitor only calls `torch.autograd.grad(retain_graph=True)`; the
  extra loss terms `gradtool_losses` computes draw no random numbers).
- The flat metrics of each record go through `Trainer.log`, so every `report_to` integration
  (TensorBoard, W&B, ...) and `state.log_history` get them; `log=False` turns that off.
- DDP (torchrun / accelerate): every rank records at the same steps; the Monitor reduces across
  ranks and rank 0 writes.

Needs `transformers` (and `accelerate` for its Trainer): `pip install 'gradtool[transformers]'`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gradtool.errors import MissingDependencyError, UsageError, opt
from gradtool.monitoring import Monitor
from gradtool.results.runlog import Record

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - the extra is missing
    raise MissingDependencyError(
        "gradtool.integrations.transformers needs transformers, which is not installed",
        hint="pip install 'gradtool[transformers]'",
    ) from None


class GradtoolCallback(TrainerCallback):  # type: ignore[misc]
    """Holds the Monitor of a `Trainer` run; `GradtoolTrainerMixin` hands it the losses.

    Args:
        path: the run log (JSON lines), as `gradtool.Monitor(path)`.
        every: record at global steps 0, every, 2 every, ...
        log: send each record's flat metrics through `Trainer.log` (to `report_to` loggers).
        prefix: put before each metric's name (e.g. "gradtool/").
        **monitor_kwargs: passed to `gradtool.Monitor` (`depth`, `pareto`, `parameters`,
            `writers`, `metadata`, `run_id`, `resume`, ...).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        every: int = 100,
        *,
        log: bool = True,
        prefix: str = "",
        **monitor_kwargs: Any,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UsageError(f"{opt('every')} should be an integer >= 1; found {every!r}")
        self.path = Path(path)
        self.every = every
        self.log = log
        self.prefix = prefix
        self._monitor_kwargs = dict(monitor_kwargs)
        self.monitor: Monitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Open the Monitor (the process group, if any, exists by now)."""
        if self.monitor is None or self.monitor.closed:
            self.monitor = Monitor(self.path, self.every, **self._monitor_kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Close the run log."""
        if self.monitor is not None:
            self.monitor.close()

    def record(
        self, model: torch.nn.Module, losses: Mapping[str, torch.Tensor], step: int
    ) -> Record | None:
        """Record `losses` (before their backward) at `step`; return the Record, or None."""
        if self.monitor is None or self.monitor.closed:
            raise UsageError(
                "the GradtoolCallback records during trainer.train() only (its Monitor opens "
                "when training begins)",
                reason="not_training",
            )
        return self.monitor.step(model, losses, step=step)


class GradtoolTrainerMixin:
    """Put before `Trainer` in your subclass's bases: its `compute_loss` hands the per-loss
    tensors of each training forward (`gradtool_losses`) to the Trainer's `GradtoolCallback`."""

    _gradtool_warned: bool = False

    def gradtool_losses(
        self, model: torch.nn.Module, inputs: Mapping[str, Any], outputs: Any
    ) -> Mapping[str, torch.Tensor] | None:
        """Return this batch's per-loss scalar tensors (with their graph), or None to skip it.

        Override it; `inputs` is the batch as the model got it, `outputs` what the model
        returned. The default reads `outputs["losses"]`, for a model that returns its terms.
        """
        if isinstance(outputs, Mapping) and isinstance(outputs.get("losses"), Mapping):
            return outputs["losses"]
        return None

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Return the Trainer's own loss (and outputs); on a training forward, first record the
        per-loss tensors through the GradtoolCallback (before the Trainer's backward)."""
        seen = dict(inputs)  # the Trainer's compute_loss may pop `labels` from `inputs`
        # Trainers before transformers 4.46 have no num_items_in_batch (and never pass it).
        extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        loss, outputs = super().compute_loss(  # type: ignore[misc]
            model, inputs, return_outputs=True, **extra
        )
        if model.training and torch.is_grad_enabled():
            self._gradtool_record(model, seen, outputs)
        return (loss, outputs) if return_outputs else loss

    def _gradtool_record(
        self, model: torch.nn.Module, inputs: Mapping[str, Any], outputs: Any
    ) -> None:
        handler = getattr(self, "callback_handler", None)
        callbacks = [
            c for c in getattr(handler, "callbacks", ()) if isinstance(c, GradtoolCallback)
        ]
        if not callbacks:
            self._gradtool_warn(
                "the Trainer has no GradtoolCallback: nothing is recorded; pass "
                "callbacks=[GradtoolCallback(path, every=N)]"
            )
            return
        step: int = self.state.global_step  # type: ignore[attr-defined]
        if all(step % c.every for c in callbacks):
            return  # not a recorded step: the losses need not even be computed
        losses = self.gradtool_losses(model, inputs, outputs)
        if losses is None:
            self._gradtool_warn(
                "gradtool_losses returned None (the model's outputs hold no 'losses' mapping): "
                "this step is not recorded; override gradtool_losses to return the per-loss "
                "tensors"
            )
            return
        for callback in callbacks:
            record = callback.record(model, losses, step)
            if record is not None and callback.log:
                metrics: dict[str, float] = dict(
                    callback.monitor.flat_metrics(record, callback.prefix)  # type: ignore[union-attr]
                )
                self.log(metrics)  # type: ignore[attr-defined]

    def _gradtool_warn(self, message: str) -> None:
        if self._gradtool_warned:
            return
        self._gradtool_warned = True
        warnings.warn(f"gradtool GradtoolTrainerMixin: {message}", RuntimeWarning, stacklevel=4)
