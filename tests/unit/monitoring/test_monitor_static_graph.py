"""A DistributedDataParallel model with static_graph=True is refused before any gradient: its
first iteration hands the all-reduce to the next backward pass, which would be gradtool's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradtool


class DistributedDataParallel(nn.Module):
    """Stands in for torch's wrapper (recognised by its class name, as the Monitor does), so the
    check runs without a process group."""

    def __init__(self, module: nn.Module, static_graph: bool) -> None:
        super().__init__()
        self.module = module
        self.static_graph = static_graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def step(tmp_path, static_graph: bool) -> gradtool.Record | None:
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Linear(3, 2), static_graph)
    y = model(torch.randn(4, 3))
    losses = {"a": y[:, 0].mean(), "b": y.pow(2).mean()}
    with gradtool.Monitor(tmp_path / "run.jsonl", every=1, distributed=False) as monitor:
        return monitor.step(model, losses)


def test_static_graph_is_refused_with_the_reason(tmp_path) -> None:
    with pytest.raises(gradtool.UsageError, match=r"static_graph=True\) hands its all-reduce"):
        step(tmp_path, static_graph=True)


def test_the_default_ddp_wrapper_is_unwrapped_and_recorded(tmp_path) -> None:
    record = step(tmp_path, static_graph=False)
    assert record is not None
    assert record.parameters == {"count": 2, "numel": 8}
