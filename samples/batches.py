"""Mini-batches: two supervision sources that agree on some batches and conflict on others.

Each of the 8 batches comes from one annotation round with `expert` and `crowd` labels for the
same regression output; in three rounds the crowd used the opposite sign convention, so the two
losses' gradients conflict there and agree elsewhere (a conflict fraction strictly inside (0, 1)).
Run: `gradtool inspect samples/batches.py` or `gradtool pareto samples/batches.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SEED = 4
BATCH_SIZE = 32
IN_FEATURES = 10
HIDDEN = 32
# One entry per batch: +1 where the crowd labels follow the expert convention, -1 where flipped.
CROWD_SIGNS = (1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Regressor(nn.Module):
    """A small MLP with a single regression output shared by both label sources."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(IN_FEATURES, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


model = Regressor


def batches() -> list[Batch]:
    """Eight batches `(x, y_expert, y_crowd)` of synthetic data, the same on every call."""
    gen = torch.Generator().manual_seed(SEED)
    true_weights = torch.randn(IN_FEATURES, generator=gen)
    result: list[Batch] = []
    for sign in CROWD_SIGNS:
        x = torch.randn(BATCH_SIZE, IN_FEATURES, generator=gen)
        target = 3.0 * torch.tanh(x @ true_weights / IN_FEATURES**0.5)
        y_expert = target + 0.1 * torch.randn(BATCH_SIZE, generator=gen)
        y_crowd = sign * target + torch.randn(BATCH_SIZE, generator=gen)
        result.append((x, y_expert, y_crowd))
    return result


def losses(model: Regressor, batch: Batch) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    x, y_expert, y_crowd = (t.to(device) for t in batch)
    prediction = model(x)
    return {
        "expert": F.mse_loss(prediction, y_expert),
        "crowd": F.mse_loss(prediction, y_crowd),
    }
