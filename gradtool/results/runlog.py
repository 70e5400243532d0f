"""The run log: the JSON lines a `Monitor` writes during training, their schema, and the reader.

A run log is UTF-8 text, one JSON object per line (schema_version 1):

    {"schema_version": 1, "kind": "gradtool.run", ...}     a header, each time a Monitor opens it
    {"schema_version": 1, "kind": "gradtool.record", ...}  one record per recorded training step

A record holds the Gramians (`dot`, whole model and per layer) from which every statistic is
recomputed: norms |g_i| = sqrt(G_ii), cosines G_ij / sqrt(G_ii G_jj), MGDA weights. `norms` and
`cosine` are stored too, for readers without gradtool (jq, pandas).

Reading is forgiving where a crash leaves damage and strict where the file is of another kind:
- an invalid last line without its newline (a run killed mid-write) is skipped with a warning;
- any other line that is not JSON is skipped with a warning naming its line number;
- a line of another `schema_version` is an error (`RunLogError`), as are an empty file, a file
  with no record, and records whose loss names differ;
- records repeating an earlier step (a run resumed from a checkpoint) replace the earlier ones.

Torch-free itself (reading a run log needs no torch; `gradtool report` imports it for the timeline).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradtool.errors import RunLogError
from gradtool.results.base import Matrix, finite_or_none, nan_for_none

RUN_SCHEMA_VERSION = 1
RUN_KIND = "gradtool.run"
RECORD_KIND = "gradtool.record"

RUN_LOG_HINT = "a run log is the .jsonl file a gradtool.Monitor writes during training"


@dataclass
class LayerRecord:
    """One module path's Gramian at one step: G_layer = sum over its blocks b of J_b J_b^T."""

    name: str
    numel: int
    dot: Matrix

    def gramian(self) -> list[list[float]]:
        """Return the layer's Gramian as floats (an undefined entry as NaN)."""
        return nan_for_none(self.dot)


@dataclass
class ParetoRecord:
    """The MGDA min-norm result at one step: weights on the simplex, |d| and stationarity."""

    method: str
    normalize: str
    weights: dict[str, float]
    min_norm: float
    stationary: bool


@dataclass
class Record:
    """One recorded training step: loss values and the Gramians of the per-loss gradients.

    `dot` is the whole-model Gramian G (m x m, in the order of `losses`); `layers` hold the
    per-layer Gramians. `norms` and `cosine` are derived from `dot` (may be None when read from
    a file that omits them). `line` is the line number the record was read from (not written).
    """

    step: int
    losses: list[str]
    loss_values: dict[str, float | None]
    dot: Matrix
    layers: list[LayerRecord] = field(default_factory=list)
    pareto: ParetoRecord | None = None
    norms: dict[str, float | None] | None = None
    cosine: Matrix | None = None
    parameters: dict[str, int] | None = None
    time: float | None = None
    line: int | None = field(default=None, compare=False, repr=False)

    def gramian(self) -> list[list[float]]:
        """Return the whole-model Gramian G as floats (an undefined entry as NaN)."""
        return nan_for_none(self.dot)

    def to_dict(self) -> dict[str, Any]:
        """Return the record as its JSON object (schema_version and kind first, NaN as None)."""
        body: dict[str, Any] = {
            "schema_version": RUN_SCHEMA_VERSION,
            "kind": RECORD_KIND,
            "step": self.step,
            "time": self.time,
            "losses": list(self.losses),
            "loss_values": dict(self.loss_values),
            "parameters": self.parameters,
            "dot": self.dot,
            "norms": self.norms,
            "cosine": self.cosine,
            "layers": [
                {"name": layer.name, "numel": layer.numel, "dot": layer.dot}
                for layer in self.layers
            ],
        }
        if self.pareto is not None:
            p = self.pareto
            body["pareto"] = {
                "method": p.method,
                "normalize": p.normalize,
                "weights": dict(p.weights),
                "min_norm": p.min_norm,
                "stationary": p.stationary,
            }
        return finite_or_none(body)

    def to_json(self) -> str:
        """Return the record as one line of strict JSON (no newline, no NaN)."""
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "record") -> Record:
        """Return the Record of a parsed JSON object; raise `RunLogError` naming `where` if a
        field is missing or of the wrong type."""
        check = _Checker(where)
        losses = check.names(obj, "losses")
        m = len(losses)
        layers = [
            LayerRecord(
                name=check.typed(layer, "name", str, f"layers[{k}]"),
                numel=check.integer(layer, "numel", f"layers[{k}]"),
                dot=check.matrix(layer, "dot", m, f"layers[{k}]"),
            )
            for k, layer in enumerate(check.layer_list(obj))
        ]
        pareto = None
        raw_pareto = obj.get("pareto")
        if raw_pareto is not None:
            if not isinstance(raw_pareto, Mapping):
                check.fail("pareto", "an object", raw_pareto)
            pareto = ParetoRecord(
                method=str(raw_pareto.get("method", "mgda")),
                normalize=str(raw_pareto.get("normalize", "none")),
                weights=check.by_loss(raw_pareto, "weights", losses, "pareto", nullable=False),
                min_norm=check.number(raw_pareto, "min_norm", "pareto"),
                stationary=check.typed(raw_pareto, "stationary", bool, "pareto"),
            )
        norms = obj.get("norms")
        cosine = obj.get("cosine")
        raw_time = obj.get("time")
        return cls(
            step=check.integer(obj, "step"),
            losses=losses,
            loss_values=check.by_loss(obj, "loss_values", losses),
            dot=check.matrix(obj, "dot", m),
            layers=layers,
            pareto=pareto,
            norms=check.by_loss(obj, "norms", losses) if norms is not None else None,
            cosine=check.matrix(obj, "cosine", m) if cosine is not None else None,
            parameters=dict(obj["parameters"]) if isinstance(obj.get("parameters"), dict) else None,
            time=float(raw_time) if isinstance(raw_time, (int, float)) else None,
        )


@dataclass
class RunLog:
    """A run log as read: its first header (None if it has none), records sorted by step, and
    the warnings met while reading (skipped lines, replaced steps)."""

    path: Path
    header: dict[str, Any] | None
    records: list[Record]
    warnings: list[str] = field(default_factory=list)
    sessions: int = 0

    @property
    def losses(self) -> list[str]:
        """Return the loss names, in the order of the records' matrices."""
        return list(self.records[0].losses)


def run_header(
    *, every: int, depth: int | None, metadata: Mapping[str, Any], versions: Mapping[str, str]
) -> dict[str, Any]:
    """Return the header object a Monitor writes when it opens a run log."""
    return finite_or_none(
        {
            "schema_version": RUN_SCHEMA_VERSION,
            "kind": RUN_KIND,
            **versions,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "every": every,
            "depth": depth,
            "metadata": dict(metadata),
        }
    )


def read_run(path: Path | str) -> RunLog:
    """Return the run log at `path`: header, records (by step) and reading warnings.

    Raises `RunLogError` when the file is missing, empty, holds no record, mixes loss names, or
    has a line of another schema_version.
    """
    path = Path(path)
    if not path.exists():
        raise RunLogError(f"run log {path} does not exist", hint=RUN_LOG_HINT)
    if path.is_dir():
        raise RunLogError(f"run log {path} is a directory", hint=RUN_LOG_HINT)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise RunLogError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise RunLogError(
            f"run log {path} is empty",
            hint="a Monitor writes a header line when it opens the file, then one record "
            "every `every` steps",
        )
    complete = text.endswith("\n")
    lines = text.split("\n")
    if complete:
        lines.pop()
    header: dict[str, Any] | None = None
    sessions = 0
    records: list[Record] = []
    warnings: list[str] = []
    valid = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not complete:
                warnings.append(
                    f"line {number} of {path} is truncated (the run was likely stopped while "
                    "writing it); skipped"
                )
            else:
                warnings.append(f"line {number} of {path} is not valid JSON; skipped")
            continue
        valid += 1
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind not in (RUN_KIND, RECORD_KIND):
            warnings.append(f"line {number} of {path} is not a gradtool run-log line; skipped")
            continue
        version = obj.get("schema_version")
        if version != RUN_SCHEMA_VERSION:
            newer = isinstance(version, int) and version > RUN_SCHEMA_VERSION
            raise RunLogError(
                f"{path} has schema_version {version!r} (line {number}); "
                f"this gradtool reads {RUN_SCHEMA_VERSION}",
                hint="upgrade gradtool (pip install -U gradtool)"
                if newer
                else "read it with the gradtool version that wrote it",
            )
        if kind == RUN_KIND:
            sessions += 1
            header = header or obj
            continue
        record = Record.from_dict(obj, f"{path} line {number}")
        record.line = number
        records.append(record)
    if not records:
        raise _no_records(path, text, valid, sessions)
    _check_same_losses(path, records)
    records, replaced = _latest_per_step(records)
    if replaced:
        warnings.append(
            f"{replaced} record(s) repeat an earlier step (a resumed run?); the later ones are kept"
        )
    return RunLog(path=path, header=header, records=records, warnings=warnings, sessions=sessions)


def _no_records(path: Path, text: str, valid: int, sessions: int) -> RunLogError:
    if sessions:
        return RunLogError(
            f"run log {path} holds no record yet (only its header)",
            hint="records are written at steps 0, every, 2*every, ...: did training reach one?",
        )
    if valid == 0:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and "command" in doc:
            return RunLogError(
                f"{path} is a `gradtool {doc['command']} --json` document, not a run log",
                hint=RUN_LOG_HINT,
            )
    return RunLogError(f"{path} is not a gradtool run log: no line is a record", hint=RUN_LOG_HINT)


def _check_same_losses(path: Path, records: list[Record]) -> None:
    first = records[0].losses
    for record in records[1:]:
        if record.losses != first:
            raise RunLogError(
                f"{path} line {record.line} has losses {record.losses} but line "
                f"{records[0].line} has {first}",
                hint="a run log holds one run: give each run its own file",
            )


def _latest_per_step(records: list[Record]) -> tuple[list[Record], int]:
    by_step: dict[int, Record] = {}
    for record in records:
        by_step[record.step] = record
    return sorted(by_step.values(), key=lambda r: r.step), len(records) - len(by_step)


class _Checker:
    """Field checks for `Record.from_dict`, raising `RunLogError` that names the place."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, expected: str, found: object) -> None:
        shown = "missing" if found is _MISSING else f"found {type(found).__name__}"
        raise RunLogError(
            f"{self.where}: '{key}' should be {expected}; {shown}",
            hint="the file was edited or written by something other than gradtool.Monitor",
        )

    def get(self, obj: Mapping[str, Any], key: str, prefix: str = "") -> Any:
        if not isinstance(obj, Mapping):
            self.fail(prefix or key, "an object", obj)
        return obj.get(key, _MISSING)

    def typed(self, obj: Mapping[str, Any], key: str, kind: type, prefix: str = "") -> Any:
        value = self.get(obj, key, prefix)
        if not isinstance(value, kind):
            self.fail(_dotted(prefix, key), f"a {kind.__name__}", value)
        return value

    def integer(self, obj: Mapping[str, Any], key: str, prefix: str = "") -> int:
        value = self.get(obj, key, prefix)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(_dotted(prefix, key), "an integer", value)
        return value

    def number(self, obj: Mapping[str, Any], key: str, prefix: str = "") -> float:
        value = self.get(obj, key, prefix)
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(_dotted(prefix, key), "a number", value)
        return float(value)

    def names(self, obj: Mapping[str, Any], key: str) -> list[str]:
        value = self.get(obj, key)
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            self.fail(key, "a non-empty list of loss names", value)
        return list(value)

    def by_loss(
        self,
        obj: Mapping[str, Any],
        key: str,
        losses: list[str],
        prefix: str = "",
        *,
        nullable: bool = True,
    ) -> dict[str, Any]:
        value = self.get(obj, key, prefix)
        name = _dotted(prefix, key)
        if not isinstance(value, Mapping) or list(value) != losses:
            self.fail(name, f"an object keyed by the losses {losses}", value)
        out: dict[str, Any] = {}
        for loss, v in value.items():
            if v is None and nullable:
                out[loss] = None
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                self.fail(f"{name}.{loss}", "a number", v)
            else:
                out[loss] = float(v)
        return out

    def matrix(self, obj: Mapping[str, Any], key: str, m: int, prefix: str = "") -> Matrix:
        value = self.get(obj, key, prefix)
        name = _dotted(prefix, key)
        ok = (
            isinstance(value, list)
            and len(value) == m
            and all(isinstance(row, list) and len(row) == m for row in value)
        )
        if not ok:
            self.fail(name, f"a {m} x {m} matrix (one row per loss)", value)
        out: Matrix = []
        for row in value:
            cells: list[float | None] = []
            for v in row:
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    self.fail(name, "a matrix of numbers", v)
                cells.append(None if v is None else float(v))
            out.append(cells)
        return out

    def layer_list(self, obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        value = obj.get("layers", [])
        if not isinstance(value, list) or not all(isinstance(x, Mapping) for x in value):
            self.fail("layers", "a list of objects", value)
        return value


_MISSING = object()


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key
