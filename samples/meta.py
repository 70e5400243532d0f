"""MAML-style meta-learning: a loss whose graph contains a gradient (second order).

`query_after_step` takes one inner SGD step on the support loss with `create_graph=True` and
evaluates the adapted weights on the query set via `torch.func.functional_call`, so its gradient
differs from the first-order approximation. `support` and `query` are the plain losses.
Run: `gradtool inspect samples/meta.py` or `gradtool pareto samples/meta.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

SEED = 0
AMPLITUDE = 1.0
PHASE = 0.5
INNER_LR = 0.1
N_SUPPORT = 10
N_QUERY = 30
HIDDEN = 32


class Regressor(nn.Module):
    """A small MLP for 1-d sine-wave regression."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1, HIDDEN),
            nn.Tanh(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.Tanh(),
            nn.Linear(HIDDEN, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


model = Regressor


def _make_task() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sine-wave task, y = A sin(x + phase), with support and query points on [-3, 3]."""
    gen = torch.Generator().manual_seed(SEED)
    x_support = 6.0 * torch.rand(N_SUPPORT, 1, generator=gen) - 3.0
    x_query = 6.0 * torch.rand(N_QUERY, 1, generator=gen) - 3.0
    return (
        x_support,
        AMPLITUDE * torch.sin(x_support + PHASE),
        x_query,
        AMPLITUDE * torch.sin(x_query + PHASE),
    )


X_SUPPORT, Y_SUPPORT, X_QUERY, Y_QUERY = _make_task()


def losses(model: Regressor) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    x_support, y_support = X_SUPPORT.to(device), Y_SUPPORT.to(device)
    x_query, y_query = X_QUERY.to(device), Y_QUERY.to(device)

    support = F.mse_loss(model(x_support), y_support)
    # Inner step: keep the graph of the gradient so the meta loss is differentiable through it.
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(support, list(params.values()), create_graph=True)
    adapted = {
        name: param - INNER_LR * grad
        for (name, param), grad in zip(params.items(), grads, strict=True)
    }
    query_after_step = F.mse_loss(functional_call(model, adapted, (x_query,)), y_query)
    return {
        "support": support,
        "query": F.mse_loss(model(x_query), y_query),
        "query_after_step": query_after_step,
    }
