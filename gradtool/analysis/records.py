"""A training step's engine result -> the `Record` a Monitor writes: the Gramians (whole model and
per layer), norms and cosines, and the MGDA weights; nothing of the snapshot report's verdicts."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from gradtool.analysis.convert import to_list
from gradtool.analysis.layers import GroupsArg, groups_of, layers_of
from gradtool.analysis.report import ParetoOptions, check_finite
from gradtool.engine import EngineResult
from gradtool.linalg import gramian as gm
from gradtool.linalg.pareto import pareto_solution
from gradtool.results.runlog import LayerRecord, ParetoRecord, Record


def build_record(
    result: EngineResult,
    *,
    step: int,
    depth: int | None,
    pareto: ParetoOptions | None,
    layers: bool = True,
    run: str | None = None,
    groups: GroupsArg | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> Record:
    """Return the Record of one step (of the run `run`, an id); raise `NonFiniteGradientError`
    on non-finite gradients.

    dot = G (whole model), norms = sqrt(diag G), cosine = G_ij / sqrt(G_ii G_jj); per layer
    (module path cut to `depth`) its Gramian; per parameter group of `groups` (name -> globs;
    `aliases`: other names of tied parameters) its Gramian; with `pareto`, the exact MGDA
    weights of G.
    """
    check_finite(result)
    names = result.loss_names
    g = result.gramian
    norms = gm.norms(g)
    layer_records = (
        [LayerRecord(x.name, x.numel, to_list(x.gramian)) for x in layers_of(result, depth)]
        if layers
        else []
    )
    group_records = (
        [
            LayerRecord(x.name, x.numel, to_list(x.gramian))
            for x in groups_of(result, groups, aliases=aliases)
        ]
        if groups
        else None
    )
    pareto_record = None
    if pareto is not None:
        sol = pareto_solution(
            g, result.loss_values, names, normalize=pareto.normalize, tol=pareto.tol
        )
        pareto_record = ParetoRecord(
            "mgda",
            sol.normalize,
            dict(zip(names, sol.weights.tolist(), strict=True)),
            sol.min_norm,
            sol.stationary,
        )
    return Record(
        step=step,
        time=time.time(),
        losses=list(names),
        loss_values=dict(zip(names, result.loss_values, strict=True)),
        parameters={"count": len(result.param_names), "numel": sum(result.param_numels)},
        dot=to_list(g),
        norms={name: float(norms[i]) for i, name in enumerate(names)},
        cosine=to_list(gm.cosine(g)),
        layers=layer_records,
        groups=group_records,
        pareto=pareto_record,
        run=run,
        world=result.world if result.world > 1 else None,
        local=to_list(result.local_gramian)
        if result.world > 1 and result.local_gramian is not None
        else None,
    )
