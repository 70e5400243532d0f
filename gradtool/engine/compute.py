"""The engine's entry point: a `Problem` in, the Gramians of its per-loss gradients out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from gradtool.engine.accumulator import GramianAccumulator
from gradtool.engine.distributed import Group, agree, reduce_accumulator
from gradtool.engine.jacobian import batch_jacobian
from gradtool.engine.low_memory import accumulate_batch, look_ahead
from gradtool.engine.result import STRATEGIES, EngineResult, Strategy
from gradtool.engine.structured import StructuredEngine
from gradtool.errors import UsageError, opt
from gradtool.problem import Problem


def compute_gramians(
    problem: Problem,
    *,
    strategy: Strategy = "auto",
    progress: Callable[[int], None] | None = None,
    low_memory: bool = False,
    retain_graph: bool = False,
    group: Group | None = None,
) -> EngineResult:
    """Return the Gramians of the mean per-loss gradients of `problem` over its batches.

    `low_memory` takes each parameter block's Gramian as its gradients arrive, so no loss's
    whole gradient is held: O(m x largest block) extra memory with one batch (see
    `gradtool.engine.low_memory`). `retain_graph` leaves the losses' graph for the caller's own
    backward (live losses: `analyze`, the Monitor). `progress(k)` is called after batch k.

    `group` (a `gradtool.engine.distributed.Group`): this rank's batches are its share (the
    problem's `shard`, or its own losses in DDP training), and the result is the global one, the
    same on every rank: see `gradtool.engine.distributed`.
    """
    if group is not None:
        return _distributed(problem, group, strategy, progress, low_memory, retain_graph)
    check_strategy(strategy)
    params = [p for _, p in problem.parameters]
    others = other_leaves(problem.model, params)
    acc = GramianAccumulator(problem.parameters)
    if strategy == "structured" or (strategy == "auto" and not low_memory):
        # no look-ahead here: fetching batch k + 1 before batch k is evaluated breaks an
        # iterator that refills one buffer; the engine learns there was one batch at the end
        batches = problem.iter_batches()
        return _structured(problem, acc, batches, False, strategy, progress, retain_graph, others)
    # only the low-memory engine looks one batch ahead (to free a single batch's blocks)
    batches, single = (
        look_ahead(problem.iter_batches()) if low_memory else (problem.iter_batches(), False)
    )
    _accumulate(problem, acc, batches, single, strategy, progress, low_memory, retain_graph, others)
    result = acc.result()
    result.low_memory = low_memory
    return result


def _accumulate(
    problem: Problem,
    acc: GramianAccumulator,
    batches: Iterable[object],
    single: bool,
    strategy: Strategy,
    progress: Callable[[int], None] | None,
    low_memory: bool,
    retain_graph: bool,
    others: list[torch.Tensor],
) -> None:
    params = [p for _, p in problem.parameters]
    for batch in batches:
        losses = problem.evaluate(batch)
        if low_memory:
            accumulate_batch(
                acc,
                losses,
                params,
                strategy=strategy,
                keep=not single,
                retain_graph=retain_graph,
                other_leaves=others,
            )
        else:
            jac = batch_jacobian(
                losses, params, strategy=strategy, retain_graph=retain_graph, other_leaves=others
            )
            acc.add(list(losses), jac)
            del jac
        del losses
        if progress is not None:
            progress(acc.count)


def _distributed(
    problem: Problem,
    group: Group,
    strategy: Strategy,
    progress: Callable[[int], None] | None,
    low_memory: bool,
    retain_graph: bool,
) -> EngineResult:
    """This rank's batches accumulated with every block's sum kept, then reduced across ranks."""
    check_strategy(strategy)
    params = [p for _, p in problem.parameters]
    others = other_leaves(problem.model, params)
    acc = GramianAccumulator(problem.parameters)
    engine: StructuredEngine | None = None
    error: BaseException | None = None
    try:
        batches = problem.iter_batches()
        if strategy == "structured" or (strategy == "auto" and not low_memory):
            engine = StructuredEngine(
                acc,
                problem.parameters,
                strategy=strategy,
                single=False,
                retain_graph=retain_graph,
                other_leaves=others,
                materialise=True,
            )
            _feed(problem, engine, batches, progress)
        else:
            _accumulate(
                problem, acc, batches, False, strategy, progress, low_memory, retain_graph, others
            )
    except Exception as exc:
        error = exc
    agree(group, error)
    result = reduce_accumulator(acc, group)
    result.low_memory = low_memory
    if engine is not None and engine.ran:
        result.strategy = "structured"
        result.paths = engine.paths()
        result.uncovered = dict(engine.uncovered)
    return result


def _feed(
    problem: Problem,
    engine: StructuredEngine,
    batches: Iterable[object],
    progress: Callable[[int], None] | None,
) -> None:
    """Evaluate each batch's losses and add them to `engine`, one batch's graph at a time."""
    for batch in batches:
        losses = problem.evaluate(batch)
        engine.add(losses)
        del losses
        if progress is not None:
            progress(engine.acc.count)


def _structured(
    problem: Problem,
    acc: GramianAccumulator,
    batches: Iterable[object],
    single: bool,
    strategy: Strategy,
    progress: Callable[[int], None] | None,
    retain_graph: bool,
    others: list[torch.Tensor],
) -> EngineResult:
    engine = StructuredEngine(
        acc,
        problem.parameters,
        strategy=strategy,
        single=single,
        retain_graph=retain_graph,
        other_leaves=others,
    )
    _feed(problem, engine, batches, progress)
    engine.finish()
    result = acc.result()
    if engine.ran:
        result.strategy = "structured"
    if engine.ran or strategy == "structured":
        result.paths = engine.paths()
        result.uncovered = dict(engine.uncovered)
    return result


def check_strategy(strategy: str) -> None:
    """Raise a `UsageError` unless `strategy` is one of `STRATEGIES`."""
    if strategy not in STRATEGIES:
        raise UsageError(
            f"{opt('strategy')} should be one of {', '.join(STRATEGIES)}; found {strategy!r}",
            option="strategy",
        )


def other_leaves(model: nn.Module, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Return the model's parameters outside `params`: their `.grad` must be left as found."""
    selected = {id(p) for p in params}
    return [p for p in model.parameters() if id(p) not in selected]
