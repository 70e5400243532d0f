"""The structured engine: per-loss Gramians of layer weights without their per-loss gradients.

For a weight used only through recognised products (`gradtool.engine.structure`: linear, conv,
embedding), loss i's gradient is a product of the layer's input rows X, saved in the autograd
graph, and D_i, the gradient at the layer's output. The backward asks autograd for the D_i
(gradients at the products' nodes, `GradientEdge`) instead of the weight: the weight-gradient
products are skipped, and the block Gramian comes from the rows (`gradtool.engine.ghost`), extra
memory O(N^2 + m N d) per layer, never m x the weight. Per parameter and batch, "auto" takes the
cheaper of the row form and the plain gradient (cost model in `ghost`); "structured" takes every
covered weight from rows. Every other parameter (biases, norms, uncovered weights) gets its
gradient in the same backward, the plain way.

Several batches: the Gramian of the mean gradient has cross-batch terms, so a parameter's rows
are held across batches while they take less memory than its m gradients; past that, they are
summed into its gradients once (`materialise`) and the parameter goes the plain way from then on.
Each batch's own Gramian (for per-batch statistics) is taken from that batch's rows.

Not run, with the reason: a reentrant checkpoint in the graph (the "backward" strategy runs); no
parameter taken more cheaply (the previous default runs). The entries of a structured block are
never formed, so a loss reaching one has no `max_abs` (None), and its non-finite entries are
counted by forming the block, only when its Gramian is not finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from gradtool.engine import ghost
from gradtool.engine.accumulator import GramianAccumulator
from gradtool.engine.batched import batched_grads
from gradtool.engine.blocks import (
    Rows,
    all_finite,
    backward_error,
    check_compiled_backward,
    dense,
    first_line,
)
from gradtool.engine.graph import Reachability, reachable_parameters
from gradtool.engine.jacobian import batch_jacobian
from gradtool.engine.result import Fallback, FallbackReason, Strategy
from gradtool.engine.structure import (
    Rows as UseRows,
)
from gradtool.engine.structure import (
    Structure,
    Use,
    find_structure,
    loss_rows,
    rows_shape,
    shared_rows,
)

try:
    from torch.autograd.graph import GradientEdge
except ImportError:  # pragma: no cover - torch < 2.2
    GradientEdge = None  # type: ignore[assignment,misc]


@dataclass
class _Param:
    """What the engine knows of one parameter across batches."""

    plain: bool = False  # its gradient is formed (once plain, plain for the rest of the run)
    structured: bool = False  # its Gramian came from rows in some batch
    held: list[ghost.LayerRows] = field(default_factory=list)  # rows of earlier batches
    gram: torch.Tensor | None = None  # the last batch's Gramian (the result of a single batch)
    kind: str = "other"


class StructuredEngine:
    """Runs the batches of one problem; `finish()` sets the held parameters' final Gramians."""

    def __init__(
        self,
        acc: GramianAccumulator,
        parameters: Sequence[tuple[str, torch.Tensor]],
        *,
        strategy: Strategy,
        single: bool,
        retain_graph: bool = False,
        other_leaves: Sequence[torch.Tensor] = (),
        materialise: bool = False,
    ) -> None:
        self.acc = acc
        # Sum every structured block's gradients after its batch Gramian (a distributed run
        # reduces the sums across ranks): nothing held, nothing set outright.
        self.materialise = materialise
        self.names = [n for n, _ in parameters]
        self.params = [p for _, p in parameters]
        self.strategy = strategy
        self.single = single
        self.retain_graph = retain_graph
        self.other_leaves = other_leaves
        self.state = [_Param() for _ in self.params]
        self.uncovered: dict[str, str] = {}
        self.ran = False  # the structured form ran in at least one batch

    def add(self, losses: Mapping[str, torch.Tensor]) -> None:
        """Add one batch of losses."""
        names = list(losses)
        tensors = [t.reshape(()) for t in losses.values()]
        m = len(tensors)
        reach = reachable_parameters(tensors, self.params)
        reason = self._cannot_run(reach.opaque)
        plan: dict[int, list[UseRows]] = {}
        structure = Structure()
        if reason is None:
            check_compiled_backward(reach.compiled, m + int(self.retain_graph))
            reachable = set().union(*reach.reached) if reach.reached else set()
            candidates = {
                b
                for b in reachable
                if not self.state[b].plain
                and self.params[b].dim() >= 2
                and self.params[b].layout == torch.strided
                and self.params[b].is_floating_point()
            }
            structure = find_structure(tensors, self.params, candidates)
            plan = self._plan(structure, m)
            if not plan:
                why = self._why_none(structure, reachable, candidates)
                reason = FallbackReason.of(Fallback.STRUCTURED_NONE, why=why)
        for b, why in structure.uncovered.items():
            self.uncovered.setdefault(self.names[b], why)
        for b, kind in structure.kinds.items():
            self.state[b].kind = kind
        reached_now = set().union(*reach.reached) if reach.reached else set()
        for b, st in enumerate(self.state):  # held rows of parameters that go plain now
            if st.held and b not in plan and b in reached_now:
                self._to_sums(b)
        if reason is not None:
            self._plain_batch(losses, names, reason, reach)
            return
        self._structured_batch(tensors, names, plan, structure, reach.reached)

    def finish(self) -> None:
        """Set the Gramians of the mean gradients of the parameters whose rows are held."""
        count = self.acc.count
        for b, st in enumerate(self.state):
            if not st.held:
                continue
            rows = ghost.concat(st.held)
            single = len(st.held) == 1 and count == 1 and st.gram is not None
            st.held = []
            gram = st.gram if single else ghost.gramian(rows, 1.0 / count)
            self.acc.set_final(b, gram, self._counts(b, rows, gram, 1.0 / count))
            st.gram = None

    def paths(self) -> dict[str, dict[str, int]]:
        """Return, per layer class, how many parameter tensors went each way."""
        out: dict[str, dict[str, int]] = {}
        for st in self.state:
            path = "structured" if st.structured and not st.plain else "gradient"
            counts = out.setdefault(st.kind, {"structured": 0, "gradient": 0})
            counts[path] += 1
        return out

    def _cannot_run(self, opaque: bool) -> FallbackReason | None:
        if GradientEdge is None:
            return FallbackReason.of(Fallback.STRUCTURED_UNAVAILABLE)
        if opaque:
            return FallbackReason.of(Fallback.STRUCTURED_CHECKPOINT)
        return None

    def _plan(self, structure: Structure, m: int) -> dict[int, list[UseRows]]:
        """Return the parameters to take from rows this batch, with their uses' shared rows."""
        plan: dict[int, list[UseRows]] = {}
        for b, uses in structure.uses.items():
            try:
                if self.strategy != "structured" and uses[0].kind != "embedding":
                    shapes = [rows_shape(u) for u in uses]
                    n = sum(rows for rows, _ in shapes)
                    s = shapes[0][1]
                    r = self.params[b].numel() // s
                    if ghost.ghost_cost(n, s, r, m) >= ghost.gradient_cost(n, s, r, m):
                        self.uncovered.setdefault(
                            self.names[b], f"its gradient costs less than its rows at {n} rows"
                        )
                        continue
                plan[b] = [shared_rows(u) for u in uses]
            except Exception as exc:  # a saved input freed or overwritten: the plain way
                structure.uncovered[b] = f"its input is not available ({first_line(exc, 80)})"
        return plan

    def _why_none(self, structure: Structure, reachable: set[int], candidates: set[int]) -> str:
        if structure.uses:
            return "forming the gradients costs less at these sizes"
        if structure.uncovered:
            b, why = next(iter(structure.uncovered.items()))
            return (
                "no weight is used only through linear, convolution or embedding layers; "
                f"{self.names[b]}: {why}"
            )
        if any(self.state[b].plain for b in reachable) and not candidates:
            return "the rows of earlier batches took more memory than the gradients"
        return "no linear, convolution or embedding weight among the parameters"

    def _plain_batch(
        self,
        losses: Mapping[str, torch.Tensor],
        names: list[str],
        reason: FallbackReason,
        reach: Reachability,
    ) -> None:
        # asked for explicitly: the plain way ("auto" would add its own CPU reason)
        plain: Strategy = self.strategy
        if plain == "structured":
            plain = "backward" if reach.opaque else "loop"
        jac = batch_jacobian(
            losses,
            self.params,
            strategy=plain,
            retain_graph=self.retain_graph,
            other_leaves=self.other_leaves,
            reach=reach,
        )
        for b, block in enumerate(jac.blocks):
            if block is not None:
                self.state[b].plain = True
        # auto: the previous default ran, as it would have; its own reasons say why.
        reasons = jac.fallbacks if self.strategy == "auto" else (reason, *jac.fallbacks)
        self.acc.add(names, replace(jac, fallbacks=reasons))

    def _structured_batch(
        self,
        tensors: list[torch.Tensor],
        names: list[str],
        plan: dict[int, list[UseRows]],
        structure: Structure,
        reached_by_graph: list[set[int]],
    ) -> None:
        m = len(tensors)
        uses = [(b, k, u) for b in plan for k, u in enumerate(structure.uses[b])]
        edges = [GradientEdge(u.node, 0) for _, _, u in uses]
        plain = [b for b in range(len(self.params)) if b not in plan]
        inputs = [*edges, *(self.params[b] for b in plain)]
        grads_at, blocks, via_grad, note = self._passes(tensors, names, inputs, uses, plain)
        self.acc.begin_batch(names, [float(t.detach().real) for t in tensors])
        for j, block in enumerate(blocks):
            if block is not None:
                self.state[plain[j]].plain = True
                self.acc.add_block(plain[j], block, keep=not self.single)
        del blocks
        for b, parts in plan.items():
            ks = [k for k, (bb, _, _) in enumerate(uses) if bb == b]
            filled = []
            for part, k in zip(parts, ks, strict=True):
                d = grads_at[k]
                grads_at[k] = None
                shared = part.matrix()
                if d is None:  # no loss reaches this use's output
                    width = self._width(b, part.kind, shared)
                    d = self.params[b].new_zeros((m, shared.shape[0], width))
                else:
                    if part.select is not None:  # rows with no gradient (padding ids)
                        d = d[:, part.select]
                    if isinstance(part.scale, torch.Tensor):  # per-row id weights (embedding)
                        d = d * part.scale.to(d.dtype).unsqueeze(-1)
                    elif part.scale != 1.0:
                        d = d * part.scale
                owned = part.kind != "linear"  # unfolded rows and ids are copies already
                filled.append(
                    ghost.LayerRows(part.kind, shared, d, _transposed(uses, ks), owned=owned)
                )
            layer = ghost.concat(filled)
            self._take(b, layer, m)
            for i, found in enumerate(reached_by_graph):
                if b in found and not self.materialise:
                    self.acc.unformed.add(i)
        reached = [r | g for r, g in zip(reached_by_graph, via_grad, strict=True)]
        self.ran = True
        self.acc.end_batch(reached, "structured", () if note is None else (note,))

    def _passes(
        self,
        tensors: list[torch.Tensor],
        names: list[str],
        inputs: list[object],
        uses: list[tuple[int, int, Use]],
        plain: list[int],
    ) -> tuple[
        list[torch.Tensor | None], list[torch.Tensor | None], list[set[int]], FallbackReason | None
    ]:
        """Return the D of each use as (m, N, r), the plain parameters' (m, numel) blocks, and,
        per loss, the plain parameters its gradient came back for.

        One batched backward (vmap over the m losses: each layer's products get m N rows at
        once, measured up to 1.8x faster than m passes at N = 16), where the plain parameters
        are no larger than the structured ones; else, or where vmap cannot run the backward or
        leaks a non-finite entry into another loss's rows, one pass per loss.
        """
        m, e = len(tensors), len(uses)
        note: FallbackReason | None = None
        structured_numel = sum(self.params[b].numel() for b in {b for b, _, _ in uses})
        if sum(self.params[b].numel() for b in plain) <= structured_numel:
            try:
                grads = batched_grads(tensors, inputs, retain=True)
                if all_finite(grads):
                    at = [
                        None if g is None else loss_rows(uses[k][2], g, m)
                        for k, g in enumerate(grads[:e])
                    ]
                    blocks = [None if g is None else dense(g).reshape(m, -1) for g in grads[e:]]
                    return at, blocks, [set() for _ in tensors], None
                note = FallbackReason.of(Fallback.NONFINITE_BATCHED, what="recomputed loss by loss")
            except (RuntimeError, NotImplementedError) as exc:
                note = FallbackReason.of(Fallback.VMAP_FAILED, error=first_line(exc))
            grads = None  # the batched gradients (if any) are not used: free them
        at: list[torch.Tensor | None] = [None] * e
        rows = Rows([self.params[b] for b in plain], m, differentiable=False)
        via_grad: list[set[int]] = []
        keep = self.retain_graph
        for i, loss in enumerate(tensors):
            try:
                grads = torch.autograd.grad(
                    loss, inputs, retain_graph=keep or i < m - 1, allow_unused=True
                )
            except Exception as exc:
                raise backward_error(exc, names[i]) from exc
            for k, g in enumerate(grads[:e]):
                if g is None:
                    continue
                d = loss_rows(uses[k][2], g)
                if at[k] is None:
                    at[k] = d.new_zeros((m, *d.shape))
                at[k][i].copy_(d)
            rest = grads[e:]
            rows.put(i, rest)
            via_grad.append({plain[j] for j, g in enumerate(rest) if g is not None})
            del grads, rest
        return at, rows.blocks(), via_grad, note

    def _take(self, b: int, layer: ghost.LayerRows, m: int) -> None:
        """Add parameter b's rows of this batch: its batch Gramian now; held or summed."""
        st = self.state[b]
        st.structured = True
        gram = ghost.gramian(layer)
        self.acc.add_batch_gramian(b, gram)
        if self.materialise:
            dtype = torch.promote_types(self.params[b].dtype, torch.float32)
            self.acc.add_sum(b, ghost.materialise(layer, self.params[b].shape, dtype))
            return
        if self.single:
            self.acc.set_final(b, gram, self._counts(b, layer, gram, 1.0))
            return
        if not layer.owned:  # a view of a saved activation, which later batches may overwrite
            layer = ghost.LayerRows(
                layer.kind, layer.shared.clone(), layer.grads, layer.transposed, owned=True
            )
        st.held.append(layer)
        st.gram = gram  # the final Gramian, if no other batch comes
        held = sum(r.numel_held() for r in st.held)
        forced = self.strategy == "structured"  # asked for rows: they are kept whatever they cost
        if len(st.held) > 1 and held > m * self.params[b].numel() and not forced:
            self._to_sums(b)  # the rows cost more than the gradients: sum them once

    def _to_sums(self, b: int) -> None:
        st = self.state[b]
        if not st.held:
            return
        rows = ghost.concat(st.held)
        st.held = []
        st.plain = True  # its sum is formed now: later batches add their gradients to it
        dtype = torch.promote_types(self.params[b].dtype, torch.float32)
        self.acc.add_sum(b, ghost.materialise(rows, self.params[b].shape, dtype))

    def _counts(
        self, b: int, rows: ghost.LayerRows, gram: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """Return the non-finite entries per loss of block b (formed only if G is not finite)."""
        m = gram.shape[0]
        if bool(torch.isfinite(gram.diagonal()).all()):
            return torch.zeros(m, dtype=torch.int64)
        block = ghost.materialise(rows, self.params[b].shape, torch.float64) * scale
        return (~torch.isfinite(block)).sum(dim=1).cpu()

    def _width(self, b: int, kind: str, shared: torch.Tensor) -> int:
        if kind == "embedding":
            return self.params[b].shape[1]
        return self.params[b].numel() // shared.shape[1]


def _transposed(uses: list[tuple[int, int, Use]], ks: list[int]) -> bool:
    return uses[ks[0]][2].transposed or uses[ks[0]][2].kind == "conv"
