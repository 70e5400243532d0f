"""The `Problem`: a model, its `losses` callable, the batches, and the parameters to analyse.

It also checks what `losses` returns against the gradfile contract, so every later stage can
rely on a non-empty mapping of finite scalar tensors that require grad.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtool.errors import (
    GradientError,
    GradtoolError,
    LossError,
    UsageError,
    UserCodeError,
    opt,
)

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
    notes: list[str] = field(default_factory=list)  # e.g. checkpoint keys the model does not use
    checkpoint: dict[str, object] | None = None  # what loading a checkpoint did (for a report)
    # (rank, world): this process takes batch k only where k % world == rank (distributed runs)
    shard: tuple[int, int] | None = None
    _names: list[str] | None = field(default=None, init=False, repr=False)

    @classmethod
    def live(
        cls,
        model: nn.Module,
        losses: Mapping[str, torch.Tensor],
        parameters: Iterable[Any] | None = None,
    ) -> Problem:
        """Return the one-batch problem of loss tensors already computed (a training step).

        `parameters`: (name, parameter) pairs, bare parameters of `model` or a mapping name ->
        parameter (default: every parameter that requires grad); one listed twice (or under two
        names, tied) counts once; a tensor computed from parameters is refused.
        """
        named = (
            [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            if parameters is None
            else named_parameters(parameters, model, what=opt("parameters"), error=UsageError)
        )
        sharded = [n for n, p in named if type(p).__name__ == "DTensor"]
        if sharded:
            raise UsageError(
                f"parameter {sharded[0]!r} is a DTensor shard (FSDP's fully_shard, or tensor "
                "parallelism): gradtool does not support sharded parameters yet (its per-loss "
                "passes would also run FSDP's unshard and reduce-scatter hooks, which belong to "
                "your backward)",
                hint="record with DistributedDataParallel (exact global Gramians), or analyse a "
                "non-sharded copy of the model on the same batch",
                option="parameters",
                reason="sharded_parameters",
            )
        if not named:
            raise UsageError(
                f"{opt('parameters')} selects no parameter"
                if parameters is not None
                else "the model has no parameter that requires grad",
                hint=f"give at least one parameter in {opt('parameters')}, or leave it out to "
                "analyse every parameter that requires grad",
                option="parameters",
            )
        return cls(model=model, losses=lambda _model: losses, parameters=named)

    def iter_batches(self) -> Iterator[Any]:
        """Yield each batch (moved to `device`), or a single `None` when there are no batches.

        With a `shard` (rank, world), only the batches k with k % world == rank (rank 0 takes
        the `None` of a gradfile without batches); the others are fetched and dropped.
        """
        rank, world = self.shard or (0, 1)
        if self.batches is None:
            if rank == 0:
                yield None
            return
        i = 0
        try:
            with self.user_code():
                iterator = iter(self.batches)
        except (Exception, SystemExit) as exc:
            if self.source is None:
                raise
            raise self._batches_error(exc, i) from exc
        while self.max_batches is None or i < self.max_batches:
            try:
                with self.user_code():
                    batch = next(iterator)
            except StopIteration:
                if i == 0:
                    raise no_batch_error() from None
                return
            except (Exception, SystemExit) as exc:
                if self.source is None:
                    raise
                raise self._batches_error(exc, i) from exc
            if i % world == rank:
                yield move_to_device(batch, self.device) if self.device is not None else batch
            i += 1

    def user_code(self) -> contextlib.AbstractContextManager[None]:
        """Return a context in which the gradfile's code runs as under `python FILE`: its folder
        first on sys.path, so a sibling module imported lazily inside `losses` is found."""
        return gradfile_folder_on_path(None if self.source is None else self.source.parent)

    def _batches_error(self, exc: Exception, index: int) -> UserCodeError:
        """Return the error to raise when iterating the user's `batches` raised `exc`."""
        assert self.source is not None
        return UserCodeError.raised(
            "iterating `batches`",
            exc,
            self.source,
            hint=_traceback_hint(self.source),
            when=f" while fetching batch #{index + 1} (index {index})",
        )

    def call_losses(self, batch: Any, *, when: str = "") -> object:
        """Return what `losses(model[, batch])` returns, unchecked; an exception raised in the
        gradfile becomes a `UserCodeError` showing its frames (`when` says at which stage)."""
        args = (self.model,) if batch is None else (self.model, batch)
        try:
            with self.user_code():
                return self.losses(*args)
        except (Exception, SystemExit) as exc:
            if self.source is None:
                raise
            call = "losses(model)" if batch is None else "losses(model, batch)"
            raise UserCodeError.raised(
                call, exc, self.source, hint=_traceback_hint(self.source), when=when
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


@contextlib.contextmanager
def gradfile_folder_on_path(folder: Path | None) -> Iterator[None]:
    """Run the block with `folder` (the gradfile's) first on sys.path, as `python FILE` has it,
    then take out the entry it added (none when `folder` was first already, or is None).

    Only while the user's code runs: a library caller loading several gradfiles keeps an
    unchanged sys.path, with no duplicate entries.
    """
    if folder is None:
        yield
        return
    entry = str(Path(folder).resolve())
    if sys.path and sys.path[0] == entry:
        yield
        return
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        # The user's code may have changed sys.path meanwhile: take out our own entry object.
        for i, item in enumerate(sys.path):
            if item is entry:
                del sys.path[i]
                break


def _traceback_hint(source: Path) -> str:
    return (
        f"the traceback above is from {source} and the code it calls "
        "(torch's and gradtool's own frames left out)"
    )


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
    if _is_model_output(raw):
        raise LossError(
            f"losses returned a {type(raw).__name__} (a model's output), not a mapping of "
            "name -> scalar tensor",
            hint=_MODEL_OUTPUT_HINT,
        )
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
            raise LossError(
                f"loss names should be strings; found {name!r} ({type(name).__name__})",
                hint='name each loss with a string, e.g. {"task_a": loss_a, "task_b": loss_b}',
            )
        if not isinstance(value, torch.Tensor):
            output = _has_loss_tensor(value) or _is_model_output(value)
            raise LossError(
                f"loss '{name}' should be a scalar tensor; found {type(value).__name__}",
                hint=_MODEL_OUTPUT_HINT
                if output
                else "return the loss tensor itself, not loss.item() or a float",
                loss=name,
            )
        if value.is_meta:
            raise LossError(
                f"loss '{name}' is a tensor on the meta device: it has a shape but no values",
                hint="the model (or its inputs) is on the meta device; build it on cpu, or "
                "load real weights into it",
                loss=name,
            )
        if value.numel() != 1:
            raise LossError(
                f"loss '{name}' should be a scalar; found shape {tuple(value.shape)}",
                hint="reduce it, e.g. with .mean() or .sum()",
                loss=name,
            )
        if not value.is_floating_point():
            hint = "take .abs() or .real of a complex loss" if value.is_complex() else None
            raise LossError(
                f"loss '{name}' should be a real floating-point tensor; found {value.dtype}",
                hint,
                loss=name,
            )
        if not value.requires_grad:
            raise LossError(
                f"loss '{name}' does not require grad: it has no autograd graph to differentiate",
                hint="it was likely detached: .detach(), .item() rebuilt with torch.tensor(...), "
                "a torch.no_grad() block, or computed from parameters with requires_grad=False",
                loss=name,
                reason="detached",
            )
        number = float(value.detach().reshape(()))
        if not math.isfinite(number):
            raise LossError(
                f"loss '{name}' is not finite ({number})",
                hint="check its inputs and the model's initialisation; gradients of a non-finite "
                "loss are meaningless",
                loss=name,
                reason="nonfinite",
            )
        out[name] = value.reshape(())
    return out


_MODEL_OUTPUT_HINT = (
    'return its `.loss`, e.g. {"lm": output.loss, "aux": ...}: a model output (transformers\' '
    "ModelOutput) holds the loss beside logits and hidden states"
)


def _has_loss_tensor(value: object) -> bool:
    """Return whether `value` (not itself a tensor) carries a tensor `.loss`, as a transformers
    `ModelOutput` computed with labels does."""
    if isinstance(value, torch.Tensor):
        return False
    try:
        loss = getattr(value, "loss", None)
    except Exception:  # a property of the user's object may raise anything
        return False
    return isinstance(loss, torch.Tensor)


def _is_model_output(raw: object) -> bool:
    """Return whether `raw` looks like a model's output rather than a mapping of losses.

    Duck typing, so that transformers need not be installed: a non-tensor with a tensor `.loss`,
    or a Mapping subclass whose class name ends with "Output" (transformers' `ModelOutput` is an
    OrderedDict of loss, logits, ...) holding something other than scalar tensors. A user's own
    `LossOutput` mapping of scalar losses is a mapping of losses.
    """
    if isinstance(raw, Mapping) and type(raw).__name__.endswith("Output"):
        return not all(isinstance(v, torch.Tensor) and v.numel() == 1 for v in raw.values())
    return not isinstance(raw, Mapping) and _has_loss_tensor(raw)


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
    items: Iterable[Any] | Mapping[str, Any],
    model: nn.Module,
    *,
    what: str,
    error: type[GradtoolError],
) -> list[tuple[str, nn.Parameter]]:
    """Return `items` ((name, parameter) pairs, bare parameters of `model`, or a mapping name ->
    parameter) as named leaf parameters, each once (the first name wins); raise `error` naming
    `what` otherwise.

    A bare parameter takes its first name in `model.named_parameters(remove_duplicate=False)`.
    A tensor computed from parameters (`w * 2`) is refused: it is not a leaf, so autograd gives
    it no gradient of its own.
    """
    if isinstance(items, Mapping):
        items = items.items()
    names_by_id: dict[int, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names_by_id.setdefault(id(p), n)
    out: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for item in items:
        if isinstance(item, torch.Tensor):
            name = names_by_id.get(id(item))
            if name is None:
                raise _not_a_parameter(item, what, error)
            item = (name, item)
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise error(
                f"{what} should hold (name, Parameter) pairs; found {item!r:.60}",
                hint="e.g. [(n, p) for n, p in model.named_parameters() if ...]",
                option="parameters",
            )
        name, param = item
        if not isinstance(param, torch.Tensor) or not param.requires_grad:
            found = type(param).__name__ if not isinstance(param, torch.Tensor) else "frozen"
            raise error(
                f"{what} holds '{name}', which is not a tensor requiring grad ({found})",
                hint="select parameters that require grad; a frozen one has no gradient",
                option="parameters",
                parameter=name,
            )
        if not param.is_leaf:
            raise error(
                f"{what} holds '{name}', which is not a leaf tensor: it is computed from other "
                f"tensors (by {_grad_fn_name(param)}), so it has no gradient of its own",
                hint="give the model's parameters (leaf tensors), e.g. model.named_parameters()",
                option="parameters",
                parameter=name,
            )
        if id(param) not in seen:
            seen.add(id(param))
            out.append((name, param))
    return out


def parameter_aliases(model: nn.Module) -> dict[str, list[str]]:
    """Return, for each name of a tied parameter of `model`, its other names (one tensor
    registered under several names, e.g. an output layer sharing the embedding's weight)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {
        name: [other for other in group if other != name]
        for group in names.values()
        if len(group) > 1
        for name in group
    }


def tied_parameters(
    model: nn.Module, selected: Iterable[tuple[str, torch.Tensor]]
) -> list[list[Any]]:
    """Return `[kept name, [other names]]` for each selected parameter that `model` also holds
    under other names: analysed once, its gradient is the sum over every place it is used."""
    by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    out: list[list[Any]] = []
    for name, param in selected:
        others = [n for n in by_id.get(id(param), []) if n != name]
        if others:
            out.append([name, others])
    return out


def frozen_parameters(model: nn.Module) -> dict[str, int]:
    """Return the count and total numel of `model`'s parameters that do not require grad
    (each tensor once): they have no gradient, so they are never analysed."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return {"count": len(frozen), "numel": sum(p.numel() for p in frozen)}


def _not_a_parameter(tensor: torch.Tensor, what: str, error: type[GradtoolError]) -> GradtoolError:
    """Return the error for a bare tensor in `what` that is not a parameter of the model."""
    shape = tuple(tensor.shape)
    if not tensor.is_leaf:
        return error(
            f"{what} holds a non-leaf tensor of shape {shape}, computed by "
            f"{_grad_fn_name(tensor)}: not a parameter, so it has no gradient of its own",
            hint="give the parameters it is computed from (model.named_parameters()), "
            "not a tensor derived from them",
            option="parameters",
        )
    return error(
        f"{what} holds a tensor of shape {shape} that is not a parameter of the model",
        hint="give (name, parameter) pairs, naming a tensor outside the model, e.g. "
        "[('scale', scale), *model.named_parameters()]",
        option="parameters",
    )


def _grad_fn_name(tensor: torch.Tensor) -> str:
    grad_fn = tensor.grad_fn
    return "an operation" if grad_fn is None else grad_fn.name()
