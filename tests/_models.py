"""Shared test helpers: repository paths, gradfile snippets, the in-process CLI and a small model.

Importable from every test folder as `from _models import ...` (tests/ is on sys.path because
tests/conftest.py lives there). Fixtures live in tests/conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from typer.testing import CliRunner, Result

from gradtool.cli import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SAMPLE_NAMES = ("multitask", "checkpointed", "meta", "actor_critic", "batches")
MULTITASK = SAMPLES / "multitask.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The keys the JSON contract fixes for inspect / pareto / analyze (shared/DESIGN.md).
CONTRACT_KEYS = (
    "schema_version",
    "command",
    "losses",
    "loss_values",
    "num_batches",
    "parameters",
    "gradients",
    "unused",
    "dot",
    "cosine",
    "angle_deg",
    "magnitude_similarity",
    "layers",
)

# Pieces of gradfile source (write_gradfile dedents them and strips the leading newline).
HEADER = """
import torch
from torch import nn
"""
LOSSES = """
def losses(model):
    y = model(torch.ones(4, 3))
    return {"mean": y.mean(), "square": (y ** 2).mean()}
"""
BATCH_LOSSES = """
def losses(model, batch):
    y = model(batch)
    return {"mean": y.mean(), "square": (y ** 2).mean()}
"""


def invoke(runner: CliRunner, *args: object) -> Result:
    """Run the CLI in-process; an exception other than SystemExit escapes (it is a gradtool bug)."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def strict_json(text: str) -> dict[str, Any]:
    """Return `text` parsed as exactly one JSON document, refusing NaN and infinities."""

    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    doc = json.loads(text, parse_constant=refuse)
    assert isinstance(doc, dict)
    return doc


class TwoHeads(nn.Module):
    """A shared trunk (the modules given, in order) feeding two linear heads: `a` with one output
    and `b` with `b_out`; with `unused=True`, a third head `unused` that no loss reaches.

    `forward(x)` returns the heads' outputs `(a(h), b(h))`, unsqueezed. `features(x)` returns the
    trunk's output h; with `checkpointing` "reentrant" or "non_reentrant", everything after the
    trunk's first module runs under activation checkpointing (its input requires grad, as
    reentrant checkpointing needs). Modules are created in argument order, then a, b, unused, so a
    seeded construction gives the same initial weights as a hand-written class of that layout.
    """

    def __init__(
        self,
        *trunk: nn.Module,
        b_out: int = 1,
        unused: bool = False,
        checkpointing: str | None = None,
    ) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*trunk)
        width = [m for m in self.trunk if isinstance(m, nn.Linear)][-1].out_features
        self.a = nn.Linear(width, 1)
        self.b = nn.Linear(width, b_out)
        if unused:
            self.unused = nn.Linear(width, 1)
        self.checkpointing = checkpointing

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing is None:
            return self.trunk(x)
        h = self.trunk[0](x)
        return checkpoint(self.trunk[1:], h, use_reentrant=self.checkpointing == "reentrant")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.a(h), self.b(h)
