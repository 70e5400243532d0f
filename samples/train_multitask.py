"""Train the multitask sample for a few hundred steps with a gradtool.Monitor recording the
gradients of its three losses every 10 steps, then read the run back with `gradtool report`.

Run: `python samples/train_multitask.py [RUN.jsonl]` (default runs/multitask.jsonl), then
`gradtool report runs/multitask.jsonl --plot docs/figures`. Takes a few seconds on a CPU.
This is a training script, not a gradfile: `gradtool inspect samples/multitask.py` is the gradfile.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import gradtool

# The model and data come from the sample gradfile next to this script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import multitask

STEPS = 300
EVERY = 10
LR = 1e-3


def main(path: str = "runs/multitask.jsonl") -> None:
    torch.manual_seed(0)
    model = multitask.model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    start = time.perf_counter()
    metadata = {"lr": LR, "optimizer": "Adam", "steps": STEPS}
    with gradtool.Monitor(path, every=EVERY, metadata=metadata, append=False) as monitor:
        for step in range(STEPS):
            losses = multitask.losses(model)
            monitor.step(model, losses, step=step)  # before backward: it reads the graph
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            if step % 100 == 0:  # monitor.flat_metrics() is what a logger would get
                cosines = {
                    key.removeprefix("grad_cos/"): value
                    for key, value in monitor.flat_metrics().items()
                    if key.startswith("grad_cos/")
                }
                print(
                    f"step {step:3d}  cos " + "  ".join(f"{k} {v:+.2f}" for k, v in cosines.items())
                )
    elapsed = time.perf_counter() - start
    final = {name: round(float(v.detach()), 4) for name, v in multitask.losses(model).items()}
    print(f"{STEPS} steps in {elapsed:.1f} s, {monitor.records} records -> {path}")
    print(f"final losses {final}")
    print(f"next: gradtool report {path} --plot docs/figures")


if __name__ == "__main__":
    main(*sys.argv[1:2])
