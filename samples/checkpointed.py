"""Activation checkpointing, per-loss heads and a head that no loss uses.

The trunk blocks run under `torch.utils.checkpoint` (non-reentrant), `classification` and
`regression` each reach only their own head (the `allow_unused` situation), and the `probe` head
is never used by any loss, so its parameters get no gradient at all.
Run: `gradtool inspect samples/checkpointed.py` or `gradtool pareto samples/checkpointed.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

SEED = 1
N_SAMPLES = 128
IN_FEATURES = 12
HIDDEN = 48
N_BLOCKS = 3
N_CLASSES = 5


class CheckpointedNet(nn.Module):
    """A residual MLP trunk whose blocks recompute their activations during backward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(IN_FEATURES, HIDDEN)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.GELU())
            for _ in range(N_BLOCKS)
        )
        self.classifier = nn.Linear(HIDDEN, N_CLASSES)
        self.regressor = nn.Linear(HIDDEN, 1)
        self.probe = nn.Linear(HIDDEN, 2)  # kept for later experiments; no loss uses it

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = h + checkpoint(block, h, use_reentrant=False)
        return h


model = CheckpointedNet


def _make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(N_SAMPLES, IN_FEATURES, generator=gen)
    labels = (x @ torch.randn(IN_FEATURES, N_CLASSES, generator=gen)).argmax(dim=1)
    value = torch.sin(x[:, :1]) + 0.1 * torch.randn(N_SAMPLES, 1, generator=gen)
    return x, labels, value


X, LABELS, VALUE = _make_data()


def losses(model: CheckpointedNet) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    h = model.features(X.to(device))
    return {
        "classification": F.cross_entropy(model.classifier(h), LABELS.to(device)),
        "regression": F.mse_loss(model.regressor(h), VALUE.to(device)),
    }
