"""Lookahead affinity between losses: what one SGD step on one loss does to every other loss.

Inter-loss affinity (Fifty et al. 2021, "Efficiently Identifying Task Groupings in Multi-Task
Learning"): with g_i the gradient of loss i on the selected parameters theta,

    Z[i->j] = 1 - L_j(theta - lr g_i) / L_j(theta),

the relative decrease of loss j after one SGD step of size lr on loss i alone (positive: the step
on i helps j). The first-order estimate is Z1[i->j] = lr <g_i, g_j> / L_j = lr G_ij / L_j, since
L_j(theta - lr g_i) = L_j(theta) - lr <g_j, g_i> + O(lr^2); where Z and Z1 differ, curvature
matters at this lr. The same is measured for a step along each weighting method's combined
direction d = sum_k w_k g_k (w from the method on the batch's Gramian): a method "lowers every
loss" when L_j(theta - lr d) < L_j(theta) for every j.

Batches: each batch's step is taken on its own gradient and evaluated on the same batch (as in the
paper); `holdout=True` evaluates the step of batch k on batch k+1 (cyclically) instead, with first
order lr <g_i^(k), g_j^(k+1)> / L_j^(k+1). Reported values are means over batches.

The user's model is never mutated. Every forward runs through `torch.func.functional_call` on a
scope module holding the model, with the selected parameters replaced by detached copies
(as they are for the gradient pass, stepped for the lookahead passes; requiring grad like the
originals, so a `losses` that differentiates inside, as in meta-learning, still runs) and every
buffer replaced by a fresh copy, so BatchNorm running statistics and `num_batches_tracked`
update the copies only; `.grad` fields are left as found. Dropout: every forward on batch k (the
gradient pass and each stepped pass) runs inside `torch.random.fork_rng` reseeded with seed + k,
so the base and the stepped losses see the same dropout masks and the caller's RNG state is
untouched. Only torch's RNG is reseeded (not Python's `random` or numpy's).

Parameters in low precision (bfloat16, float16): theta - lr g is rounded to the parameters' dtype
(once, from float32), and where |lr g| is below half the spacing of the parameters' values the
step is lost, so the measured Z is the effect of another step. The rounding is measured: with
e_i = round(theta - lr g_i) - theta + lr g_i the error of the step taken, its first-order effect
on loss j is <e_i, g_j> (exact, from the blocks). An entry (i, j) is not measurable at this lr
when |<e_i, g_j>| > STEP_RTOL * max(|lr <g_i, g_j>|, STEP_ATOL * lr |g_i| |g_j|): the step
taken differs from the step asked by more than a quarter of its own first-order effect. Such
entries (and the same for each method's step) are None, with a warning, and take no part in the
curvature verdict. (Running the stepped model in float32 instead is no way out: a model whose
inputs or buffers are bfloat16 refuses float32 weights.) Float32 and float64 parameters are
stepped in their own dtype, unchecked: their rounding matters only for a step below about 1e-7
of the parameters' magnitude.

Losses that are not positive: the ratio L_j(theta - lr g) / L_j(theta) means nothing when
L_j <= 0 (log-likelihoods, rewards), so that column of `affinity` is None (with a warning) when
L_j <= 0 on any batch; `loss_change` = L_j(theta - lr g_i) - L_j(theta) and its first order
-lr G_ij stay defined, and "lowers every loss" is decided on `loss_change`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradtool.analysis.convert import to_list
from gradtool.engine import Strategy, batch_jacobian, block_gramian, other_leaves
from gradtool.engine.distributed import Group, agree
from gradtool.errors import (
    LossError,
    NonFiniteGradientError,
    UsageError,
    opt,
)
from gradtool.problem import Problem, no_batch_error
from gradtool.results.affinity import AffinityReport, MethodStep
from gradtool.results.base import finite_or_none
from gradtool.weightings import WEIGHTINGS, check_methods

DEFAULT_METHODS: tuple[str, ...] = ("mgda", "mean")
# The verdict calls the first-order estimate off when |Z - Z1| > CURVATURE_RTOL * max(|Z|, |Z1|)
# and the entry is not negligible (max(|Z|, |Z1|) > CURVATURE_ATOL).
CURVATURE_RTOL = 0.5
CURVATURE_ATOL = 1e-4
# An entry is not measurable when rounding the step to the parameters' dtype shifts its first-order
# effect by more than STEP_RTOL of max(|that effect|, STEP_ATOL * Cauchy-Schwarz bound).
STEP_RTOL = 0.25
STEP_ATOL = 1e-2


@dataclass
class _Batch:
    """One batch after its gradient pass: data, seed, L(theta), the Jacobian and method weights."""

    data: Any
    seed: int
    values: torch.Tensor  # (m,) float64: L_j(theta) on this batch
    blocks: list[torch.Tensor | None]  # per selected parameter: (m, numel) or None
    weights: dict[str, torch.Tensor]  # per method: (m,) float64, from this batch's Gramian
    gramian: torch.Tensor  # (m, m) float64: G of this batch


class _Sums:
    """Running sums over (step batch, evaluation batch) pairs of the per-pair matrices."""

    def __init__(self, m: int, methods: Sequence[str]) -> None:
        self.m = m
        self.count = 0
        zeros = torch.zeros(m, m, dtype=torch.float64)
        self.z, self.z1, self.change, self.change1 = (zeros.clone() for _ in range(4))
        self.values = torch.zeros(m, dtype=torch.float64)
        self.nonpositive: dict[int, float] = {}  # loss index -> a non-positive L_j seen
        self.nonfinite: set[tuple[str, int]] = set()  # (direction label, loss index)
        # (direction label, loss index) whose step rounds away; per label the worst share lost
        self.unmeasurable: set[tuple[str, int]] = set()
        self.lost: dict[str, float] = {}
        self.dtypes: set[torch.dtype] = set()  # of the parameters a lost step was rounded to
        self.steps = {
            name: {
                key: torch.zeros(m, dtype=torch.float64)
                for key in ("weights", "z", "z1", "change", "change1")
            }
            for name in methods
        }


def lookahead_affinity(
    problem: Problem,
    lr: float,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    holdout: bool = False,
    strategy: Strategy = "auto",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    group: Group | None = None,
) -> AffinityReport:
    """Return the lookahead affinities of `problem` at step size `lr` (see the module docstring).

    Z[i->j] = 1 - L_j(theta - lr g_i) / L_j(theta) and Z1[i->j] = lr G_ij / L_j, means over
    batches; per method, the same for the step theta - lr d with d = sum_k w_k g_k. The model's
    parameters, buffers and `.grad` fields are exactly as before afterwards.

    With a distributed `group` (torchrun), this rank evaluates its share of the batches (the
    problem's `shard`) and the per-batch sums are added across ranks: every rank returns the
    single-process result. `holdout` pairs each batch with the next one, on another rank, so it
    runs in a single process only.

    Raises:
        UsageError: `lr` is not positive and finite, a method is unknown, or `holdout` with
            fewer than two batches (or with a `group`).
    """
    check_lr(lr)
    methods = list(check_methods(methods))
    if holdout and group is not None:
        raise UsageError(
            f"{opt('holdout')} evaluates each step on the next batch, which another rank holds: "
            "it runs in a single process only",
            hint="run it without torchrun, or drop the holdout to evaluate on the same batch",
            option="holdout",
        )
    evaluator = _Evaluator(problem, strategy)
    sums: _Sums | None = None
    first: _Batch | None = None
    previous: _Batch | None = None
    count = 0
    error: BaseException | None = None
    try:
        rank, world = problem.shard or (0, 1)
        for k, data in enumerate(problem.iter_batches()):
            # seeded by the batch's global index: the same RNG draws as in a single process
            batch = evaluator.gradient_pass(data, seed + k * world + rank, methods)
            if sums is None:
                sums = _Sums(batch.values.shape[0], methods)
            sums.values += batch.values
            if not holdout:
                evaluator.lookahead(batch, batch, lr, methods, sums)
            elif previous is not None:
                evaluator.lookahead(previous, batch, lr, methods, sums)
            if first is None:
                first = batch
            previous = batch
            count += 1
            if progress is not None:
                progress(count)
    except Exception as exc:
        if group is None:
            raise
        error = exc
    if group is not None:
        agree(group, error)
        sums, count = _merge_ranks(group, sums, count, evaluator)
        if sums is not None:
            first = previous = first or _NO_BATCH  # only the holdout needs them
    if sums is None or first is None or previous is None:
        raise no_batch_error()
    if holdout:
        if count < 2:
            raise UsageError(
                f"{opt('holdout')} evaluates each step on the next batch, so it needs at least 2 "
                f"batches; the gradfile gives {count}",
                hint=f"add batches to the gradfile, or drop {opt('holdout')}",
                option="holdout",
            )
        evaluator.lookahead(previous, first, lr, methods, sums)
    report = _report(problem, evaluator.names, sums, count, lr, holdout, methods)
    report.meta.update(
        {"strategy": evaluator.strategy_used, "fallback_reason": evaluator.fallback_reason}
    )
    return report


_NO_BATCH: Any = object()  # a rank of a distributed run that had no batch of its own


def _merge_ranks(
    group: Group, sums: _Sums | None, count: int, evaluator: _Evaluator
) -> tuple[_Sums | None, int]:
    """Return the sums added over every rank (the same on each) and their batch count; the loss
    names and the engine's account come from the first rank that had a batch."""
    mine = (sums, count, evaluator.names, evaluator.strategy_used, evaluator.fallback_reason)
    seen: list[Any] = [None] * group.world
    dist.all_gather_object(seen, mine if count else None)
    given = [s for s in seen if s is not None]
    if not given:
        return None, 0
    total, names = given[0][0], given[0][2]
    for other, _, other_names, _, _ in given[1:]:
        if other_names != names:
            raise UsageError(
                "the ranks computed losses of different names: every rank must run the same losses",
                hint="make `losses` return the same names on every batch",
            )
        _add_sums(total, other)
    evaluator.names = names
    evaluator.strategy_used, evaluator.fallback_reason = given[0][3], given[0][4]
    return total, sum(s[1] for s in given)


def _add_sums(total: _Sums, other: _Sums) -> None:
    """Add `other`'s sums into `total` (sets united, first values kept, worst losses taken)."""
    for key in ("z", "z1", "change", "change1", "values"):
        setattr(total, key, getattr(total, key) + getattr(other, key))
    total.count += other.count
    for j, value in other.nonpositive.items():
        total.nonpositive.setdefault(j, value)
    total.nonfinite |= other.nonfinite
    total.unmeasurable |= other.unmeasurable
    for label, lost in other.lost.items():
        total.lost[label] = max(total.lost.get(label, 0.0), lost)
    total.dtypes |= other.dtypes
    for name, steps in other.steps.items():
        for key, value in steps.items():
            total.steps[name][key] = total.steps[name][key] + value


class _Scope(nn.Module):
    """A module holding the user's model, so `functional_call` can swap its tensors for any call.

    The user's `losses(model, batch)` calls the model itself; calling the scope with a closure
    runs that closure while the model's parameters and buffers are replaced.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[], Any]) -> Any:
        return fn()


class _Evaluator:
    """Runs the gradient and lookahead passes of one problem on swapped tensors."""

    def __init__(self, problem: Problem, strategy: Strategy) -> None:
        self.problem = problem
        self.strategy = strategy
        self.strategy_used = strategy  # what the engine ran on the first batch, and why
        self.fallback_reason: str | None = None
        self.scope = _Scope(problem.model)
        self.selected = list(problem.parameters)
        self.others = other_leaves(problem.model, [p for _, p in self.selected])
        self.buffers = dict(problem.model.named_buffers())
        self.names: list[str] = []
        device = problem.device or torch.device("cpu")
        self.rng_devices = [] if device.type == "cpu" else [device.index or 0]
        self.rng_device_type = "cuda" if device.type == "cpu" else device.type

    def _call(self, seed: int, params: Mapping[str, torch.Tensor], fn: Callable[[], Any]) -> Any:
        """Return fn() run with `params` and fresh buffer copies in the model, RNG seeded."""
        tensors = {f"model.{name}": t for name, t in params.items()}
        for name, buffer in self.buffers.items():
            tensors[f"model.{name}"] = buffer.detach().clone()
        with torch.random.fork_rng(devices=self.rng_devices, device_type=self.rng_device_type):
            torch.manual_seed(seed)
            return torch.func.functional_call(self.scope, tensors, (fn,), strict=False)

    def gradient_pass(self, data: Any, seed: int, methods: Sequence[str]) -> _Batch:
        """Return the batch with L(theta), its Jacobian blocks and each method's weights."""
        leaves = {name: p.detach().clone().requires_grad_(True) for name, p in self.selected}

        def run() -> tuple[list[str], list[float], list[torch.Tensor | None]]:
            losses = self.problem.evaluate(data)
            jac = batch_jacobian(
                losses, list(leaves.values()), strategy=self.strategy, other_leaves=self.others
            )
            if not self.names:
                self.strategy_used = jac.strategy
                self.fallback_reason = "; ".join(f.message for f in jac.fallbacks) or None
            return list(losses), jac.loss_values, jac.blocks

        names, values, blocks = self._call(seed, leaves, run)
        self.names = names
        m = len(names)
        gramian = torch.zeros(m, m, dtype=torch.float64)
        for block in blocks:
            if block is not None:
                gramian += block_gramian(block).cpu()
        bad = [names[i] for i in range(m) if not math.isfinite(float(gramian[i, i]))]
        if bad:
            raise NonFiniteGradientError(
                f"non-finite gradients (NaN or inf) for {', '.join(repr(b) for b in bad)}, so no "
                "lookahead step is meaningful",
                hint="run `gradtool inspect` on the file: it names the parameters",
            )
        weights = {name: WEIGHTINGS[name](gramian) for name in methods}
        return _Batch(
            data=data,
            seed=seed,
            values=torch.tensor(values, dtype=torch.float64),
            blocks=[None if b is None else b.detach() for b in blocks],
            weights=weights,
            gramian=gramian,
        )

    def stepped_values(
        self, direction: list[torch.Tensor | None], lr: float, at: _Batch
    ) -> tuple[list[float], _Rounding]:
        """Return L_j(theta - lr direction) on batch `at` (floats; NaN where not finite), and
        what rounding the stepped parameters to their dtype did to the step."""
        params = {}
        rounding = _Rounding(len(at.values))
        for b, ((name, p), step) in enumerate(zip(self.selected, direction, strict=True)):
            base = p.detach()
            if step is None:
                moved = base.clone()
            else:
                # One rounding, from at least float32: theta - lr d, then to the dtype.
                wide = torch.promote_types(base.dtype, torch.float32)
                want = (-lr) * step.to(wide).view_as(base)
                moved = (base.to(wide) + want).to(base.dtype)
                if base.dtype != wide:
                    rounding.add(moved.to(wide) - base.to(wide) - want, at.blocks[b], base.dtype)
            params[name] = moved.requires_grad_(p.requires_grad)

        def run() -> list[float]:
            # Grad stays enabled: a meta-learning `losses` differentiates inside (inner steps).
            with torch.enable_grad():
                return self._values(at.data)

        return self._call(at.seed, params, run), rounding

    def _values(self, data: Any) -> list[float]:
        """Return the losses' values for one batch, checked against the names seen first."""
        raw = self.problem.call_losses(data, when=" after a lookahead step")
        if not isinstance(raw, Mapping) or list(raw) != self.names:
            found = list(raw) if isinstance(raw, Mapping) else type(raw).__name__
            raise LossError(
                f"losses returned {found} after a lookahead step but {self.names} before",
                hint="return the same loss names, in the same order, on every call",
            )
        out = []
        for name, value in raw.items():
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise LossError(f"loss '{name}' should be a scalar tensor after a lookahead step")
            out.append(float(value.detach().reshape(()).real))
        return out

    def lookahead(
        self, step: _Batch, at: _Batch, lr: float, methods: Sequence[str], sums: _Sums
    ) -> None:
        """Add to `sums` the effect of the steps of batch `step` evaluated on batch `at`."""
        m = sums.m
        base = at.values
        cross = torch.zeros(m, m, dtype=torch.float64)  # cross[i][j] = <g_i^step, g_j^at>
        for b_step, b_at in zip(step.blocks, at.blocks, strict=True):
            if b_step is not None and b_at is not None:
                cross += (b_step.to(torch.float64) @ b_at.to(torch.float64).T).cpu()
        positive = base > 0
        for j in range(m):
            if not bool(positive[j]):
                sums.nonpositive.setdefault(j, float(base[j]))
        safe = torch.where(positive, base, 1.0)
        at_norms = at.gramian.diagonal().clamp(min=0).sqrt()
        for i in range(m):
            direction = [None if b is None else b[i] for b in step.blocks]
            values, rounding = self.stepped_values(direction, lr, at)
            stepped = torch.tensor(values, dtype=torch.float64)
            self._record(sums, f"loss {i}", stepped)
            size = lr * float(step.gramian[i, i].clamp(min=0).sqrt())
            rounding.judge(sums, f"loss {i}", lr * cross[i], size, at_norms)
            sums.change[i] += stepped - base
            sums.change1[i] += -lr * cross[i]
            sums.z[i] += torch.where(positive, 1.0 - stepped / safe, torch.nan)
            sums.z1[i] += torch.where(positive, lr * cross[i] / safe, torch.nan)
        for name in methods:
            w = step.weights[name]
            direction = [None if b is None else _combine(w, b) for b in step.blocks]
            values, rounding = self.stepped_values(direction, lr, at)
            stepped = torch.tensor(values, dtype=torch.float64)
            self._record(sums, name, stepped)
            rate = w @ cross  # (w^T C)_j = <d, g_j^at>
            size = lr * float((w @ step.gramian @ w).clamp(min=0).sqrt())  # lr |d|
            rounding.judge(sums, name, lr * rate, size, at_norms)
            acc = sums.steps[name]
            acc["weights"] += w
            acc["change"] += stepped - base
            acc["change1"] += -lr * rate
            acc["z"] += torch.where(positive, 1.0 - stepped / safe, torch.nan)
            acc["z1"] += torch.where(positive, lr * rate / safe, torch.nan)
        sums.count += 1

    @staticmethod
    def _record(sums: _Sums, label: str, stepped: torch.Tensor) -> None:
        for j in torch.nonzero(~torch.isfinite(stepped)).flatten().tolist():
            sums.nonfinite.add((label, j))


class _Rounding:
    """What rounding a stepped parameter set to its dtype did to the step of one direction:
    shift[j] = <e, g_j^at> summed over the blocks (e = the step taken minus the step asked),
    and |e|^2."""

    def __init__(self, m: int) -> None:
        self.shift = torch.zeros(m, dtype=torch.float64)
        self.error_sq = 0.0
        self.dtypes: set[torch.dtype] = set()

    def add(self, error: torch.Tensor, block: torch.Tensor | None, dtype: torch.dtype) -> None:
        """Add one parameter's rounding error (the block: (m, numel) gradients at `at`)."""
        flat = error.reshape(-1).to(torch.float64)
        if not bool(flat.any()):
            return
        self.dtypes.add(dtype)
        self.error_sq += float(flat @ flat)
        if block is not None:
            self.shift += (block.to(torch.float64) @ flat).cpu()

    def judge(
        self,
        sums: _Sums,
        label: str,
        first_order: torch.Tensor,
        size: float,
        norms: torch.Tensor,
    ) -> None:
        """Mark (label, j) not measurable where |shift_j| > STEP_RTOL * max(|lr <d, g_j>|,
        STEP_ATOL * lr |d| |g_j|); `first_order` = lr <d, g_j^at>, `size` = lr |d|, `norms` =
        |g_j^at|."""
        if not self.dtypes:
            return
        scale = torch.maximum(first_order.abs(), STEP_ATOL * size * norms)
        bad = self.shift.abs() > STEP_RTOL * scale
        if not bool(bad.any()):
            return
        for j in torch.nonzero(bad).flatten().tolist():
            sums.unmeasurable.add((label, j))
        lost = math.sqrt(self.error_sq) / size if size > 0 else 1.0
        sums.lost[label] = max(sums.lost.get(label, 0.0), lost)
        sums.dtypes |= self.dtypes


def _combine(w: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """Return d = sum_k w_k J_k for one (m, numel) block, in at least float32 (a bfloat16 sum
    of m rows would round the direction before the step is even taken)."""
    wide = torch.promote_types(block.dtype, torch.float32)
    return w.to(device=block.device, dtype=wide) @ block.to(wide)


def check_lr(lr: float) -> None:
    """Raise a `UsageError` unless `lr` is a positive finite number."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UsageError(
            f"{opt('lr')} should be a positive number; found {lr}",
            hint=f"the SGD step size of the lookahead, e.g. {opt('lr', 0.1)}",
            option="lr",
        )


def _report(
    problem: Problem,
    names: list[str],
    sums: _Sums,
    num_batches: int,
    lr: float,
    holdout: bool,
    methods: Sequence[str],
) -> AffinityReport:
    m = len(names)
    n = max(sums.count, 1)
    undefined = sorted(sums.nonpositive)
    z, z1 = sums.z / n, sums.z1 / n
    change = sums.change / n
    for j in undefined:  # the ratio is meaningless where L_j <= 0 on some batch
        z[:, j] = torch.nan
        z1[:, j] = torch.nan
    for label, j in sums.unmeasurable:  # the step taken is not the step asked (rounding)
        if label.startswith("loss "):
            i = int(label.split()[1])
            z[i, j] = change[i, j] = torch.nan
    steps = []
    for name in methods:
        acc = sums.steps[name]
        sz, sz1 = acc["z"] / n, acc["z1"] / n
        for j in undefined:
            sz[j] = torch.nan
            sz1[j] = torch.nan
        method_change = acc["change"] / n
        for label, j in sums.unmeasurable:
            if label == name:
                sz[j] = method_change[j] = torch.nan
        steps.append(
            MethodStep(
                method=name,
                name=WEIGHTINGS[name].display,
                weights=dict(zip(names, (acc["weights"] / n).tolist(), strict=True)),
                affinity=_named(names, sz),
                affinity_first_order=_named(names, sz1),
                loss_change=_named(names, method_change),
                loss_change_first_order=_named(names, acc["change1"] / n),
                lowers_every_loss=None
                if any(label == name for label, _ in sums.unmeasurable)
                else bool(torch.isfinite(method_change).all() and (method_change < 0).all()),
            )
        )
    report = AffinityReport(
        command="affinity",
        losses=list(names),
        loss_values=dict(zip(names, (sums.values / num_batches).tolist(), strict=True)),
        num_batches=num_batches,
        parameters={
            "count": len(problem.parameters),
            "numel": sum(p.numel() for _, p in problem.parameters),
        },
        lr=float(lr),
        holdout=holdout,
        affinity=to_list(z),
        affinity_first_order=to_list(z1),
        loss_change=to_list(change),
        loss_change_first_order=to_list(sums.change1 / n),
        methods_step=steps,
    )
    report.warnings = _warnings(names, sums, lr)
    report.verdict = affinity_verdict(report, _unmeasurable_methods(sums, methods, names))
    assert len(report.affinity) == m
    return report


def _named(names: Sequence[str], t: torch.Tensor) -> dict[str, float | None]:
    return {name: finite_or_none(float(x)) for name, x in zip(names, t.tolist(), strict=True)}


def _warnings(names: Sequence[str], sums: _Sums, lr: float) -> list[str]:
    out = []
    for j, value in sorted(sums.nonpositive.items()):
        out.append(
            f"loss '{names[j]}' is not positive ({value:.4g}), so its relative change "
            "1 - L(theta - lr g) / L(theta) is undefined: its affinity column is null; "
            "see loss_change in the JSON document for the absolute change"
        )
    if sums.nonfinite:
        labels = sorted({label for label, _ in sums.nonfinite})
        shown = ", ".join(_direction(label, names) for label in labels)
        out.append(f"a step of lr {lr:g} along {shown} made some loss non-finite; try a smaller lr")
    if sums.unmeasurable:
        labels = sorted({label for label, _ in sums.unmeasurable})
        on = [_direction(label, names) for label in labels if label.startswith("loss ")]
        along = [label for label in labels if not label.startswith("loss ")]
        shown = ", ".join(
            ([f"on {_and(on)}"] if on else []) + ([f"along {_and(along)}"] if along else [])
        )
        dtypes = " and ".join(sorted(str(d).removeprefix("torch.") for d in sums.dtypes))
        worst = max(sums.lost.values())
        out.append(
            f"at lr {lr:g} each step ({shown}) is too small for the {dtypes} parameters: "
            f"rounded to their resolution it loses up to {100 * min(worst, 1.0):.0f}% of itself, "
            f"so {len(sums.unmeasurable)} measured entries would be the effect of another step: "
            "they are null (the first-order estimates stay); use a larger lr, or float32 "
            "parameters"
        )
    return out


def _direction(label: str, names: Sequence[str]) -> str:
    return names[int(label.split()[1])] if label.startswith("loss ") else label


def _unmeasurable_methods(
    sums: _Sums, methods: Sequence[str], names: Sequence[str]
) -> dict[str, set[str]]:
    """Return, per method, the losses whose change its rounded step cannot measure."""
    out: dict[str, set[str]] = {name: set() for name in methods}
    for label, j in sums.unmeasurable:
        if label in out:
            out[label].add(names[j])
    return out


def affinity_verdict(
    report: AffinityReport, unmeasurable: Mapping[str, set[str]] | None = None
) -> list[str]:
    """Return short sentences: what one step of each method does, harmful pairs, curvature.

    `unmeasurable[method]`: the losses whose change that method's step cannot measure at this lr
    (its step rounds away in the parameters' dtype): said so, not counted as raised. Entries that
    are None take no part in the curvature sentence.
    """
    names = report.losses
    m = len(names)
    lines: list[str] = []
    parts = []
    for step in report.methods_step:
        if step.lowers_every_loss:
            parts.append(f"one step of {step.method} lowers every loss")
            continue
        unknown = (unmeasurable or {}).get(step.method, set())
        if unknown:
            parts.append(
                f"one step of {step.method} cannot be measured at this lr for "
                f"{_and([n for n in names if n in unknown])} (it rounds away)"
            )
            continue
        changes = {name: step.loss_change[name] for name in names}
        raised = [name for name, c in changes.items() if c is None or c > 0]
        still = [name for name, c in changes.items() if c == 0]
        if not raised:
            parts.append(
                f"one step of {step.method} leaves every loss unchanged"
                if len(still) == m
                else f"one step of {step.method} leaves {_and(still)} unchanged"
            )
            continue
        text = f"one step of {step.method} raises {_and(raised)}"
        if still:
            text += f" and leaves {_and(still)} unchanged"
        parts.append(text)
    if parts:
        lines.append("; ".join(parts))
    harmful = sorted(
        (z, i, j)
        for i in range(m)
        for j in range(m)
        if i != j and (z := report.affinity[i][j]) is not None and z < 0
    )
    for z, i, j in harmful[:3]:
        lines.append(f"a step on {names[i]} alone raises {names[j]} by {100 * -z:.3g}%")
    raised = sorted(  # where the ratio is undefined (L_j <= 0), by the absolute change
        (-c, i, j)
        for i in range(m)
        for j in range(m)
        if i != j
        and report.affinity[i][j] is None
        and (c := report.loss_change[i][j]) is not None
        and c > 0
    )
    for c, i, j in raised[: max(0, 3 - len(harmful))]:
        lines.append(f"a step on {names[i]} alone raises {names[j]} by {-c:.3g} (absolute)")
    off = []
    compared = 0
    for i in range(m):
        for j in range(m):
            z, z1 = report.affinity[i][j], report.affinity_first_order[i][j]
            if z is None or z1 is None:
                continue
            compared += 1
            big = max(abs(z), abs(z1))
            if big > CURVATURE_ATOL and abs(z - z1) > CURVATURE_RTOL * big:
                off.append((abs(z - z1), i, j, z, z1))
    if off:
        _, i, j, z, z1 = max(off)
        lines.append(
            f"at lr {report.lr:g} the first-order estimate is off by more than half for "
            f"{len(off)} of {compared} entries (worst {names[i]} -> {names[j]}: measured "
            f"{100 * z:+.3g}%, first order {100 * z1:+.3g}%): curvature matters at this step size"
        )
    elif compared == m * m and m:
        lines.append(
            f"at lr {report.lr:g} the first-order estimate lr G_ij / L_j is within half of every "
            "measured affinity"
        )
    elif compared:
        lines.append(
            f"at lr {report.lr:g} the first-order estimate lr G_ij / L_j is within half of the "
            f"{compared} measured affinities ({m * m - compared} of {m * m} are not measured)"
        )
    return lines


def _and(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
