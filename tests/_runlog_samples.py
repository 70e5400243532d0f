"""Hand-made run-log records for the timeline, run-log, plot and `report` tests.

Gradients are given as explicit vectors, so every Gramian (and every cosine the tests expect) is
computed here in plain Python, independently of gradtool.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from gradtool.results.runlog import LayerRecord, ParetoRecord, Record

Vectors = Mapping[str, Sequence[float]]


def gram(vectors: Vectors) -> list[list[float]]:
    """Return G_ij = <g_i, g_j> for the vectors, in their order."""
    rows = list(vectors.values())
    return [[sum(a * b for a, b in zip(u, v, strict=True)) for v in rows] for u in rows]


def unit(angle_deg: float, norm: float = 1.0) -> list[float]:
    """Return the 2-d vector of length `norm` at `angle_deg` from the x axis."""
    t = math.radians(angle_deg)
    return [norm * math.cos(t), norm * math.sin(t)]


def make_record(
    step: int,
    vectors: Vectors,
    *,
    layers: Mapping[str, Vectors] | None = None,
    pareto: Mapping[str, float] | None = None,
    loss_values: Mapping[str, float] | None = None,
) -> Record:
    """Return a Record whose Gramians are those of `vectors` (and of each layer's vectors)."""
    names = list(vectors)
    return Record(
        step=step,
        losses=names,
        loss_values=dict(loss_values or {n: 1.0 for n in names}),
        dot=gram(vectors),
        layers=[
            LayerRecord(name=name, numel=len(next(iter(v.values()))), dot=gram(v))
            for name, v in (layers or {}).items()
        ],
        pareto=None
        if pareto is None
        else ParetoRecord("mgda", "none", dict(pareto), min_norm=0.5, stationary=False),
    )


def conflict_run() -> list[Record]:
    """Return four records of losses a, b whose whole-model cosines are 0.5, -0.5, -0.8, 0.2
    (steps 0, 10, 20, 30); a's norm goes 2, 1, 0.5, 0.25, b's stays 1. Layer `shared` holds the
    same vectors, layer `head` is reached by a alone."""
    cosines = [0.5, -0.5, -0.8, 0.2]
    norms_a = [2.0, 1.0, 0.5, 0.25]
    records = []
    for k, (c, na) in enumerate(zip(cosines, norms_a, strict=True)):
        vectors = {"a": unit(0.0, na), "b": unit(math.degrees(math.acos(c)))}
        layers = {"shared": vectors, "head": {"a": [1.0], "b": [0.0]}}
        records.append(
            make_record(10 * k, vectors, layers=layers, loss_values={"a": 4.0 - k, "b": 2.0})
        )
    return records


def write_run(path: Path, records: Sequence[Record], *, header: bool = True) -> Path:
    """Write `records` as a run log at `path` (with a Monitor-like header line)."""
    lines = []
    if header:
        lines.append(
            json.dumps({"schema_version": 1, "kind": "gradtool.run", "every": 10, "metadata": {}})
        )
    lines += [r.to_json() for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def many_losses_run(
    m: int = 12, records: int = 8, *, dim: int = 6, seed: int = 0, prefix: str = "l"
) -> list[Record]:
    """Return `records` records (steps 0, 10, ...) of `m` losses named `prefix` + k (two digits)
    with random gradients in `dim` dimensions (a seeded `random.Random`), loss values k + 1 / (t
    + 1), and one layer `trunk` holding the same vectors."""
    rng = random.Random(seed)
    names = [f"{prefix}{k:02d}" for k in range(m)]
    out = []
    for t in range(records):
        vectors = {n: [rng.gauss(0, 1) for _ in range(dim)] for n in names}
        out.append(
            make_record(
                10 * t,
                vectors,
                layers={"trunk": vectors},
                loss_values={n: k + 1 / (t + 1) for k, n in enumerate(names)},
            )
        )
    return out
