"""The run log: the JSON lines a `Monitor` writes during training, their schema, and the reader.

A run log is UTF-8 text, one JSON object per line (schema_version 1):

    {"schema_version": 1, "kind": "gradtool.run", "run": ID, ...}     a header, each time a
                                                                      Monitor opens the file
    {"schema_version": 1, "kind": "gradtool.record", "run": ID, ...}  one record per recorded step

A record holds the Gramians (`dot`, whole model and per layer) from which every statistic is
recomputed: norms |g_i| = sqrt(G_ii), cosines G_ij / sqrt(G_ii G_jj), MGDA weights. `norms` and
`cosine` are stored too, for readers without gradtool (jq, pandas).

Runs: each Monitor draws a random run id (or continues one: `Monitor(resume=True)` or
`run_id=`) and writes it in its header and in every record, so two runs in one file, a re-run
appending to an old log or two Monitors writing one file at once, are told apart, never merged.
A run opened several times (resumed) is one run in several sessions. Lines written before run
ids existed have none: they belong to the run of the header above them.

Reading is forgiving where a crash leaves damage and strict where the file is of another kind:
- an invalid last line without its newline (a run killed mid-write) is skipped with a warning;
- any other line that is not JSON, nests deeper than the JSON reader allows, holds an integer of
  more digits than Python converts (4300), or is longer than `MAX_LINE_BYTES`, is skipped with a
  warning naming its line number;
- a line of another `schema_version` is an error (`RunLogError`), as are an empty file, a file
  with no record, records of one run whose loss names differ, a field of the wrong type or a
  number out of range, and a file larger than `MAX_RUN_LOG_BYTES` (reading stops there, so a
  file that never ends, like /dev/zero, ends in this error);
- a file holding several runs is read for one of them: the last one (the run of the last
  record) unless `run=` names another, with a warning naming the runs left out; records of
  runs interleaved line by line (two Monitors on one file at once) are sorted out by run id,
  with a warning;
- records repeating an earlier step of their run (a run resumed from a checkpoint) replace the
  earlier ones.

Torch-free itself (reading a run log needs no torch; `gradtool report` imports it for the timeline).
"""

from __future__ import annotations

import collections
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

from gradtool.errors import RunLogError
from gradtool.results.base import Matrix, finite_or_none, nan_for_none

RUN_SCHEMA_VERSION = 1
RUN_KIND = "gradtool.run"
RECORD_KIND = "gradtool.record"

RUN_LOG_HINT = "a run log is the .jsonl file a gradtool.Monitor writes during training"

# Reading limits: a run log is read up to MAX_RUN_LOG_BYTES (1 GiB: about 16,000 records of 64
# layers with 8 losses), and a line longer than MAX_LINE_BYTES (64 MiB) is skipped unparsed.
MAX_RUN_LOG_BYTES = 1 << 30
MAX_LINE_BYTES = 64 << 20
# Header values nested deeper than this are dropped (with a warning): what is kept must survive
# recursive code downstream (JSON output), far below Python's recursion limit.
MAX_HEADER_DEPTH = 32
# Integers a Monitor can write (steps, parameter counts) fit in 64 bits; larger ones are refused.
MAX_INTEGER = (1 << 63) - 1
# Line warnings kept (a file of other binary data could produce millions); the rest are counted.
MAX_LINE_WARNINGS = 20
# A run id: what `Monitor(run_id=...)` accepts and what the reader matches `run=` against.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

_READ_CHUNK = 1 << 20
_LAST_LINES = 8  # the last gradtool-looking lines kept by `last_run`, parsed last first


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
    per-layer Gramians, `groups` those of the parameter groups the Monitor was given (None when
    it was given none, and in logs written before groups existed). `norms` and `cosine` are
    derived from `dot` (may be None when read from a file that omits them). `run` is the id of
    the run that wrote it (None in logs written before run ids). `line` is the line number the
    record was read from (not written).
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
    run: str | None = None
    # Distributed training: `dot` is the global batch's Gramian over `world` ranks, and `local`
    # the mean over ranks of the rank-local Gramians (each rank's share of the batch).
    world: int | None = None
    local: Matrix | None = None
    groups: list[LayerRecord] | None = None
    line: int | None = field(default=None, compare=False, repr=False)

    def gramian(self) -> list[list[float]]:
        """Return the whole-model Gramian G as floats (an undefined entry as NaN)."""
        return nan_for_none(self.dot)

    def to_dict(self) -> dict[str, Any]:
        """Return the record as its JSON object (schema_version and kind first, NaN as None;
        `run` only when the record has one)."""
        body: dict[str, Any] = {"schema_version": RUN_SCHEMA_VERSION, "kind": RECORD_KIND}
        if self.run is not None:
            body["run"] = self.run
        body.update(
            {
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
        )
        if self.groups is not None:
            body["groups"] = [
                {"name": group.name, "numel": group.numel, "dot": group.dot}
                for group in self.groups
            ]
        if self.world is not None:
            body["world"] = self.world
            body["local"] = self.local
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
        field is missing, of the wrong type, or a number out of range (non-finite, or an
        integer beyond 64 bits)."""
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
        groups = None
        if obj.get("groups") is not None:
            groups = [
                LayerRecord(
                    name=check.typed(group, "name", str, f"groups[{k}]"),
                    numel=check.integer(group, "numel", f"groups[{k}]"),
                    dot=check.matrix(group, "dot", m, f"groups[{k}]"),
                )
                for k, group in enumerate(check.layer_list(obj, "groups"))
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
        world = obj.get("world")
        local = obj.get("local")
        return cls(
            step=check.integer(obj, "step"),
            losses=losses,
            loss_values=check.by_loss(obj, "loss_values", losses),
            dot=check.matrix(obj, "dot", m),
            layers=layers,
            pareto=pareto,
            norms=check.by_loss(obj, "norms", losses) if norms is not None else None,
            cosine=check.matrix(obj, "cosine", m) if cosine is not None else None,
            parameters=_counts(obj.get("parameters")),
            time=_finite(obj.get("time")),
            run=_run_id(obj),
            world=check.integer(obj, "world") if world is not None else None,
            local=check.matrix(obj, "local", m) if local is not None else None,
            groups=groups,
        )


@dataclass
class RunInfo:
    """One run found in a run log: its id (None: written before run ids), how many records and
    sessions (headers: the times a Monitor opened the file for it), its first line, its start."""

    id: str | None
    records: int = 0
    sessions: int = 0
    first_line: int = 0
    created: str | None = None

    @property
    def label(self) -> str:
        """Return the run's id for people (`(no id)` for a run written before run ids)."""
        return self.id if self.id is not None else "(no id)"


@dataclass
class RunLog:
    """A run log as read, for one run: that run's first header (None if it has none), its
    records sorted by step, and the warnings met while reading (skipped lines, replaced steps,
    runs left out). `runs` lists every run in the file (in order of first appearance);
    `run_id` is the one read; `sessions` how many times a Monitor opened it."""

    path: Path
    header: dict[str, Any] | None
    records: list[Record]
    warnings: list[str] = field(default_factory=list)
    sessions: int = 0
    run_id: str | None = None
    runs: list[RunInfo] = field(default_factory=list)

    @property
    def losses(self) -> list[str]:
        """Return the loss names, in the order of the records' matrices."""
        return list(self.records[0].losses)


def run_header(
    *,
    every: int,
    depth: int | None,
    metadata: Mapping[str, Any],
    versions: Mapping[str, str],
    run: str | None = None,
) -> dict[str, Any]:
    """Return the header object a Monitor writes when it opens a run log (`run`: its run id)."""
    body: dict[str, Any] = {"schema_version": RUN_SCHEMA_VERSION, "kind": RUN_KIND}
    if run is not None:
        body["run"] = run
    body.update(
        {
            **versions,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "every": every,
            "depth": depth,
            "metadata": dict(metadata),
        }
    )
    return finite_or_none(body)


def read_run(
    path: Path | str,
    *,
    run: str | int | None = None,
    max_bytes: int = MAX_RUN_LOG_BYTES,
) -> RunLog:
    """Return one run of the run log at `path`: header, records (by step), reading warnings.

    `run` picks the run when the file holds several: its id, a unique beginning of its id, or
    its position among the runs that hold records (an int, or a string '#k': 1 the first, -1
    the last). By default the last run is read (the run of the last record in the file), with a
    warning naming the runs left out. At most `max_bytes` are read.

    Raises `RunLogError` when the file is missing, empty, larger than `max_bytes`, holds no
    record (of the run picked), mixes loss names within the run, has a line of another
    schema_version or a malformed record; and when `run` names no run of the file.
    """
    path = Path(path)
    if not path.exists():
        raise RunLogError(f"run log {path} does not exist", hint=RUN_LOG_HINT)
    if path.is_dir():
        raise RunLogError(f"run log {path} is a directory", hint=RUN_LOG_HINT)
    try:
        with open(path, "rb") as fh:
            scan = _scan(fh, path, max_bytes)
    except OSError as exc:
        raise RunLogError(f"cannot read {path}: {exc.strerror or exc}") from None
    if scan.lines == 0:
        raise RunLogError(
            f"run log {path} is empty",
            hint="a Monitor writes a header line when it opens the file, then one record "
            "every `every` steps",
        )
    warnings = scan.warnings
    if not scan.records:
        raise _no_records(path, scan)
    info = _pick(path, scan, run)
    if run is None and len(scan.with_records) > 1:
        earlier = [r for r in scan.with_records if r is not info]
        shown = ", ".join(r.label for r in earlier[:5]) + (" ..." if len(earlier) > 5 else "")
        warnings.append(
            f"{path} holds {len(scan.with_records)} runs: this is the last one, run "
            f"{info.label} ({info.records} records); {len(earlier)} earlier run(s) left out "
            f"({shown}): select one by its run id"
        )
    if run is None:
        later = [r for r in scan.runs.values() if not r.records and r.first_line > info.first_line]
        if later:
            warnings.append(
                f"run {later[-1].label} (from line {later[-1].first_line} of {path}) holds no "
                f"record yet: this is the run before it, run {info.label}"
            )
    if scan.interleaved:
        shown = ", ".join(sorted(label for label in scan.interleaved))
        warnings.append(
            f"records of runs {shown} are interleaved line by line in {path} (two Monitors "
            "writing one file at the same time?): each run's records were told apart by their "
            "run id"
        )
    records = [r for r in scan.records if r.run == info.id]
    if not records:
        raise RunLogError(
            f"run {info.label} of {path} holds no record yet (only its header)",
            hint="records are written at steps 0, every, 2*every, ...: did training reach one?",
        )
    _check_same_losses(path, records)
    records, replaced = _latest_per_step(records)
    if replaced:
        warnings.append(
            f"{replaced} record(s) repeat an earlier step (a resumed run?); the later ones are kept"
        )
    return RunLog(
        path=path,
        header=scan.headers.get(info.id),
        records=records,
        warnings=warnings,
        sessions=info.sessions,
        run_id=info.id,
        runs=list(scan.runs.values()),
    )


def last_run(path: Path | str, *, max_bytes: int = MAX_RUN_LOG_BYTES) -> RunInfo | None:
    """Return the run of the last valid gradtool line of the run log at `path` (what
    `Monitor(resume=True)` continues), or None when there is no file or no such line.

    Only the id and the position are read (no record is checked). Raises `RunLogError` when the
    file is larger than `max_bytes` or cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        return None
    tail: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=_LAST_LINES)
    try:
        with open(path, "rb") as fh:
            for number, line, _ in _lines(fh, path, max_bytes):
                if line is not None and b"gradtool." in line:
                    tail.append((number, line))
    except OSError as exc:
        raise RunLogError(f"cannot read {path}: {exc.strerror or exc}") from None
    for number, line in reversed(tail):
        obj, _ = _parse(line)
        if isinstance(obj, dict) and obj.get("kind") in (RUN_KIND, RECORD_KIND):
            return RunInfo(id=_run_id(obj), first_line=number)
    return None


# -- reading ----------------------------------------------------------------------------------


@dataclass
class _Scan:
    """Everything one pass over a run log finds, before a run is picked."""

    lines: int = 0  # non-blank lines
    valid: int = 0  # lines that parsed as JSON
    records: list[Record] = field(default_factory=list)
    runs: dict[str | None, RunInfo] = field(default_factory=dict)
    headers: dict[str | None, dict[str, Any]] = field(default_factory=dict)  # first, per run
    interleaved: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    head: bytearray | None = field(default_factory=bytearray)  # the text, while it is short
    skipped_lines: int = 0

    @property
    def with_records(self) -> list[RunInfo]:
        """Return the runs that hold records, in order of first appearance."""
        return [r for r in self.runs.values() if r.records]

    def skip(self, warning: str) -> None:
        self.skipped_lines += 1
        if self.skipped_lines <= MAX_LINE_WARNINGS:
            self.warnings.append(warning)


def _scan(fh: IO[bytes], path: Path, max_bytes: int) -> _Scan:
    scan = _Scan()
    current: str | None = None  # the run of the last header: the run of a record without id
    last: RunInfo | None = None  # the run of the previous gradtool line
    for number, line, complete in _lines(fh, path, max_bytes):
        if scan.head is not None:
            if line is None or len(scan.head) + len(line) > _HEAD_BYTES:
                scan.head = None
            else:
                scan.head += line + b"\n"
        if line is None:
            scan.lines += 1
            scan.skip(f"line {number} of {path} is longer than {_size(MAX_LINE_BYTES)}; skipped")
            continue
        if not line.strip():
            continue
        scan.lines += 1
        obj, problem = _parse(line)
        if problem is not None:
            if not complete and problem == "is not valid JSON":
                scan.skip(
                    f"line {number} of {path} is truncated (the run was likely stopped while "
                    "writing it); skipped"
                )
            else:
                scan.skip(f"line {number} of {path} {problem}; skipped")
            continue
        scan.valid += 1
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind not in (RUN_KIND, RECORD_KIND):
            scan.skip(f"line {number} of {path} is not a gradtool run-log line; skipped")
            continue
        _check_version(path, obj, number)
        if kind == RUN_KIND:
            current = _run_id(obj)
            info = scan.runs.setdefault(current, RunInfo(current, first_line=number))
            info.sessions += 1
            if info.created is None and isinstance(obj.get("created"), str):
                info.created = obj["created"]
            if current not in scan.headers:
                scan.headers[current] = _kept_header(obj, path, number, scan)
            last = info
            continue
        record = Record.from_dict(obj, f"{path} line {number}")
        if "run" not in obj:
            record.run = current
        record.line = number
        info = scan.runs.setdefault(record.run, RunInfo(record.run, first_line=number))
        if last is not None and last is not info and info.records:
            # back to a run whose records had stopped, with no header of it in between
            scan.interleaved.update((info.label, last.label))
        info.records += 1
        last = info
        scan.records.append(record)
    if scan.skipped_lines > MAX_LINE_WARNINGS:
        scan.warnings.append(
            f"{scan.skipped_lines - MAX_LINE_WARNINGS} more line(s) of {path} skipped"
        )
    return scan


def _lines(fh: IO[bytes], path: Path, max_bytes: int) -> Iterator[tuple[int, bytes | None, bool]]:
    """Yield (line number, line, ended by a newline) for each line of `fh`, read in binary
    chunks; a line longer than MAX_LINE_BYTES is yielded as None (its bytes are not kept).

    Raises `RunLogError` once more than `max_bytes` have been read (a file that never ends).
    """
    number = 0
    pending = bytearray()
    overlong = False
    total = 0
    while True:
        chunk = fh.read(min(_READ_CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise RunLogError(
                f"{path} is larger than {_size(max_bytes)}: reading stopped there"
                + ("" if number else ", with no line ended yet (this is no run log)"),
                hint=f"is it the right file? gradtool reads at most {_size(max_bytes)} of a run "
                "log; give each run its own file",
            )
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not overlong and len(pending) + len(piece) > MAX_LINE_BYTES:
                overlong = True
                pending = bytearray()
            if not overlong:
                pending += piece
            if end < 0:
                break
            number += 1
            yield number, None if overlong else bytes(pending), True
            pending, overlong = bytearray(), False
            start = end + 1
    if pending or overlong:
        yield number + 1, None if overlong else bytes(pending), False


class _NonFiniteConstant(ValueError):
    """NaN or Infinity in a line: not JSON (a Monitor writes null)."""


def _no_constants(name: str) -> Any:
    raise _NonFiniteConstant(name)


def _parse(line: bytes) -> tuple[Any, str | None]:
    """Return (the parsed line, None), or (None, why it cannot be read) for a bad line."""
    text = line.decode("utf-8", errors="replace")
    try:
        return json.loads(text, parse_constant=_no_constants), None
    except RecursionError:
        return None, "nests deeper than the JSON reader allows"
    except _NonFiniteConstant as exc:
        return None, f"holds {exc}, which is not JSON"
    except json.JSONDecodeError:
        return None, "is not valid JSON"
    except ValueError:  # Python's limit on the digits of an integer (sys.set_int_max_str_digits)
        return None, "holds an integer of more digits than Python reads"


def _check_version(path: Path, obj: Mapping[str, Any], number: int) -> None:
    version = obj.get("schema_version")
    if version == RUN_SCHEMA_VERSION and not isinstance(version, bool):
        return
    newer = isinstance(version, int) and not isinstance(version, bool)
    newer = newer and version > RUN_SCHEMA_VERSION
    shown = repr(version) if not isinstance(version, int) or abs(version) < 10**9 else "(huge)"
    raise RunLogError(
        f"{path} has schema_version {shown} (line {number}); "
        f"this gradtool reads {RUN_SCHEMA_VERSION}",
        hint="upgrade gradtool (pip install -U gradtool)"
        if newer
        else "read it with the gradtool version that wrote it",
    )


def _kept_header(obj: dict[str, Any], path: Path, number: int, scan: _Scan) -> dict[str, Any]:
    """Return the header with the values nested deeper than MAX_HEADER_DEPTH left out."""
    kept = {}
    for key, value in obj.items():
        if _deeper_than(value, MAX_HEADER_DEPTH):
            scan.warnings.append(
                f"line {number} of {path}: the header's '{key}' nests deeper than "
                f"{MAX_HEADER_DEPTH} levels; left out"
            )
            continue
        kept[key] = value
    return kept


def _deeper_than(value: Any, limit: int) -> bool:
    """Return whether `value` nests lists / objects more than `limit` levels deep."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _pick(path: Path, scan: _Scan, run: str | int | None) -> RunInfo:
    """Return the run `run` names (the run of the last record when None)."""
    if run is None:
        return scan.runs[scan.records[-1].run]
    runs = scan.with_records
    index: int | None = None
    if isinstance(run, int) and not isinstance(run, bool):
        index = run
    elif isinstance(run, str) and run.startswith("#"):
        try:
            index = int(run[1:])
        except ValueError:
            index = None
    elif isinstance(run, str) and run:
        if run in scan.runs:
            return scan.runs[run]
        found = [r for r in scan.runs.values() if r.id is not None and r.id.startswith(run)]
        if len(found) == 1:
            return found[0]
    if index is not None and index != 0 and -len(runs) <= index <= len(runs):
        return runs[index - 1 if index > 0 else index]
    listed = ", ".join(f"{r.label} ({r.records} records)" for r in list(scan.runs.values())[:8])
    raise RunLogError(
        f"{path} holds no run {run!r}; its runs: {listed}",
        hint="give a run's id (or the beginning of one), or its position: 1 the first, -1 the last",
        option="run",
    )


def _no_records(path: Path, scan: _Scan) -> RunLogError:
    if scan.runs and scan.warnings:  # records there were, but none could be read
        return RunLogError(
            f"run log {path} holds no readable record: {scan.warnings[0]}"
            + (f" (and {len(scan.warnings) - 1} more)" if len(scan.warnings) > 1 else ""),
            hint="a record line is one JSON object a Monitor wrote: check how this file was made",
        )
    if scan.runs:
        return RunLogError(
            f"run log {path} holds no record yet (only its header)",
            hint="records are written at steps 0, every, 2*every, ...: did training reach one?",
        )
    if scan.head is not None:  # a whole `--json` document (indented or on one line)
        doc, _ = _parse(bytes(scan.head))
        if isinstance(doc, dict) and isinstance(doc.get("command"), str):
            return RunLogError(
                f"{path} is a `gradtool {doc['command'][:40]} --json` document, not a run log",
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


def _run_id(obj: Mapping[str, Any]) -> str | None:
    """Return the run id a line carries (None without one, or with one that is not an id)."""
    value = obj.get("run")
    return value if isinstance(value, str) and RUN_ID_PATTERN.fullmatch(value) else None


def _counts(value: Any) -> dict[str, int] | None:
    """Return a record's `parameters` (count, numel) without entries that are not counts."""
    if not isinstance(value, dict):
        return None
    return {
        k: v
        for k, v in value.items()
        if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        if 0 <= v <= MAX_INTEGER
    }


def _finite(value: Any) -> float | None:
    """Return `value` as a finite float, None if it is not a number or not finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        out = float(value)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


_HEAD_BYTES = 1 << 20  # the text kept to recognise a `--json` document given as a run log


class _Checker:
    """Field checks for `Record.from_dict`, raising `RunLogError` that names the place."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, expected: str, found: object) -> NoReturn:
        if found is _MISSING:
            shown = "missing"
        elif isinstance(found, float) and not math.isfinite(found):
            shown = f"found {found}"
        elif isinstance(found, int) and not isinstance(found, bool) and abs(found) > MAX_INTEGER:
            shown = "found an integer of more than 64 bits"
        else:
            shown = f"found {type(found).__name__}"
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
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_INTEGER:
            self.fail(_dotted(prefix, key), "an integer of at most 64 bits", value)
        return value

    def number(self, obj: Mapping[str, Any], key: str, prefix: str = "") -> float:
        value = self.get(obj, key, prefix)
        if value is None:
            return math.nan
        return self.finite(_dotted(prefix, key), value)

    def finite(self, name: str, value: Any) -> float:
        """Return `value` as a float; fail unless it is a finite number (JSON's 1e999 reads as
        inf, and an integer of 400 digits overflows a float)."""
        out = _finite(value)
        if out is None:
            self.fail(name, "a finite number", value)
        return out

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
            out[loss] = None if v is None and nullable else self.finite(f"{name}.{loss}", v)
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
        return [[None if v is None else self.finite(name, v) for v in row] for row in value]

    def layer_list(self, obj: Mapping[str, Any], key: str = "layers") -> list[Mapping[str, Any]]:
        value = obj.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, Mapping) for x in value):
            self.fail(key, "a list of objects", value)
        return value


_MISSING = object()


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key
