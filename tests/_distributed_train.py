"""A 2-rank training run for tests/e2e/test_distributed.py, launched by torchrun (gloo, CPU).

    torchrun --standalone --nproc-per-node 2 tests/_distributed_train.py OUT MODE [STEPS]

MODE: "ddp" (DistributedDataParallel with a gradtool Monitor), "ddp-plain" (the same training
without it), "fsdp" (fully_shard with a Monitor), "rank0-only" (the Monitor on rank 0 alone),
"nonfinite" (rank 1's loss is NaN at step 1), "static" (DDP with static_graph=True).
Rank 0 writes OUT/params-MODE.pt (the trained parameters); every rank writes
OUT/records-MODE-RANK.json (the Records its Monitor returned).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import gradtool

GLOBAL_BATCH = 8
STEPS = 3


class TwoTasks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.a = nn.Linear(16, 1)
        self.b = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.a(h), self.b(h)


def make_model() -> TwoTasks:
    torch.manual_seed(0)
    return TwoTasks().double()


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(GLOBAL_BATCH, 4, dtype=torch.float64, generator=g)
    y = torch.randn(GLOBAL_BATCH, dtype=torch.float64, generator=g)
    return x, y


def losses_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    a, b = model(x)
    return {"a": ((a.squeeze(-1) - y) ** 2).mean(), "b": (b**2).mean() + b[:, 0].mean()}


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else STEPS
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model()
    if mode.startswith("fsdp"):
        from torch.distributed.fsdp import fully_shard

        for layer in (model.trunk[0], model.trunk[2], model.a, model.b):
            fully_shard(layer)
        wrapped: nn.Module = fully_shard(model)
    else:
        wrapped = nn.parallel.DistributedDataParallel(model, static_graph=mode == "static")
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    monitored = mode != "ddp-plain" and (mode != "rank0-only" or rank == 0)
    monitor = gradtool.Monitor(out / f"run-{mode}.jsonl", every=1) if monitored else None
    records = []
    share = GLOBAL_BATCH // world
    for step in range(steps):
        x, y = global_batch(step)
        rows = slice(rank * share, (rank + 1) * share)
        losses = losses_of(wrapped, x[rows], y[rows])
        shown = dict(losses)
        if mode == "nonfinite" and rank == 1 and step == 1:
            shown["a"] = losses["a"] * float("nan")  # the Monitor sees a NaN loss on one rank
        if monitor is not None:
            try:
                record = monitor.step(wrapped, shown)
            except gradtool.UsageError as exc:  # refused, with the reason: train on without it
                (out / f"error-{mode}-{rank}.txt").write_text(exc.message)
                monitor.close()
                monitor = None
            else:
                records.append(None if record is None else record.to_dict())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    if monitor is not None:
        monitor.close()
    (out / f"records-{mode}-{rank}.json").write_text(json.dumps(records))
    if rank == 0 and mode in ("ddp", "ddp-plain"):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, out / f"params-{mode}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
