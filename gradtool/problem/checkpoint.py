"""Loads a checkpoint into the gradfile's model: a `torch.save` file, a `.safetensors` file, or a
folder written by `save_pretrained` (one file, or shards listed by an index json).

The file's keys are matched to `model.state_dict()` after removing (or adding) a wrapper's prefix
(`module.`, `model.`, a `base_model_prefix` such as `bert.`). Every tensor of the model must get
its value from the file, so that the gradients are those of the checkpoint: a key the file leaves
out is missing, an error, unless a parameter tied to it (the same tensor under another name;
`save_pretrained` writes a tied weight once) is in the file. Keys the model has no place for are
left out and reported as a note, not an error: every tensor of the model was loaded. So are tied
names the file gives different values (the model can hold only one of them).
Non-persistent buffers are not in `state_dict()`, so they are never missing.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtool.errors import GradfileError, MissingDependencyError, opt

# The files of a `save_pretrained` folder, in the order transformers prefers them.
PRETRAINED_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Prefixes a wrapper adds to every key: Lightning, DataParallel/DDP, custom wrappers, compile.
WRAPPER_PREFIXES = ("model.", "module.", "net.", "_orig_mod.")
# Where a training checkpoint keeps the model's state dict.
STATE_KEYS = ("state_dict", "model_state_dict", "model")
SHOWN = 4  # names listed in a message before "and N more"

SAVE_HINT = "save it with torch.save(model.state_dict(), PATH) or model.save_pretrained(FOLDER)"


@dataclass(frozen=True)
class CheckpointLoad:
    """What loading a checkpoint did: for the report's meta and its warnings."""

    path: Path
    format: str  # "torch", "safetensors", or either with " shards"
    files: int
    loaded: int  # model keys given a value from the file
    renamed: str | None = None  # e.g. "removed the prefix 'module.'"
    tied: list[str] = field(default_factory=list)  # model keys filled through a tied parameter
    unexpected: list[str] = field(default_factory=list)  # file keys the model has no place for
    # tied names the file gives different values: [name whose values were kept, other names]
    differing_ties: list[list[Any]] = field(default_factory=list)

    def notes(self) -> list[str]:
        """Return the sentences a user should read: the checkpoint's keys that were left out,
        tied names whose different values could not all be kept."""
        out = []
        if self.unexpected:
            count = len(self.unexpected)
            out.append(
                f"checkpoint {self.path}: {count} key{'s' if count > 1 else ''} the model has no "
                f"place for, left out: {listed(self.unexpected)}"
            )
        for kept, others in self.differing_ties:
            out.append(
                f"checkpoint {self.path} gives different values to {kept} and "
                f"{', '.join(others)}, which the model ties (one tensor): {kept}'s were loaded"
            )
        return out

    def to_meta(self) -> dict[str, object]:
        """Return the plain-data summary for a report's `meta`."""
        return {
            "path": str(self.path),
            "format": self.format,
            "files": self.files,
            "loaded": self.loaded,
            "renamed": self.renamed,
            "tied": list(self.tied),
            "unexpected": list(self.unexpected),
            "differing_ties": [[kept, list(others)] for kept, others in self.differing_ties],
        }


def load_checkpoint(model: nn.Module, path: Path) -> CheckpointLoad:
    """Load the checkpoint at `path` (file or folder) into `model`; return what was done.

    Raise `GradfileError` when it cannot be read or does not fit the model (keys missing, a shape
    that differs, values that are not tensors or are on the meta device), naming the keys. A model
    built on the meta device gets the file's tensors themselves (`assign=True`), cast to its
    dtypes, with its ties kept.
    """
    path = Path(path)
    state, fmt, files = read_checkpoint(path)
    model_state = model.state_dict(keep_vars=True)
    mapping, renamed = _match_keys(list(state), model_state, model)
    state = {mapping[k]: v for k, v in state.items()}
    aliases = _aliases(model_state)
    present = [k for k in model_state if k in state]
    _check_values(path, {k: state[k] for k in present}, model_state)

    ignore_missing = _patterns(model, "_keys_to_ignore_on_load_missing")
    ignore_unexpected = _patterns(model, "_keys_to_ignore_on_load_unexpected")
    tied = [k for k in model_state if k not in state and any(a in state for a in aliases[k])]
    missing = [
        k
        for k in model_state
        if k not in state and k not in tied and not _matches(k, ignore_missing)
    ]
    unexpected = [k for k in state if k not in model_state and not _matches(k, ignore_unexpected)]
    if missing:
        raise _missing_error(path, missing, unexpected, len(model_state), renamed)

    differing = _differing_ties(state, present, aliases)
    present = [k for k in present if not any(k in others for _, others in differing)]
    if _has_meta(model):
        _assign(model, {k: state[k] for k in present}, model_state, aliases)
        _check_materialised(model, path)
    else:
        try:
            with torch.no_grad():
                model.load_state_dict({k: state[k] for k in present}, strict=False)
        except Exception as exc:  # torch's RuntimeError, or a module's own loading hook
            raise GradfileError(
                f"checkpoint {path} does not fit the model: {_first_lines(exc)}",
                hint="the checkpoint's keys and shapes must match model.state_dict()",
                option="checkpoint",
                reason="checkpoint_mismatch",
            ) from None
    return CheckpointLoad(
        path=path,
        format=fmt,
        files=files,
        loaded=len(present),
        renamed=renamed,
        tied=tied,
        unexpected=unexpected,
        differing_ties=differing,
    )


def read_checkpoint(path: Path) -> tuple[dict[str, Any], str, int]:
    """Return (state dict, format, number of files) read from the checkpoint at `path`.

    `path` is a `torch.save` file, a `.safetensors` file, an `*.index.json` of shards, or a
    folder holding one of `PRETRAINED_FILES` (or a single weights file).
    """
    path = Path(path)
    if path.is_dir():
        path = _folder_file(path)
    if path.name.endswith(".index.json"):
        shards, keys = _shards(path)
        state: dict[str, Any] = {}
        for shard in shards:
            state.update(_read_file(shard))
        lacking = [k for k in keys if k not in state]
        if lacking:
            raise GradfileError(
                f"the shards of {path} lack {len(lacking)} of the keys its index lists: "
                f"{listed(lacking)}",
                hint="a shard is incomplete or from another save; save or download them again",
                option="checkpoint",
                reason="checkpoint_unreadable",
            )
        kind = "safetensors" if all(s.suffix == ".safetensors" for s in shards) else "torch"
        return state, f"{kind} shards", len(shards)
    kind = "safetensors" if path.suffix == ".safetensors" else "torch"
    return _read_file(path), kind, 1


def listed(names: Sequence[str], shown: int = SHOWN) -> str:
    """Return the first `shown` of `names`, comma separated, then "and N more"."""
    head = ", ".join(names[:shown])
    rest = len(names) - shown
    return f"{head} and {rest} more" if rest > 0 else head


# --- reading -----------------------------------------------------------------------------------


def _folder_file(folder: Path) -> Path:
    """Return the weights file (or index) of a checkpoint folder."""
    for name in PRETRAINED_FILES:
        if (folder / name).is_file():
            return folder / name
    indexes = sorted(folder.glob("*.index.json"))
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(indexes) == 1:
        return indexes[0]
    if not indexes and len(weights) == 1:
        return weights[0]
    found = sorted(p.name for p in folder.iterdir())
    shown = listed(found, 8) if found else "nothing"
    raise GradfileError(
        f"checkpoint folder {folder} holds no weights file gradtool can choose: found {shown}",
        hint=f"a folder saved by save_pretrained holds {PRETRAINED_FILES[0]} or "
        f"{PRETRAINED_FILES[2]} (or their sharded forms with an index json); or give the "
        f"file itself to {opt('checkpoint')}",
        option="checkpoint",
        reason="checkpoint_folder",
    )


def _shards(index: Path) -> tuple[list[Path], list[str]]:
    """Return the shard files an index json lists (each once, in order of first mention) and
    the keys it lists."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise GradfileError(
            f"cannot read the checkpoint index {index}: {type(exc).__name__}: {exc}",
            hint='an index json maps each key to its shard: {"weight_map": {KEY: FILE, ...}}',
            option="checkpoint",
            reason="checkpoint_unreadable",
        ) from None
    if not isinstance(weight_map, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise GradfileError(
            f"the checkpoint index {index} has a `weight_map` that is not KEY -> FILE names",
            hint="write it with save_pretrained, which lists every key with its shard file",
            option="checkpoint",
            reason="checkpoint_unreadable",
        )
    shards = [index.parent / name for name in dict.fromkeys(weight_map.values())]
    absent = [s.name for s in shards if not s.is_file()]
    if absent:
        raise GradfileError(
            f"the checkpoint index {index} lists shards that are not in {index.parent}: "
            f"{listed(absent)}",
            hint="copy or download every shard next to the index",
            option="checkpoint",
            reason="checkpoint_unreadable",
        )
    return shards, list(weight_map)


def _read_file(path: Path) -> dict[str, Any]:
    """Return the state dict in one file (torch.save or safetensors), checked to map names."""
    if not path.is_file():  # a device or a FIFO: it may never end, and it holds no state dict
        raise GradfileError(
            f"checkpoint {path} is not a regular file",
            hint=f"{opt('checkpoint')} takes a state dict file (torch.save or .safetensors) or a "
            "folder saved by save_pretrained",
            option="checkpoint",
            reason="checkpoint_unreadable",
        )
    if path.stat().st_size == 0:
        raise GradfileError(
            f"checkpoint {path} is empty (0 bytes)",
            hint=f"it was not written completely; {SAVE_HINT}",
            option="checkpoint",
            reason="checkpoint_unreadable",
        )
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    state = _unwrap(state)
    if not isinstance(state, Mapping):
        what = "a single tensor" if isinstance(state, torch.Tensor) else _a(type(state).__name__)
        raise GradfileError(
            f"checkpoint {path} holds {what}, not a state dict (parameter name -> tensor)",
            hint=SAVE_HINT,
            option="checkpoint",
            reason="checkpoint_not_state_dict",
        )
    odd = next((k for k in state if not isinstance(k, str)), None)
    if odd is not None:
        raise GradfileError(
            f"checkpoint {path} has a key {odd!r} ({type(odd).__name__}) that is not a string: "
            "a state dict maps dotted parameter names to tensors",
            hint=f"state dict keys are dotted names like 'layer.weight'; {SAVE_HINT}",
            option="checkpoint",
            reason="checkpoint_not_state_dict",
        )
    return dict(state)


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise MissingDependencyError(
            f"reading the safetensors checkpoint {path} needs the safetensors package",
            hint="pip install safetensors",
            option="checkpoint",
            reason="missing_dependency",
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError)
        raise GradfileError(
            f"cannot read checkpoint {path}: {_first_lines(exc)}",
            hint="the file is truncated (an interrupted download or copy?) or not a "
            f"safetensors file; {SAVE_HINT}",
            option="checkpoint",
            reason="checkpoint_unreadable",
        ) from None


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (Exception, SystemExit) as exc:
        if _truncated_zip(path):
            message = f"checkpoint {path} is truncated: its torch.save archive is incomplete"
            hint = f"it was not written or copied completely; {SAVE_HINT}"
        elif (found := _UNSUPPORTED_GLOBAL.search(str(exc))) is not None:
            message = (
                f"checkpoint {path} holds a pickled {found[1]} object, which "
                "torch.load(weights_only=True) refuses to run"
            )
            hint = "save only tensors: torch.save(model.state_dict(), PATH), not torch.save(model)"
        else:
            message = f"cannot load checkpoint {path}: {_first_lines(exc)}"
            hint = f"{opt('checkpoint')} takes a state dict; {SAVE_HINT}"
        raise GradfileError(
            message, hint=hint, option="checkpoint", reason="checkpoint_unreadable"
        ) from None


def _truncated_zip(path: Path) -> bool:
    """Return whether `path` starts like a zip archive (torch.save's format) but is not a whole
    one: its central directory, written last, is cut off."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError:
        return False
    return magic == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def _unwrap(state: Any) -> Any:
    """Return the model's state dict inside a training checkpoint (`{"state_dict": ...,
    "epoch": 3}`, `{"model": ..., "optimizer": ...}`), or `state` itself."""
    if not isinstance(state, Mapping) or any(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    for key in STATE_KEYS:
        if isinstance(state.get(key), Mapping):
            return state[key]
    nested = [v for v in state.values() if isinstance(v, Mapping) and _mostly_tensors(v)]
    return nested[0] if len(nested) == 1 else state


def _mostly_tensors(mapping: Mapping[Any, Any]) -> bool:
    tensors = sum(isinstance(v, torch.Tensor) for v in mapping.values())
    return tensors > 0 and 2 * tensors >= len(mapping)


def _first_lines(exc: BaseException, limit: int = 300) -> str:
    """Return `exc` as "Type: its first lines", ANSI codes removed, cut to `limit` characters."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    detail = " ".join(lines[:3])
    if len(detail) > limit:
        detail = detail[:limit] + " ..."
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --- matching keys -----------------------------------------------------------------------------


def _match_keys(
    keys: list[str], model_state: Mapping[str, Any], model: nn.Module
) -> tuple[dict[str, str], str | None]:
    """Return file key -> model key, and what was renamed (None when nothing was).

    Tries removing a wrapper's prefix (from the keys that have it) and adding the model's
    `base_model_prefix` (or the first component all its keys share), up to three in a row
    (`module._orig_mod.`), and keeps the renaming that makes the most keys the model's; nothing
    is renamed unless that makes strictly more of them match.
    """
    expected = set(model_state)

    def score(m: Mapping[str, str]) -> int:
        return sum(v in expected for v in m.values())

    start = {k: k for k in keys}
    best: tuple[int, dict[str, str], list[str]] = (score(start), start, [])
    level = [(start, list[str]())]
    for _ in range(3):
        following = []
        for mapping, steps in level:
            for what, rename in _renamings(list(mapping.values()), expected, model):
                candidate = {k: rename(v) for k, v in mapping.items()}
                if len(set(candidate.values())) < len(candidate):
                    continue  # two keys would land on one name
                following.append((candidate, [*steps, what]))
                if (s := score(candidate)) > best[0]:
                    best = (s, candidate, [*steps, what])
        level = following
    return best[1], "; ".join(best[2]) or None


def _renamings(keys: list[str], expected: set[str], model: nn.Module) -> Iterable[tuple[str, Any]]:
    """Yield (description, key -> key) for each prefix worth trying."""
    base = getattr(model, "base_model_prefix", None)
    strip = list(WRAPPER_PREFIXES)
    if isinstance(base, str) and base:
        strip.append(base + ".")
    for prefix in strip:
        if any(k.startswith(prefix) for k in keys):
            yield (
                f"removed the prefix '{prefix}'",
                lambda k, p=prefix: k[len(p) :] if k.startswith(p) else k,
            )
    add = []
    if isinstance(base, str) and base:
        add.append(base + ".")
    firsts = {k.split(".", 1)[0] for k in expected if "." in k}
    if len(firsts) == 1 and all("." in k for k in expected):
        add.append(firsts.pop() + ".")
    for prefix in dict.fromkeys(add):
        if not any(k.startswith(prefix) for k in keys):
            yield (f"added the prefix '{prefix}'", lambda k, p=prefix: p + k)


def _aliases(model_state: Mapping[str, Any]) -> dict[str, list[str]]:
    """Return, for each model key, the other keys holding the same tensor (tied weights)."""
    by_id: dict[int, list[str]] = {}
    for key, value in model_state.items():
        if isinstance(value, torch.Tensor):
            by_id.setdefault(id(value), []).append(key)
    out: dict[str, list[str]] = {k: [] for k in model_state}
    for keys in by_id.values():
        for key in keys:
            out[key] = [k for k in keys if k != key]
    return out


def _differing_ties(
    state: Mapping[str, Any], present: list[str], aliases: Mapping[str, list[str]]
) -> list[list[Any]]:
    """Return [first name, [other names]] for each tied group to which the file gives two or more
    different values (a checkpoint of an untied model); the first name's values are kept."""
    out: list[list[Any]] = []
    done: set[str] = set()
    for key in present:
        if key in done or not aliases[key]:
            continue
        group = [k for k in (key, *aliases[key]) if k in state]
        done.update(group)
        others = [k for k in group[1:] if not _same_values(state[k], state[key])]
        if others:
            out.append([key, others])
    return out


def _same_values(a: Any, b: Any) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
        return a is b
    return torch.equal(a.to(b.dtype), b)


def _patterns(model: nn.Module, attribute: str) -> list[re.Pattern[str]]:
    """Return the regexes of a transformers model's `attribute` (keys it expects to be absent or
    extra, e.g. `position_ids`), or none for another model."""
    raw = getattr(model, attribute, None)
    if not isinstance(raw, (list, tuple)):
        return []
    out = []
    for item in raw:
        if isinstance(item, str):
            try:
                out.append(re.compile(item))
            except re.error:
                continue
    return out


def _matches(key: str, patterns: list[re.Pattern[str]]) -> bool:
    return any(p.search(key) for p in patterns)


# --- checking and loading ----------------------------------------------------------------------


def _check_values(path: Path, state: Mapping[str, Any], model_state: Mapping[str, Any]) -> None:
    """Raise when a value the model would take is not a tensor, has no data, or another shape."""
    odd = [
        (k, type(v).__name__)
        for k, v in state.items()
        if not isinstance(v, torch.Tensor) and not k.endswith("_extra_state")
    ]
    if odd:
        shown = ", ".join(f"{k} ({t})" for k, t in odd[:SHOWN])
        more = f" and {len(odd) - SHOWN} more" if len(odd) > SHOWN else ""
        raise GradfileError(
            f"checkpoint {path} holds values that are not tensors: {shown}{more}",
            hint=SAVE_HINT,
            option="checkpoint",
            reason="checkpoint_not_state_dict",
        )
    meta = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_meta]
    if meta:
        raise GradfileError(
            f"checkpoint {path} holds tensors on the meta device, which have no values: "
            f"{listed(meta)}",
            hint="it was saved from a model built on the meta device; save it after loading "
            "real weights into the model",
            option="checkpoint",
            reason="checkpoint_meta",
        )
    shapes = [
        (k, tuple(v.shape), tuple(model_state[k].shape))
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
        and isinstance(model_state[k], torch.Tensor)
        and v.shape != model_state[k].shape
    ]
    if shapes:
        count = len(shapes)
        shown = "; ".join(f"{k}: {f} in the checkpoint, {m} in the model" for k, f, m in shapes)
        if count > SHOWN:
            shown = (
                "; ".join(
                    f"{k}: {f} in the checkpoint, {m} in the model" for k, f, m in shapes[:SHOWN]
                )
                + f"; and {count - SHOWN} more"
            )
        raise GradfileError(
            f"checkpoint {path} does not fit the model: {count} tensor"
            f"{'s differ' if count > 1 else ' differs'} in shape: {shown}",
            hint="it was saved from a model of another configuration (width, vocabulary, number "
            "of classes); build the model the gradfile defines with the same one",
            option="checkpoint",
            reason="checkpoint_mismatch",
        )


def _missing_error(
    path: Path, missing: list[str], unexpected: list[str], total: int, renamed: str | None
) -> GradfileError:
    parts = [f"{len(missing)} of the model's {total} tensors are not in it: {listed(missing)}"]
    if unexpected:
        parts.append(f"it holds {len(unexpected)} keys the model has no place for: ")
        parts[-1] += listed(unexpected)
    if renamed:
        parts.append(f"gradtool {renamed}")
    return GradfileError(
        f"checkpoint {path} does not fit the model: " + "; ".join(parts),
        hint="the checkpoint's keys must be model.state_dict()'s (a wrapper's prefix such as "
        "'module.' is removed); to start the missing ones from the model's own initial values, "
        "load the checkpoint in the gradfile with model.load_state_dict(state, strict=False)",
        option="checkpoint",
        reason="checkpoint_mismatch",
    )


def _has_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in _tensors(model))


def _tensors(model: nn.Module) -> Iterable[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def meta_tensor_names(model: nn.Module) -> list[str]:
    """Return the names of `model`'s parameters and buffers on the meta device (no values)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [n for n, t in named if t.is_meta]


def _assign(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    model_state: Mapping[str, Any],
    aliases: Mapping[str, list[str]],
) -> None:
    """Give a meta-device model the file's tensors (cast to the model's dtypes), keeping ties.

    `load_state_dict(assign=True)` replaces each module's tensor separately, so two names of one
    tied parameter would end up as two tensors (or one left on meta): each alias is pointed back
    at the tensor its group was given.
    """
    cast = {k: v.to(model_state[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(cast, strict=False, assign=True)
    done: set[str] = set()
    for key in model_state:
        if key in done or not aliases[key]:
            continue
        group = [key, *aliases[key]]
        done.update(group)
        source = next((k for k in group if k in state), None)
        if source is None:
            continue
        value = _get(model, source)
        for other in group:
            if other != source:
                _set(model, other, value)


def _get(model: nn.Module, key: str) -> torch.Tensor:
    owner, _, leaf = key.rpartition(".")
    return getattr(model.get_submodule(owner), leaf)


def _set(model: nn.Module, key: str, value: torch.Tensor) -> None:
    owner, _, leaf = key.rpartition(".")
    setattr(model.get_submodule(owner), leaf, value)


def _check_materialised(model: nn.Module, path: Path) -> None:
    left = meta_tensor_names(model)
    if left:
        raise GradfileError(
            f"the model is on the meta device and checkpoint {path} gives no values for "
            f"{len(left)} of its tensors: {listed(left)}",
            hint="build the model on cpu (not under torch.device('meta') or init_empty_weights); "
            "non-persistent buffers are never in a checkpoint",
            option="checkpoint",
            reason="meta_model",
        )
