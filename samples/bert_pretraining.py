"""BERT pre-training: a tiny random-init BertForPreTraining and its two losses, masked language
modelling (`mlm`) and next-sentence prediction (`nsp`), on random token data made here.

Nothing is downloaded: the model is built from a config (hidden 32, 2 layers, 2 heads, vocabulary
100) with fixed random weights. `BertForPreTraining` adds the two losses into one; this gradfile
splits them, so that gradtool shows how they relate in each layer (the embeddings and the encoder
are shared, the MLM head's decoder is tied to the word embeddings).
Needs transformers (`pip install 'gradtool[transformers]'`).
Run: `gradtool inspect samples/bert_pretraining.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForPreTraining

SEED = 0
VOCAB = 100
SEQ = 16
MASK_ID = 4  # token 4 plays [MASK]; tokens 0-4 are never drawn as words
N_BATCHES = 4
BATCH = 8


def model() -> BertForPreTraining:
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ,
        hidden_dropout_prob=0.0,  # deterministic losses: the analysis is of one fixed batch set
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return BertForPreTraining(config)


def _batch(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch of sentence pairs: 15% of the tokens masked (their MLM labels kept), and a random
    is-next label per pair."""
    ids = torch.randint(MASK_ID + 1, VOCAB, (BATCH, SEQ), generator=gen)
    masked = torch.rand(BATCH, SEQ, generator=gen) < 0.15
    masked[:, 1] = True  # at least one masked token per pair
    return {
        "input_ids": torch.where(masked, torch.full_like(ids, MASK_ID), ids),
        "token_type_ids": (torch.arange(SEQ) >= SEQ // 2).long().expand(BATCH, SEQ),
        "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long),
        "labels": torch.where(masked, ids, torch.full_like(ids, -100)),
        "next_sentence_label": torch.randint(0, 2, (BATCH,), generator=gen),
    }


def batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(SEED)
    return [_batch(gen) for _ in range(N_BATCHES)]


def losses(model: BertForPreTraining, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    out = model(
        input_ids=batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
    )
    return {
        # The same two terms BertForPreTraining(labels=..., next_sentence_label=...) adds up.
        "mlm": F.cross_entropy(
            out.prediction_logits.reshape(-1, VOCAB), batch["labels"].reshape(-1)
        ),
        "nsp": F.cross_entropy(out.seq_relationship_logits, batch["next_sentence_label"]),
    }
