"""Checkpoints: torch.save files, .safetensors files and save_pretrained folders (one file or
shards) load into the model; tied weights left out of a file are not missing; truly missing,
unexpected, misshapen or unreadable content is an error (or, for unexpected keys, a note) that
names the keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from _models import HEADER, LOSSES
from torch import nn

from gradtool.errors import GradfileError, MissingDependencyError
from gradtool.problem import LoadOptions, load_checkpoint, load_problem, read_checkpoint

safetensors_torch = pytest.importorskip("safetensors.torch")
save_file = safetensors_torch.save_file


class TiedLM(nn.Module):
    """A tiny language model whose output layer shares the embedding's weight (as GPT-2's and
    BERT's do), with a non-persistent buffer that no checkpoint holds."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.body = nn.Linear(3, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)


class Wrapped(nn.Module):
    """A transformers-style task model: the base model under `base_model_prefix`, then a head."""

    base_model_prefix = "bert"

    def __init__(self) -> None:
        super().__init__()
        self.bert = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
        self.classifier = nn.Linear(4, 2)


def distinct_state(model: nn.Module, seed: int = 7) -> dict[str, torch.Tensor]:
    """Return a state dict for `model` (one entry per tensor) with values unlike its own."""
    generator = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    out = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:
            continue  # a tied key: save_pretrained leaves it out
        seen.add(id(value))
        out[key] = torch.randn(value.shape, generator=generator).to(value.dtype)
    return out


def assert_loaded(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    for key, value in state.items():
        assert torch.equal(current[key], value), key


# --- formats -----------------------------------------------------------------------------------


def test_a_safetensors_file_loads(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = distinct_state(model)
    save_file(state, tmp_path / "weights.safetensors")
    loaded = load_checkpoint(model, tmp_path / "weights.safetensors")
    assert_loaded(model, state)
    assert (loaded.format, loaded.files, loaded.loaded) == ("safetensors", 1, 4)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_a_save_pretrained_folder_loads(tmp_path: Path, name: str) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = distinct_state(model)
    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    if name.endswith(".safetensors"):
        save_file(state, folder / name)
    else:
        torch.save(state, folder / name)
    load_checkpoint(model, folder)
    assert_loaded(model, state)


def test_a_folder_prefers_safetensors_as_transformers_does(tmp_path: Path) -> None:
    model = nn.Linear(3, 1)
    preferred, other = distinct_state(model, 1), distinct_state(model, 2)
    save_file(preferred, tmp_path / "model.safetensors")
    torch.save(other, tmp_path / "pytorch_model.bin")
    load_checkpoint(model, tmp_path)
    assert_loaded(model, preferred)


def write_shards(
    folder: Path, state: dict[str, torch.Tensor], kind: str, per_shard: int = 2
) -> Path:
    """Write `state` as shards of `per_shard` keys plus the index json save_pretrained writes."""
    keys = list(state)
    groups = [keys[i : i + per_shard] for i in range(0, len(keys), per_shard)]
    suffix = "safetensors" if kind == "safetensors" else "bin"
    stem = "model" if kind == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        shard = f"{stem}-{i:05d}-of-{len(groups):05d}.{suffix}"
        part = {k: state[k] for k in group}
        if kind == "safetensors":
            save_file(part, folder / shard)
        else:
            torch.save(part, folder / shard)
        weight_map.update(dict.fromkeys(group, shard))
    index = folder / f"{stem}.{suffix}.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("kind", ["safetensors", "torch"])
def test_a_sharded_folder_loads_every_shard(tmp_path: Path, kind: str) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    state = distinct_state(model)
    write_shards(tmp_path, state, kind)
    loaded = load_checkpoint(model, tmp_path)
    assert_loaded(model, state)
    assert (loaded.format, loaded.files, loaded.loaded) == (f"{kind} shards", 3, 6)


def test_an_index_json_may_be_given_itself(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = distinct_state(model)
    index = write_shards(tmp_path, state, "safetensors", per_shard=1)
    assert read_checkpoint(index)[1:] == ("safetensors shards", 4)
    load_checkpoint(model, index)
    assert_loaded(model, state)


# --- which keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kept", ["embed.weight", "head.weight"])
def test_a_tied_weight_left_out_of_the_file_is_not_missing(tmp_path: Path, kept: str) -> None:
    model = TiedLM()
    state = distinct_state(model)
    if kept == "head.weight":  # the file may keep either name of the tied pair
        state = {("head.weight" if k == "embed.weight" else k): v for k, v in state.items()}
    save_file(state, tmp_path / "model.safetensors")
    loaded = load_checkpoint(model, tmp_path)
    assert model.head.weight is model.embed.weight  # still tied
    assert torch.equal(model.embed.weight, state[kept])
    other = "head.weight" if kept == "embed.weight" else "embed.weight"
    assert loaded.tied == [other]
    assert loaded.unexpected == []
    assert float(model.scale) == 2.0  # the non-persistent buffer is left alone, not "missing"


def test_tied_names_given_different_values_keep_the_first_and_leave_a_note(
    tmp_path: Path,
) -> None:
    model = TiedLM()
    state = distinct_state(model)
    state["head.weight"] = state["embed.weight"] + 1  # saved from an untied model
    torch.save(state, tmp_path / "untied.pt")
    loaded = load_checkpoint(model, tmp_path / "untied.pt")
    assert model.head.weight is model.embed.weight
    assert torch.equal(model.embed.weight, state["embed.weight"])
    assert loaded.differing_ties == [["embed.weight", ["head.weight"]]]
    (note,) = loaded.notes()
    assert "different values to embed.weight and head.weight" in note

    state["head.weight"] = state["embed.weight"].double()  # equal values: nothing to say
    torch.save(state, tmp_path / "same.pt")
    assert load_checkpoint(TiedLM(), tmp_path / "same.pt").notes() == []


def test_truly_missing_keys_are_an_error_naming_them_with_a_count(tmp_path: Path) -> None:
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(4)))
    state = distinct_state(model)
    kept = {k: v for k, v in state.items() if k.startswith("0.")}
    kept["extra.weight"] = torch.ones(1)
    torch.save(kept, tmp_path / "partial.pt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(GradfileError) as info:
        load_checkpoint(model, tmp_path / "partial.pt")
    message = info.value.message
    assert "does not fit the model" in message
    assert "6 of the model's 8 tensors are not in it" in message
    assert "1.weight, 1.bias, 2.weight, 2.bias and 2 more" in message
    assert "1 keys the model has no place for: extra.weight" in message
    assert "strict=False" in (info.value.hint or "")
    assert info.value.option == "checkpoint"
    for key, value in model.state_dict().items():  # nothing half-loaded
        assert torch.equal(value, before[key]), key


def test_unexpected_keys_alone_load_the_model_and_leave_a_note(tmp_path: Path) -> None:
    model = nn.Linear(3, 1)
    state = {**distinct_state(model), "pooler.weight": torch.ones(2), "pooler.bias": torch.ones(2)}
    torch.save(state, tmp_path / "more.pt")
    loaded = load_checkpoint(model, tmp_path / "more.pt")
    assert_loaded(model, {k: state[k] for k in ("weight", "bias")})
    assert loaded.unexpected == ["pooler.weight", "pooler.bias"]
    (note,) = loaded.notes()
    assert "2 keys the model has no place for, left out: pooler.weight, pooler.bias" in note


def test_transformers_keys_to_ignore_are_neither_missing_nor_unexpected(tmp_path: Path) -> None:
    class WithIds(nn.Linear):
        _keys_to_ignore_on_load_missing: ClassVar[list[str]] = [r"position_ids$"]
        _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^pooler\."]

        def __init__(self) -> None:
            super().__init__(3, 1)
            self.register_buffer("position_ids", torch.arange(3))

    model = WithIds()
    state = {"weight": torch.ones(1, 3), "bias": torch.ones(1), "pooler.dense": torch.ones(2)}
    torch.save(state, tmp_path / "hf.pt")
    loaded = load_checkpoint(model, tmp_path / "hf.pt")
    assert loaded.unexpected == [] and loaded.loaded == 2
    assert torch.equal(model.position_ids, torch.arange(3))


@pytest.mark.parametrize(
    ("prefix", "renamed"),
    [
        ("module.", "removed the prefix 'module.'"),
        ("model.", "removed the prefix 'model.'"),
        ("module._orig_mod.", "removed the prefix 'module.'; removed the prefix '_orig_mod.'"),
    ],
    ids=["ddp", "lightning", "ddp-of-compiled"],
)
def test_a_wrappers_prefix_is_removed(tmp_path: Path, prefix: str, renamed: str) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = distinct_state(model)
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "wrapped.pt")
    loaded = load_checkpoint(model, tmp_path / "wrapped.pt")
    assert_loaded(model, state)
    assert loaded.renamed == renamed


def test_a_task_models_file_loads_into_its_base_model(tmp_path: Path) -> None:
    task = Wrapped()
    state = distinct_state(task)
    save_file(state, tmp_path / "model.safetensors")
    base = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    base.base_model_prefix = "bert"  # type: ignore[assignment]  (as transformers' base models)
    loaded = load_checkpoint(base, tmp_path)
    assert torch.equal(base[0].weight, state["bert.0.weight"])
    assert loaded.renamed == "removed the prefix 'bert.'"
    assert sorted(loaded.unexpected) == ["classifier.bias", "classifier.weight"]  # a note


def test_a_base_models_file_into_a_task_model_names_the_missing_head(tmp_path: Path) -> None:
    base_state = {k.removeprefix("bert."): v for k, v in distinct_state(Wrapped()).items()}
    base_state = {k: v for k, v in base_state.items() if not k.startswith("classifier.")}
    save_file(base_state, tmp_path / "model.safetensors")
    with pytest.raises(GradfileError) as info:
        load_checkpoint(Wrapped(), tmp_path)
    message = info.value.message
    assert "2 of the model's 4 tensors are not in it: classifier.weight, classifier.bias" in message
    assert "added the prefix 'bert.'" in message


def test_shapes_that_differ_name_the_keys_with_both_shapes(tmp_path: Path) -> None:
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(3)))
    state = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "wide.pt")
    with pytest.raises(GradfileError) as info:
        load_checkpoint(model, tmp_path / "wide.pt")
    message = info.value.message
    assert "6 tensors differ in shape" in message
    assert "0.weight: (3, 2) in the checkpoint, (2, 2) in the model" in message
    assert "0.bias: (3,) in the checkpoint, (2,) in the model" in message
    assert "and 2 more" in message and "2.bias" not in message


# --- unreadable or wrong content ----------------------------------------------------------------


def write_bad(tmp_path: Path, case: str) -> Path:
    good = {"weight": torch.ones(1, 3), "bias": torch.ones(1)}
    if case == "empty-pt":
        (path := tmp_path / "empty.pt").touch()
    elif case == "empty-safetensors":
        (path := tmp_path / "empty.safetensors").touch()
    elif case == "truncated-pt":
        torch.save(good, whole := tmp_path / "whole.pt")
        data = whole.read_bytes()
        (path := tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    elif case == "truncated-safetensors":
        save_file(good, whole := tmp_path / "whole.safetensors")
        data = whole.read_bytes()
        (path := tmp_path / "cut.safetensors").write_bytes(data[:-6])
    elif case == "int-keys":
        torch.save({0: torch.ones(1, 3), 1: torch.ones(1)}, path := tmp_path / "ints.pt")
    elif case == "a-tensor":
        torch.save(torch.ones(3), path := tmp_path / "tensor.pt")
    elif case == "a-whole-module":
        torch.save(nn.Linear(3, 1), path := tmp_path / "module.pt")
    elif case == "meta-values":
        meta = {k: torch.empty(v.shape, device="meta") for k, v in good.items()}
        torch.save(meta, path := tmp_path / "meta.pt")
    elif case == "not-tensors":
        torch.save({"weight": [[1.0, 2.0, 3.0]], "bias": torch.ones(1)}, path := tmp_path / "l.pt")
    else:
        raise AssertionError(case)
    return path


BAD = {
    "empty-pt": ["is empty (0 bytes)"],
    "empty-safetensors": ["is empty (0 bytes)"],
    "truncated-pt": ["is truncated", "incomplete"],
    "truncated-safetensors": ["cannot read checkpoint", "SafetensorError"],
    "int-keys": ["has a key 0 (int) that is not a string"],
    "a-tensor": ["holds a single tensor, not a state dict"],
    "a-whole-module": ["pickled torch.nn.modules.linear.Linear", "weights_only=True"],
    "meta-values": ["tensors on the meta device", "weight, bias"],
    "not-tensors": ["values that are not tensors: weight (list)"],
}


@pytest.mark.parametrize("case", list(BAD))
def test_unreadable_or_wrong_content_is_a_gradfile_error_saying_what(
    tmp_path: Path, case: str
) -> None:
    path = write_bad(tmp_path, case)
    model = nn.Linear(3, 1)
    with pytest.raises(GradfileError) as info:
        load_checkpoint(model, path)
    assert info.value.exit_code == 1 and info.value.hint
    assert info.value.option == "checkpoint"
    for words in BAD[case]:
        assert words in info.value.message, info.value.message
    assert "\n" not in info.value.message


def test_a_folder_without_weights_lists_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(GradfileError) as info:
        load_checkpoint(nn.Linear(3, 1), tmp_path)
    assert "found config.json, tokenizer.json" in info.value.message
    assert "model.safetensors" in (info.value.hint or "")


def test_an_index_with_an_absent_or_incomplete_shard_is_an_error(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    index = write_shards(tmp_path, distinct_state(model), "safetensors")
    shard = tmp_path / "model-00002-of-00002.safetensors"
    save_file({"1.weight": torch.ones(2, 4)}, shard)  # 1.bias no longer in its shard
    with pytest.raises(GradfileError, match=r"lack 1 of the keys its index lists: 1\.bias"):
        load_checkpoint(model, tmp_path)
    shard.unlink()
    with pytest.raises(GradfileError, match=r"model-00002-of-00002\.safetensors"):
        load_checkpoint(model, index)


def test_safetensors_without_the_package_is_a_missing_dependency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file({"weight": torch.ones(1, 3), "bias": torch.ones(1)}, tmp_path / "w.safetensors")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(MissingDependencyError) as info:
        load_checkpoint(nn.Linear(3, 1), tmp_path / "w.safetensors")
    assert info.value.hint == "pip install safetensors"


# --- the meta device ----------------------------------------------------------------------------


def test_a_meta_model_takes_the_checkpoints_tensors_in_its_own_dtypes(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = TiedLM()
    model.body.bias.requires_grad_(False)
    state = {k: v.double() for k, v in distinct_state(TiedLM()).items()}
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(GradfileError) as info:
        load_checkpoint(model, tmp_path)  # the non-persistent buffer has no value anywhere
    assert "gives no values for 1 of its tensors: scale" in info.value.message

    with torch.device("meta"):
        model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    model[0].weight.requires_grad_(False)
    state = {"0.weight": torch.randn(5, 3, dtype=torch.float64)}
    save_file(state, tmp_path / "model.safetensors")
    load_checkpoint(model, tmp_path)
    assert model[1].weight is model[0].weight  # still tied
    assert model[0].weight.dtype == torch.float32 and not model[0].weight.is_meta
    assert not model[0].weight.requires_grad  # the model's own flag is kept
    assert torch.equal(model[0].weight, state["0.weight"].float())


META_MODEL = HEADER + "with torch.device('meta'):\n    model = nn.Linear(3, 1)\n" + LOSSES


def test_a_meta_model_without_a_checkpoint_is_an_error_saying_how_to_fix(write_gradfile) -> None:
    with pytest.raises(GradfileError) as info:
        load_problem(write_gradfile(META_MODEL))
    assert "is on the meta device: 2 of its tensors have no values (weight, bias)" in (
        info.value.message
    )
    hint = info.value.hint or ""
    assert "build it on cpu" in hint and "to_empty" in hint and "checkpoint" in hint


def test_a_meta_model_with_a_checkpoint_is_analysable(tmp_path: Path, write_gradfile) -> None:
    state = {"weight": torch.full((1, 3), 0.5), "bias": torch.tensor([1.0])}
    save_file(state, tmp_path / "model.safetensors")
    problem = load_problem(write_gradfile(META_MODEL), LoadOptions(checkpoint=tmp_path))
    losses = problem.evaluate(None)
    assert losses["mean"].item() == 2.5  # 0.5 * 3 + 1
    assert problem.checkpoint is not None and problem.checkpoint["format"] == "safetensors"
