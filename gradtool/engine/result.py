"""What the engine returns: per-block Gramians, and why it ran the path it ran."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import torch

Strategy = Literal["auto", "structured", "batched", "loop", "backward"]
STRATEGIES: tuple[str, ...] = ("auto", "structured", "batched", "loop", "backward")


class Fallback(str, Enum):
    """Why the engine took another path than the strategy asked (or `auto`'s first choice)."""

    REENTRANT_CHECKPOINT = "reentrant_checkpoint"
    CPU_LOOP = "cpu_loop"
    NONFINITE_BATCHED = "nonfinite_batched"
    VMAP_FAILED = "vmap_failed"
    LOW_MEMORY_STRATEGY = "low_memory_strategy"
    LOW_MEMORY_CHECKPOINT = "low_memory_checkpoint"
    LOW_MEMORY_NO_HOOKS = "low_memory_no_hooks"
    STRUCTURED_CHECKPOINT = "structured_checkpoint"
    STRUCTURED_NONE = "structured_none"
    STRUCTURED_UNAVAILABLE = "structured_unavailable"
    STRUCTURED_GRADIENTS = "structured_gradients"


_MESSAGES: dict[Fallback, str] = {
    Fallback.REENTRANT_CHECKPOINT: "reentrant activation checkpoint: autograd.grad cannot pass it",
    Fallback.CPU_LOOP: "auto on the CPU: the loop, measured at least as fast there as batched",
    Fallback.NONFINITE_BATCHED: "non-finite entries in the batched gradients: {what}",
    Fallback.VMAP_FAILED: "vmap over backward failed: {error}",
    Fallback.LOW_MEMORY_STRATEGY: "low memory needs the batched backward; the {strategy} "
    "strategy holds all gradients",
    Fallback.LOW_MEMORY_CHECKPOINT: "low memory needs autograd.grad, which a reentrant "
    "checkpoint blocks",
    Fallback.LOW_MEMORY_NO_HOOKS: "low memory: this torch's batched backward does not expose "
    "gradients to hooks",
    Fallback.STRUCTURED_CHECKPOINT: "the structured engine needs autograd.grad, which a "
    "reentrant checkpoint blocks",
    Fallback.STRUCTURED_NONE: "the structured engine took no weight here ({why})",
    Fallback.STRUCTURED_UNAVAILABLE: "the structured engine needs gradients at autograd nodes "
    "(torch.autograd.graph.GradientEdge), which this torch lacks",
    Fallback.STRUCTURED_GRADIENTS: "this analysis steps along each loss's gradient, which the "
    "structured engine never forms: auto ran",
}


# The fallbacks that replace the low-memory engine by the default one.
_LOW_MEMORY_KINDS = frozenset(
    {Fallback.LOW_MEMORY_STRATEGY, Fallback.LOW_MEMORY_CHECKPOINT, Fallback.LOW_MEMORY_NO_HOOKS}
)


@dataclass(frozen=True)
class FallbackReason:
    """One fallback: its kind (for code to act on) and its message (for people)."""

    kind: Fallback
    message: str

    @classmethod
    def of(cls, kind: Fallback, **details: object) -> FallbackReason:
        """Return the reason of `kind`, its message filled in with `details`."""
        return cls(kind, _MESSAGES[kind].format(**details))

    def extended(self, more: str) -> FallbackReason:
        """Return the same reason with `more` appended to its message."""
        return FallbackReason(self.kind, f"{self.message}{more}")


@dataclass
class BatchJacobian:
    """One batch's per-loss gradients: `blocks[b]` is (m, numel_b) or None if no loss reaches b."""

    loss_values: list[float]
    blocks: list[torch.Tensor | None]
    reached: list[set[int]]  # per loss: indices of the parameters its graph reaches
    strategy: str
    fallbacks: tuple[FallbackReason, ...] = ()


@dataclass
class EngineResult:
    """Gramians of the mean per-loss gradients, per parameter block, and what else the report needs.

    `gramians[b]` is G_b = J_b J_b^T (float64, m x m) for parameter b; the model's Gramian is
    their sum. `batch_gramians[k]` is batch k's whole-model Gramian (only with several batches).
    """

    loss_names: list[str]
    loss_values: list[float]
    param_names: list[str]
    param_numels: list[int]
    gramians: torch.Tensor  # (P, m, m) float64, on CPU
    # per loss, over all selected parameters (NaN if non-finite entries; None where the engine
    # took a block's Gramian without forming its entries: the structured engine)
    max_abs: list[float | None]
    nonfinite: torch.Tensor  # (P, m) int64: non-finite entries of each loss's gradient per block
    reached: torch.Tensor  # (P, m) bool: loss reaches the parameter in at least one batch
    batch_gramians: torch.Tensor | None  # (B, m, m) float64, or None with a single batch
    num_batches: int
    strategy: str
    fallbacks: tuple[FallbackReason, ...] = ()
    low_memory: bool = False  # the low-memory engine was asked (compute_gramians(low_memory=True))
    # The structured engine: per layer class (linear, conv, embedding, other), how many parameter
    # tensors had their Gramian taken from layer rows ("structured") or from their gradients
    # ("gradient"); and, per parameter it could not cover, why. Empty when it did not run.
    paths: dict[str, dict[str, int]] = field(default_factory=dict)
    uncovered: dict[str, str] = field(default_factory=dict)
    # Distributed runs: the number of ranks reduced over, and (when each rank had one batch, as in
    # DDP training) the mean over ranks of the rank-local Gramians, a smaller batch's Gramian.
    world: int = 1
    local_gramian: torch.Tensor | None = None

    @property
    def fallback_reason(self) -> str | None:
        """Return the fallbacks' messages, joined (None when the engine ran as asked)."""
        return "; ".join(f.message for f in self.fallbacks) or None

    @property
    def low_memory_fallback(self) -> str | None:
        """Return, as one sentence for a warning, why the low-memory engine asked for did not run
        (or ran only in part); None when it ran as asked or was not asked.

        Shown without `verbose`: whoever asked for low memory sized the run on its promise, and
        the default engine holds every loss's gradient of every parameter at once.
        """
        if not self.low_memory:
            return None
        for reason in self.fallbacks:
            if reason.kind in _LOW_MEMORY_KINDS:
                return (
                    f"the low-memory engine did not run ({reason.message}): the default engine "
                    "ran instead, holding every loss's gradient of every parameter at once"
                )
            if reason.kind == Fallback.VMAP_FAILED:
                return f"the low-memory engine ran only in part ({reason.message})"
        return None

    def fell_back(self, kind: Fallback) -> bool:
        """Return whether the engine fell back for `kind`."""
        return any(f.kind == kind for f in self.fallbacks)

    @property
    def gramian(self) -> torch.Tensor:
        """Return the whole-model Gramian G = sum_b G_b (m x m, float64)."""
        return self.gramians.sum(dim=0)
