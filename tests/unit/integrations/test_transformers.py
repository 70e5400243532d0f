"""The Hugging Face Trainer integration, on a tiny random-init BERT with its two pre-training
losses (masked LM and next-sentence prediction): records at the right steps, metrics in the
Trainer's log, training bit-identical with and without."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _models import SAMPLES, invoke, strict_json
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it
from transformers import (  # noqa: E402
    BertConfig,
    BertForPreTraining,
    Trainer,
    TrainingArguments,
)

from gradtool.integrations.transformers import (  # noqa: E402
    GradtoolCallback,
    GradtoolTrainerMixin,
)
from gradtool.results.runlog import read_run  # noqa: E402

VOCAB = 100
SEQ = 12
STEPS = 3


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield
    transformers.logging.set_verbosity(level)
    logging.getLogger("transformers").setLevel(logging.WARNING)


def tiny_bert() -> BertForPreTraining:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return BertForPreTraining(config)


class Batches(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token pairs: 15% of the positions carry an MLM label, a random next-sentence label."""

    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(5, VOCAB, (n, SEQ), generator=g)
        self.types = (torch.arange(SEQ) >= SEQ // 2).long().expand(n, SEQ)
        masked = torch.rand(n, SEQ, generator=g) < 0.15
        masked[:, 1] = True  # at least one label per row
        self.labels = torch.where(masked, self.ids, torch.full_like(self.ids, -100))
        self.ids = torch.where(masked, torch.full_like(self.ids, 4), self.ids)  # [MASK] = 4
        self.nsp = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "token_type_ids": self.types[i],
            "attention_mask": torch.ones(SEQ, dtype=torch.long),
            "labels": self.labels[i],
            "next_sentence_label": self.nsp[i],
        }


class PretrainingTrainer(GradtoolTrainerMixin, Trainer):
    """The two losses BertForPreTraining adds up: masked LM and next-sentence prediction."""

    def gradtool_losses(
        self, model: torch.nn.Module, inputs: Mapping[str, Any], outputs: Any
    ) -> dict[str, torch.Tensor]:
        mlm = F.cross_entropy(
            outputs.prediction_logits.reshape(-1, VOCAB), inputs["labels"].reshape(-1)
        )
        nsp = F.cross_entropy(outputs.seq_relationship_logits, inputs["next_sentence_label"])
        # The two terms are the model's own loss, split.
        torch.testing.assert_close(mlm + nsp, outputs.loss, rtol=1e-6, atol=1e-6)
        return {"mlm": mlm, "nsp": nsp}


def train(tmp_path: Path, trainer_class: type[Trainer], **kwargs: Any) -> tuple[Trainer, Any]:
    model = tiny_bert()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        logging_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = trainer_class(model=model, args=args, train_dataset=Batches(), **kwargs)
    trainer.train()
    return trainer, model


def test_bert_pretraining_records_and_trains_bit_identically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, plain = train(tmp_path / "plain", Trainer)
    callback = GradtoolCallback(tmp_path / "run.jsonl", every=2)
    trainer, model = train(tmp_path / "gt", PretrainingTrainer, callbacks=[callback])

    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name

    run = read_run(tmp_path / "run.jsonl")
    assert [r.step for r in run.records] == [0, 2]
    assert all(r.losses == ["mlm", "nsp"] for r in run.records)
    assert run.records[0].layers  # per-layer Gramians (embeddings, encoder, heads)
    assert callback.monitor is not None and callback.monitor.closed

    logged = [h for h in trainer.state.log_history if "grad_cos/mlm~nsp" in h]
    assert [h["step"] for h in logged] == [0, 2]
    for entry, record in zip(logged, run.records, strict=True):
        assert entry["grad_cos/mlm~nsp"] == pytest.approx(record.cosine[0][1], rel=1e-9)
        assert entry["loss/mlm"] == pytest.approx(record.loss_values["mlm"], rel=1e-9)


def test_the_mixin_without_the_callback_warns_and_trains(tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="no GradtoolCallback"):
        train(tmp_path, PretrainingTrainer)
    assert not list(tmp_path.glob("*.jsonl"))


class TwoHeads(torch.nn.Module):
    """A plain module the Trainer can train: it returns the total and the per-loss mapping, and
    notes the loss values of each training forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Linear(4, 8)
        self.a = torch.nn.Linear(8, 1)
        self.b = torch.nn.Linear(8, 1)
        self.seen: list[dict[str, float]] = []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        h = torch.tanh(self.trunk(x))
        losses = {"a": ((self.a(h) - y) ** 2).mean(), "b": ((self.b(h) + y) ** 2).mean()}
        if self.training:
            self.seen.append({k: v.item() for k, v in losses.items()})
        return {"loss": losses["a"] + losses["b"], "losses": losses}


class Rows(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        self.x = torch.randn(32, 4, generator=torch.Generator().manual_seed(2))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.x[i].sum(dim=0, keepdim=True)}


class PlainTrainer(GradtoolTrainerMixin, Trainer):
    """No override: the per-loss mapping comes from the model's outputs["losses"]."""


def test_outputs_losses_by_default_and_the_first_micro_batch(tmp_path: Path) -> None:
    callback = GradtoolCallback(tmp_path / "run.jsonl", every=1)
    model = TwoHeads()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        logging_strategy="no",
        seed=0,
    )
    trainer = PlainTrainer(model=model, args=args, train_dataset=Rows(), callbacks=[callback])
    trainer.train()
    records = read_run(tmp_path / "run.jsonl").records
    assert [r.step for r in records] == [0, 1]
    # Update k is made of forwards 2k and 2k + 1: the record is of forward 2k.
    assert len(model.seen) == 4
    assert records[0].loss_values == pytest.approx(model.seen[0], rel=1e-6)
    assert records[1].loss_values == pytest.approx(model.seen[2], rel=1e-6)
    assert model.seen[2] != pytest.approx(model.seen[3], rel=1e-6)


def test_the_bert_sample_gradfile_inspects(runner: CliRunner) -> None:
    result = invoke(runner, "inspect", SAMPLES / "bert_pretraining.py", "--json")
    assert result.exit_code == 0, result.output
    doc = strict_json(result.stdout)
    assert doc["losses"] == ["mlm", "nsp"] and doc["num_batches"] == 4
    assert doc["loss_values"]["mlm"] == pytest.approx(math.log(VOCAB), rel=0.05)  # random init
    assert doc["loss_values"]["nsp"] == pytest.approx(math.log(2), rel=0.05)
    # The heads of one loss are out of the other's reach; the encoder is shared.
    assert "cls.seq_relationship.weight" in doc["unused"]["mlm"]
    assert "cls.predictions.transform.dense.weight" in doc["unused"]["nsp"]
    assert doc["gradients"]["mlm"]["norm"] > 0 and doc["gradients"]["nsp"]["norm"] > 0
