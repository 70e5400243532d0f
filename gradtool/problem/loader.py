"""Loads a user's gradfile by path and turns it into a `Problem`.

A gradfile is a plain Python file defining `model` and `losses`, optionally `batches` and
`parameters` (README § Gradfiles). Loading it *runs* it, like `python FILE` would.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.util
import inspect
import random
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtool.errors import GradfileError, UsageError, UserCodeError, opt
from gradtool.problem.checkpoint import listed, load_checkpoint, meta_tensor_names
from gradtool.problem.problem import (
    Problem,
    gradfile_folder_on_path,
    named_parameters,
    parameter_aliases,
)

GRADFILE_HINT = "a gradfile defines `model` and `losses(model)`; see README § Gradfiles"


@dataclass(frozen=True)
class LoadOptions:
    """How to build the problem from a gradfile (the CLI's shared options)."""

    seed: int | None = None  # the CLI passes 0; a library caller's RNGs are left alone
    device: str = "cpu"
    checkpoint: Path | None = None
    eval_mode: bool = False
    params: tuple[str, ...] = ()
    max_batches: int | None = None


def import_gradfile(path: Path) -> types.ModuleType:
    """Return the gradfile at `path` imported as a fresh module (its folder first on sys.path
    while it runs, as under `python FILE`)."""
    path = Path(path)
    if not path.exists():
        raise GradfileError(f"gradfile {path} does not exist", hint=GRADFILE_HINT)
    if not path.is_file():
        raise GradfileError(f"gradfile {path} is not a file", hint=GRADFILE_HINT)
    if path.suffix != ".py":
        raise GradfileError(
            f"gradfile {path} should be a Python file ending in .py", hint=GRADFILE_HINT
        )
    module_name = f"gradtool_gradfile_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise GradfileError(f"cannot import {path} as a Python module", hint=GRADFILE_HINT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    saved_argv = sys.argv
    sys.argv = [str(path)]  # as `python FILE` would see it, not gradtool's options
    try:
        with gradfile_folder_on_path(path.parent):
            spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        where = f"{exc.filename or path}, line {exc.lineno}"
        text = (exc.text or "").rstrip()
        detail = f"\n    {text}" if text else ""
        raise GradfileError(
            f"syntax error in {where}: {exc.msg}{detail}",
            hint="fix the gradfile; `python -m py_compile FILE` shows the same error",
        ) from None
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserCodeError.raised(
            f"running {path}",
            exc,
            path,
            hint=f"the traceback above is from {path}; gradtool runs the file to load it",
        ) from exc
    finally:
        sys.argv = saved_argv
    return module


def load_problem(path: Path, options: LoadOptions | None = None) -> Problem:
    """Return the `Problem` the gradfile at `path` defines, built as `options` say."""
    options = options or LoadOptions()
    path = Path(path)
    resolved = path.resolve()  # before the gradfile runs: it may chdir
    device = _resolve_device(options.device)
    if options.max_batches is not None and options.max_batches < 1:
        raise UsageError(
            f"{opt('max_batches')} should be at least 1; found {options.max_batches}",
            option="max_batches",
        )
    if options.checkpoint is not None and not Path(options.checkpoint).exists():
        raise UsageError(
            f"checkpoint {options.checkpoint} does not exist",
            hint=f"{opt('checkpoint')} takes a state dict file (torch.save or .safetensors) or a "
            "folder saved by save_pretrained",
            option="checkpoint",
        )
    if options.seed is not None:
        _seed_everything(options.seed)
    module = import_gradfile(path)
    names = vars(module)
    missing = [n for n in ("model", "losses") if n not in names]
    if missing:
        found = _public_names(module)
        defined = ", ".join(found) if found else "nothing"
        which = " and ".join(f"`{n}`" for n in missing)
        raise GradfileError(f"could not find {which} in {path}. Found: {defined}", GRADFILE_HINT)

    with gradfile_folder_on_path(path.parent):
        model = _resolve_model(names["model"], path)
    loaded = None
    if options.checkpoint is not None:
        loaded = load_checkpoint(model, Path(options.checkpoint))
    _check_not_meta(model, path)
    model.to(device)
    model.train(not options.eval_mode)

    losses = names["losses"]
    if not callable(losses):
        raise GradfileError(
            f"`losses` in {path} should be a function; found {type(losses).__name__}",
            GRADFILE_HINT,
        )
    with gradfile_folder_on_path(path.parent):
        batches = _resolve_batches(names["batches"], path) if "batches" in names else None
    _check_arity(losses, 2 if batches is not None else 1, path)

    if "parameters" in names:
        with gradfile_folder_on_path(path.parent):
            selected = _call_parameters(names["parameters"], model, path)
        if not selected:
            raise GradfileError(
                f"parameters(model) in {path} selected no parameter",
                hint="return at least one (name, Parameter) pair, or drop `parameters` to "
                "analyse every parameter that requires grad",
            )
    else:
        selected = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not selected:
        raise GradfileError(
            f"no parameter to analyse in {path}: the model has no parameter that requires grad",
            hint="check `parameters(model)` or un-freeze the parameters to analyse",
        )
    selected = select_parameters(selected, options.params, aliases=parameter_aliases(model))
    return Problem(
        model=model,
        losses=losses,
        parameters=selected,
        batches=batches,
        max_batches=options.max_batches,
        device=device,
        source=resolved,
        notes=[] if loaded is None else loaded.notes(),
        checkpoint=None if loaded is None else loaded.to_meta(),
    )


def select_parameters(
    named: Sequence[tuple[str, nn.Parameter]],
    patterns: Sequence[str],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[tuple[str, nn.Parameter]]:
    """Return the parameters whose dotted name matches any glob in `patterns` (all if none).

    `aliases` gives the other names of a tied parameter (name -> names): a glob matching any of
    them keeps it, under its first name. A selection matching nothing is a `UsageError` whose
    hint suggests the closest names and module paths.
    """
    if not patterns:
        return list(named)
    aliases = aliases or {}

    def names_of(name: str) -> list[str]:
        return [name, *aliases.get(name, ())]

    kept = [
        (n, p)
        for n, p in named
        if any(fnmatch.fnmatchcase(a, pat) for a in names_of(n) for pat in patterns)
    ]
    if not kept:
        every = [a for n, _ in named for a in names_of(n)]
        shown = ", ".join(n for n, _ in named[:6]) + (", ..." if len(named) > 6 else "")
        close = closest_patterns(patterns, every)
        suggestion = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UsageError(
            f"{opt('params', ' '.join(patterns))} matched none of the {len(named)} parameters",
            hint=f"{suggestion}parameter names are dotted, e.g. {shown}; patterns are globs "
            "like 'trunk.*'",
            option="params",
        )
    return kept


def closest_patterns(patterns: Sequence[str], names: Sequence[str], limit: int = 4) -> list[str]:
    """Return globs close to `patterns` that match some of `names`.

    First the pattern widened where it matches inside names (globs are anchored: 'weight'
    matches no 'fc.weight', '*.weight' does); then, by `difflib.get_close_matches`, the closest
    parameter names and module paths (every dotted prefix of a name, suggested as 'path.*').
    """
    modules = list(
        dict.fromkeys(n.rsplit(".", i)[0] for n in names for i in range(1, n.count(".") + 1))
    )
    out: list[str] = []
    for pattern in patterns:
        for wider in (f"*.{pattern}", f"{pattern}.*", f"*.{pattern}.*", f"*{pattern}*"):
            if any(fnmatch.fnmatchcase(n, wider) for n in names):
                out.append(wider)
                break
        core = pattern.strip("*?.")
        for found in difflib.get_close_matches(core, [*modules, *names], n=3, cutoff=0.6):
            out.append(f"{found}.*" if found in modules else found)
    return list(dict.fromkeys(out))[:limit]


def _check_not_meta(model: nn.Module, path: Path) -> None:
    """Raise when `model` still has tensors on the meta device: they have a shape, no values."""
    meta = meta_tensor_names(model)
    if meta:
        raise GradfileError(
            f"the model in {path} is on the meta device: {len(meta)} of its tensors have no "
            f"values ({listed(meta)})",
            hint="build it on cpu (not under torch.device('meta') or init_empty_weights), or "
            f"give real weights with {opt('checkpoint')} (a meta model takes the checkpoint's "
            "tensors); in the gradfile, model.to_empty(device='cpu') then load_state_dict also "
            "works",
            reason="meta_model",
        )


def _resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(
            f"{opt('device')} {name!r} is not a device: {exc}", "use cpu or cuda", option="device"
        ) from None
    for kind, available in (("cuda", torch.cuda.is_available), ("mps", _mps_available)):
        if device.type == kind and not available():
            raise UsageError(
                f"{opt('device', kind)}: {kind.upper()} is not available on this machine",
                f"use {opt('device', 'cpu')}",
                option="device",
            )
    return device


def _mps_available() -> bool:
    return torch.backends.mps.is_available()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)


def _public_names(module: types.ModuleType) -> list[str]:
    """Return (at most 12 of) the names the gradfile defines itself, leaving out its imports."""
    return [
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and not _is_imported(v, module.__name__)
    ][:12]


def _is_imported(value: Any, module_name: str) -> bool:
    if isinstance(value, types.ModuleType) or type(value).__module__ == "__future__":
        return True
    defined = isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType))
    return defined and getattr(value, "__module__", module_name) != module_name


def _resolve_model(obj: Any, path: Path) -> nn.Module:
    if isinstance(obj, nn.Module):
        return obj
    if callable(obj):
        try:
            built = obj()
        except (Exception, SystemExit) as exc:
            raise UserCodeError.raised(
                "model()",
                exc,
                path,
                hint="`model` may be a zero-argument callable returning an nn.Module",
            ) from exc
        if isinstance(built, nn.Module):
            return built
        raise GradfileError(
            f"`model()` in {path} should return an nn.Module; found {type(built).__name__}",
            GRADFILE_HINT,
        )
    raise GradfileError(
        f"`model` in {path} should be an nn.Module or a function returning one; "
        f"found {type(obj).__name__}",
        GRADFILE_HINT,
    )


def _resolve_batches(obj: Any, path: Path) -> Iterable[Any]:
    if callable(obj) and not isinstance(obj, (torch.Tensor, Iterable)):
        try:
            obj = obj()
        except (Exception, SystemExit) as exc:
            raise UserCodeError.raised(
                "batches()",
                exc,
                path,
                hint="`batches` may be an iterable or a zero-argument callable returning one",
            ) from exc
    if isinstance(obj, (str, bytes, Mapping)) or not isinstance(obj, Iterable):
        raise GradfileError(
            f"`batches` in {path} should be an iterable of batches (a list, a DataLoader, a "
            f"generator) or a function returning one; found {type(obj).__name__}",
            GRADFILE_HINT,
        )
    return obj


def _check_arity(fn: Any, nargs: int, path: Path) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: let the call decide
    try:
        signature.bind(*range(nargs))
    except TypeError:
        call = "losses(model, batch)" if nargs == 2 else "losses(model)"
        why = "the gradfile defines `batches`" if nargs == 2 else "the gradfile has no `batches`"
        raise GradfileError(
            f"`losses` in {path} should be callable as {call}, as {why}; found losses{signature}",
            GRADFILE_HINT,
        ) from None


def _call_parameters(fn: Any, model: nn.Module, path: Path) -> list[tuple[str, nn.Parameter]]:
    if not callable(fn):
        raise GradfileError(
            f"`parameters` in {path} should be a function parameters(model); "
            f"found {type(fn).__name__}",
            GRADFILE_HINT,
        )
    try:
        returned = fn(model)
    except (Exception, SystemExit) as exc:
        raise UserCodeError.raised("parameters(model)", exc, path) from exc
    if isinstance(returned, (str, bytes, Mapping, torch.Tensor)) or not isinstance(
        returned, Iterable
    ):
        raise GradfileError(
            f"parameters(model) should return an iterable of (name, Parameter) pairs; "
            f"found {type(returned).__name__}",
            hint="e.g. return [(n, p) for n, p in model.named_parameters() if ...]",
        )
    try:
        items = list(returned)
    except (Exception, SystemExit) as exc:
        raise UserCodeError.raised("iterating parameters(model)", exc, path) from exc
    return named_parameters(items, model, what="parameters(model)", error=GradfileError)
