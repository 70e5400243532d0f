"""The bare-script baseline of `bench_startup.py`: what a user's own script does for a gradfile.

It imports torch, loads the gradfile by path (importlib), builds its model and losses, takes one
`autograd.grad(..., retain_graph=True)` per loss, flattens, concatenates, and prints the Gramian
`J J^T` as JSON: the same forward/backward work as `gradtool inspect FILE --json`, without the
analysis and rendering. Run: `python benchmarks/bare_multitask.py samples/multitask.py`.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import torch


def main(path: str) -> None:
    torch.manual_seed(0)
    spec = importlib.util.spec_from_file_location("gradfile", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.model() if not isinstance(module.model, torch.nn.Module) else module.model
    losses = module.losses(model)
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    jac = torch.stack(rows)
    gramian = (jac @ jac.T).tolist()
    print(json.dumps({"losses": list(losses), "dot": gramian}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "samples/multitask.py")
