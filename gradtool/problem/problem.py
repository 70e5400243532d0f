"""The `Problem`: a model, its `losses` callable, the batches, and the parameters to analyse.

It also checks what `losses` returns against the gradfile contract, so every later stage can
rely on a non-empty mapping of finite scalar tensors that require grad.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtool.errors import GradientError, GradtoolError, LossError, UsageError, UserCodeError

LossesFn = Callable[..., Mapping[str, torch.Tensor]]


@dataclass
class Problem:
    """What to differentiate: `losses(model[, batch])` w.r.t. the selected named parameters."""

    model: nn.Module
    losses: LossesFn
    parameters: list[tuple[str, nn.Parameter]]
    batches: Iterable[Any] | None = None
    max_batches: int | None = None
    device: torch.device | None = None
    source: Path | None = None
    _names: list[str] | None = field(default=None, init=False, repr=False)

    @classmethod
    def live(
        cls,
        model: nn.Module,
        losses: Mapping[str, torch.Tensor],
        parameters: Iterable[Any] | None = None,
    ) -> Problem:
        """Return the one-batch problem of loss tensors already computed (a training step).

        `parameters`: (name, parameter) pairs or bare parameters of `model` (default: every
        parameter that requires grad); one listed twice counts once.
        """
        named = (
            [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            if parameters is None
            else named_parameters(parameters, model, what="parameters", error=UsageError)
        )
        return cls(model=model, losses=lambda _model: losses, parameters=named)

    def iter_batches(self) -> Iterator[Any]:
        """Yield each batch (moved to `device`), or a single `None` when there are no batches."""
        if self.batches is None:
            yield None
            return
        i = 0
        try:
            iterator = iter(self.batches)
        except (Exception, SystemExit) as exc:
            if self.source is None:
                raise
            raise self._batches_error(exc, i) from exc
        while self.max_batches is None or i < self.max_batches:
            try:
                batch = next(iterator)
            except StopIteration:
                if i == 0:
                    raise no_batch_error() from None
                return
            except (Exception, SystemExit) as exc:
                if self.source is None:
                    raise
                raise self._batches_error(exc, i) from exc
            yield move_to_device(batch, self.device) if self.device is not None else batch
            i += 1

    def _batches_error(self, exc: Exception, index: int) -> UserCodeError:
        """Return the error to raise when iterating the user's `batches` raised `exc`."""
        assert self.source is not None
        return UserCodeError.raised(
            "iterating `batches`",
            exc,
            self.source,
            hint=f"the traceback above is from {self.source}",
            when=f" while fetching batch #{index + 1} (index {index})",
        )

    def call_losses(self, batch: Any, *, when: str = "") -> object:
        """Return what `losses(model[, batch])` returns, unchecked; an exception raised in the
        gradfile becomes a `UserCodeError` showing its frames (`when` says at which stage)."""
        args = (self.model,) if batch is None else (self.model, batch)
        try:
            return self.losses(*args)
        except (Exception, SystemExit) as exc:
            if self.source is None:
                raise
            call = "losses(model)" if batch is None else "losses(model, batch)"
            raise UserCodeError.raised(
                call, exc, self.source, hint=f"the traceback above is from {self.source}", when=when
            ) from exc

    def evaluate(self, batch: Any) -> dict[str, torch.Tensor]:
        """Return the validated losses for one batch (`batch` is None without batches)."""
        checked = validate_losses(self.call_losses(batch))
        names = list(checked)
        if self._names is None:
            self._names = names
        elif names != self._names:
            raise LossError(
                f"losses returned {names} for a later batch but {self._names} for the first",
                hint="return the same loss names, in the same order, for every batch",
            )
        return checked


def no_batch_error() -> GradientError:
    """Return the error for `batches` that yield nothing."""
    return GradientError(
        "`batches` produced no batch",
        hint="check that the iterable is not empty (and not an exhausted generator)",
        reason="no_batch",
    )


def validate_losses(raw: object) -> dict[str, torch.Tensor]:
    """Return `raw` as an ordered dict of scalar loss tensors, or raise a `LossError` naming the
    offending loss and the likely cause."""
    if not isinstance(raw, Mapping):
        raise LossError(
            f"losses should return a mapping of name -> scalar tensor; found {type(raw).__name__}",
            hint='return e.g. {"task_a": loss_a, "task_b": loss_b}',
        )
    if len(raw) == 0:
        raise LossError(
            "losses returned an empty mapping",
            hint="return at least one loss; gradtool compares two or more",
        )
    out: dict[str, torch.Tensor] = {}
    for name, value in raw.items():
        if not isinstance(name, str):
            raise LossError(f"loss names should be strings; found {name!r} ({type(name).__name__})")
        if not isinstance(value, torch.Tensor):
            raise LossError(
                f"loss '{name}' should be a scalar tensor; found {type(value).__name__}",
                hint="return the loss tensor itself, not loss.item() or a float",
            )
        if value.numel() != 1:
            raise LossError(
                f"loss '{name}' should be a scalar; found shape {tuple(value.shape)}",
                hint="reduce it, e.g. with .mean() or .sum()",
            )
        if not value.is_floating_point():
            hint = "take .abs() or .real of a complex loss" if value.is_complex() else None
            raise LossError(
                f"loss '{name}' should be a real floating-point tensor; found {value.dtype}", hint
            )
        if not value.requires_grad:
            raise LossError(
                f"loss '{name}' does not require grad: it has no autograd graph to differentiate",
                hint="it was likely detached: .detach(), .item() rebuilt with torch.tensor(...), "
                "a torch.no_grad() block, or computed from parameters with requires_grad=False",
            )
        number = float(value.detach().reshape(()))
        if not math.isfinite(number):
            raise LossError(
                f"loss '{name}' is not finite ({number})",
                hint="check its inputs and the model's initialisation; gradients of a non-finite "
                "loss are meaningless",
            )
        out[name] = value.reshape(())
    return out


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Return `obj` with every tensor inside (tuples, lists, dicts, namedtuples) on `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return type(obj)({k: move_to_device(v, device) for k, v in obj.items()})  # type: ignore[call-arg]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(move_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device) for v in obj)
    return obj


def named_parameters(
    items: Iterable[Any],
    model: nn.Module,
    *,
    what: str,
    error: type[GradtoolError],
) -> list[tuple[str, nn.Parameter]]:
    """Return `items` ((name, parameter) pairs or bare parameters of `model`) as named leaf
    parameters, each once (the first name wins); raise `error` naming `what` otherwise."""
    names_by_id = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    out: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for item in items:
        if isinstance(item, torch.Tensor):
            name = names_by_id.get(id(item))
            if name is None:
                raise error(
                    f"{what} holds a tensor that is not a parameter of the model",
                    hint="give (name, parameter) pairs, e.g. from model.named_parameters()",
                    option="parameters",
                )
            item = (name, item)
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise error(
                f"{what} should hold (name, Parameter) pairs; found {item!r:.60}",
                hint="e.g. [(n, p) for n, p in model.named_parameters() if ...]",
                option="parameters",
            )
        name, param = item
        if not isinstance(param, torch.Tensor) or not param.requires_grad:
            raise error(
                f"{what} holds '{name}', which is not a tensor requiring grad",
                option="parameters",
                parameter=name,
            )
        if not param.is_leaf:
            raise error(
                f"{what} holds '{name}', which is not a leaf tensor: it is computed from other "
                "tensors, so it has no gradient of its own to analyse",
                hint="give the model's parameters (leaf tensors), e.g. model.named_parameters()",
                option="parameters",
                parameter=name,
            )
        if id(param) not in seen:
            seen.add(id(param))
            out.append((name, param))
    return out
