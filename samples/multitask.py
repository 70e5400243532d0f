"""Multi-task learning: one shared trunk, three task heads, two of the tasks in conflict.

The `normals` head is warm-started from the `depth` head, and the two targets are the same latent
signal with opposite signs, so their gradients on the shared trunk point against each other;
`segmentation` is roughly orthogonal to both, and `depth` has by far the largest gradient norm.
Run: `gradtool inspect samples/multitask.py` or `gradtool pareto samples/multitask.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SEED = 0
N_SAMPLES = 256
IN_FEATURES = 16
HIDDEN = 64
N_CLASSES = 4


class MultiTaskNet(nn.Module):
    """A shared MLP trunk feeding one linear head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(IN_FEATURES, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict(
            {
                "depth": nn.Linear(HIDDEN, 1),
                "segmentation": nn.Linear(HIDDEN, N_CLASSES),
                "normals": nn.Linear(HIDDEN, 3),
            }
        )
        # Warm start: add the depth head's readout to the normals head (as when a new head is
        # initialised from an existing one), so both tasks read the shared features alike.
        with torch.no_grad():
            self.heads["normals"].weight += self.heads["depth"].weight

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}


def model() -> MultiTaskNet:
    # A fixed initialisation, so the conflict shown does not depend on the global seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return MultiTaskNet()


def _make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(N_SAMPLES, IN_FEATURES, generator=gen)
    latent = x @ torch.randn(IN_FEATURES, 1, generator=gen) / IN_FEATURES**0.5
    # Depth is a large-scale target; normals are minus a linear function of it (the conflict).
    depth = 3.0 * latent
    normals = -latent @ torch.tensor([[0.6, 0.3, 0.1]])
    # Segmentation labels come from an unrelated random projection of the input.
    segmentation = (x @ torch.randn(IN_FEATURES, N_CLASSES, generator=gen)).argmax(dim=1)
    return x, depth, segmentation, normals


X, DEPTH, SEGMENTATION, NORMALS = _make_data()


def losses(model: MultiTaskNet) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    out = model(X.to(device))
    return {
        "depth": F.mse_loss(out["depth"], DEPTH.to(device)),
        "segmentation": F.cross_entropy(out["segmentation"], SEGMENTATION.to(device)),
        "normals": F.mse_loss(out["normals"], NORMALS.to(device)),
    }
