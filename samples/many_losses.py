"""Many losses: 20 on one shared trunk (8 tasks, 6 auxiliary losses, 6 regularisers).

Each task conflicts with "its" regulariser; the auxiliary losses fight no one. Run:
`gradtool inspect samples/many_losses.py --top 5 --loss-group tasks='task_*'
--loss-group reg='reg_*'`.
"""

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 20))
_w = torch.randn(6, 20)


def batches():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(64, 6, generator=g) for _ in range(4)]
    return [(x, torch.tanh(x @ _w)) for x in xs]


NAMES = (
    [f"task_{k}" for k in range(8)]
    + [f"aux_{k}" for k in range(6)]
    + [f"reg_{k}" for k in range(6)]
)


def losses(model, batch):
    x, y = batch
    out = model(x)
    result = {}
    for k, name in enumerate(NAMES):
        if name.startswith("task"):
            result[name] = ((out[:, k] - y[:, k]) ** 2).mean()
        elif name.startswith("aux"):
            result[name] = ((out[:, k] + 0.5 * y[:, k - 8]) ** 2).mean()
        else:
            result[name] = 0.1 * (out[:, k] ** 2).mean() + 0.05 * (out[:, k - 12] - 1).pow(2).mean()
    return result
