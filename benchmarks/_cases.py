"""The benchmark models and their m losses, shared by the benchmark scripts.

Every case is a shared trunk (an MLP of about 3M parameters, a small CNN, a small transformer
encoder, token-heavy linear layers, an MLP of 50M parameters) feeding m linear heads, one per
loss: loss i is the MSE of head i against target i, so every loss reaches the whole trunk and its
own head only (the other heads are unused by it), the realistic multi-task case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

MODELS: tuple[str, ...] = ("mlp", "cnn", "transformer")


class MultiTask(nn.Module):
    """A trunk producing `features`-dimensional features and m one-output linear heads."""

    def __init__(self, trunk: nn.Module, features: int, m: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(nn.Linear(features, 1) for _ in range(m))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x)
        return [head(h).squeeze(-1) for head in self.heads]


class MeanPool(nn.Module):
    """Average over the sequence dimension (dim 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def mlp_trunk() -> tuple[nn.Module, int, tuple[int, ...]]:
    """Return an MLP trunk of about 2.9M parameters, its feature size and one input's shape."""
    trunk = nn.Sequential(
        nn.Linear(256, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 512),
        nn.ReLU(),
    )
    return trunk, 512, (256,)


def cnn_trunk() -> tuple[nn.Module, int, tuple[int, ...]]:
    """Return a small CNN trunk (about 0.1M parameters) on 3 x 32 x 32 images."""
    trunk = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
    )
    return trunk, 128, (3, 32, 32)


def transformer_trunk() -> tuple[nn.Module, int, tuple[int, ...]]:
    """Return a 2-layer transformer encoder trunk (d_model 128) on sequences of 32 x 16."""
    layer = nn.TransformerEncoderLayer(
        d_model=128, nhead=4, dim_feedforward=256, dropout=0.0, batch_first=True
    )
    trunk = nn.Sequential(
        nn.Linear(16, 128),
        nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False),
        MeanPool(),
    )
    return trunk, 128, (32, 16)


def tokens_trunk() -> tuple[nn.Module, int, tuple[int, ...]]:
    """Return token-heavy layers: two linear layers (d 256) applied to 512 tokens per example."""
    trunk = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), MeanPool())
    return trunk, 256, (512, 64)


def big_mlp_trunk() -> tuple[nn.Module, int, tuple[int, ...]]:
    """Return an MLP trunk of about 50M parameters (widths 2048-4096-4096-4096-2048)."""
    trunk = nn.Sequential(
        nn.Linear(2048, 4096),
        nn.ReLU(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, 2048),
        nn.ReLU(),
    )
    return trunk, 2048, (2048,)


TRUNKS: dict[str, Callable[[], tuple[nn.Module, int, tuple[int, ...]]]] = {
    "mlp": mlp_trunk,
    "cnn": cnn_trunk,
    "transformer": transformer_trunk,
    "tokens": tokens_trunk,
    "mlp50m": big_mlp_trunk,
}
# Batch sizes giving one backward pass of 10-100 ms on one CPU thread.
BATCH_SIZES: dict[str, int] = {
    "mlp": 128,
    "cnn": 32,
    "transformer": 32,
    "tokens": 8,
    "mlp50m": 64,
}


@dataclass
class Case:
    """One benchmark model with its m losses on a fixed batch."""

    name: str
    m: int
    model: MultiTask
    x: torch.Tensor
    y: torch.Tensor  # (batch, m) targets
    params: list[tuple[str, nn.Parameter]]

    def losses(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Return the m losses, one forward pass of `model` on the case's batch."""
        outs = model(self.x)
        return {f"task{i}": ((o - self.y[:, i]) ** 2).mean() for i, o in enumerate(outs)}

    @property
    def numel(self) -> int:
        """Return the number of parameter values analysed."""
        return sum(p.numel() for _, p in self.params)


def make_case(
    name: str, m: int, device: str = "cpu", seed: int = 0, batch: int | None = None
) -> Case:
    """Return the case `name` with `m` losses, its model and batch (default size: BATCH_SIZES)
    on `device`."""
    torch.manual_seed(seed)
    trunk, features, shape = TRUNKS[name]()
    model = MultiTask(trunk, features, m).to(device)
    batch = batch or BATCH_SIZES[name]
    x = torch.randn(batch, *shape, device=device)
    y = torch.randn(batch, m, device=device)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return Case(name=name, m=m, model=model, x=x, y=y, params=params)
