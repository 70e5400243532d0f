"""The gradient engine: per-loss gradients of the selected parameters, reduced to Gramians.

For each batch it differentiates every loss w.r.t. every selected parameter (`allow_unused=True`;
`None` means zero), and accumulates, per parameter block b, the Jacobian of the *mean* gradient
over batches; the per-block Gramians `G_b = J_b J_b^T` (float64) are formed at the end. With
several batches it also keeps each batch's whole-model Gramian, for per-batch cosine statistics.

Strategies, behind `compute_gramians(problem, strategy=...)`:
- "structured": layer Gramians from the layers' input rows and output gradients, without the
  per-loss weight gradients, for every weight the autograd graph shows used only through linear,
  convolution or embedding products (`gradtool.engine.structured`); the rest the plain way;
- "batched": one `autograd.grad` call with `is_grads_batched=True` and identity grad_outputs;
- "loop": one `autograd.grad(..., retain_graph=True)` per loss;
- "backward": per-loss `.backward()` into `.grad` (saved and restored), the only way through a
  reentrant activation checkpoint, which `autograd.grad` refuses.
"auto" runs the structured engine, which takes each covered weight by rows where that costs less
(per weight and batch) and, where no weight does, runs what follows. It tries "batched" and falls
back to "loop" where vmap cannot run the model's backward, and
to "backward" where the graph holds a reentrant checkpoint. On the CPU, with at least
`AUTO_LOOP_MIN_NUMEL` parameter values (0: always), "auto" runs "loop" directly: there the m
passes are compute-bound, vmap saves no arithmetic, its batched backward carries every loss
through every head, and its first call imports sympy (~0.35 s); the loop was never slower in
benchmarks/RESULTS.md. On accelerators "auto" tries "batched" first. The engine never prints.

`compute_gramians(problem, group=...)` reduces the ranks' per-loss sums to the global Gramians
(torchrun, DDP training): `gradtool.engine.distributed`.
"""

from gradtool.engine.accumulator import GramianAccumulator
from gradtool.engine.blocks import block_gramian
from gradtool.engine.compute import check_strategy, compute_gramians, other_leaves
from gradtool.engine.jacobian import batch_jacobian
from gradtool.engine.result import (
    STRATEGIES,
    BatchJacobian,
    EngineResult,
    Fallback,
    FallbackReason,
    Strategy,
)

__all__ = [
    "STRATEGIES",
    "BatchJacobian",
    "EngineResult",
    "Fallback",
    "FallbackReason",
    "GramianAccumulator",
    "Strategy",
    "batch_jacobian",
    "block_gramian",
    "check_strategy",
    "compute_gramians",
    "other_leaves",
]
