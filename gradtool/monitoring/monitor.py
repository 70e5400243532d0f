"""The training-loop monitor: every N steps, the gradient analysis of the live losses, appended to
a run log (one JSON line per record) that `gradtool report` reads.

    monitor = gradtool.Monitor("runs/train.jsonl", every=100)
    for batch in loader:
        losses = {"task_a": loss_a, "task_b": loss_b}
        monitor.step(model, losses)            # before the backward: it needs the graph
        sum(losses.values()).backward()
        optimizer.step()

It leaves the training as it was: it only calls `torch.autograd.grad` (with `retain_graph=True`),
so no `.grad` is written, no parameter changes, no random number is drawn, and the caller's own
backward still finds the graph. A skipped step costs a counter increment and a modulo.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from gradtool._version import __version__
from gradtool.analysis.convert import to_list
from gradtool.analysis.records import build_record
from gradtool.analysis.report import DEFAULT_DEPTH, ParetoOptions, pareto_options
from gradtool.engine import Fallback, Strategy, check_strategy, compute_gramians
from gradtool.errors import GradientError, LossError, NonFiniteGradientError
from gradtool.linalg import gramian as gm
from gradtool.problem import Problem
from gradtool.results.runlog import Record, run_header

NamedParameters = Iterable[tuple[str, nn.Parameter]]
ParametersArg = NamedParameters | Callable[[nn.Module], NamedParameters] | None


class Monitor:
    """Records the gradient analysis of a model's losses every `every` steps to a JSON-lines file.

    Args:
        path: the run log; created with its folders, appended to if it exists (a resumed run)
            unless `append=False`.
        every: record at steps 0, every, 2 * every, ... (the step is `step=` if given, else the
            number of earlier `step()` calls).
        parameters: `(name, Parameter)` pairs to analyse, or a function `model -> pairs`;
            default: every parameter of the model that requires grad.
        depth: module-path depth of the per-layer Gramians (as `inspect --depth`).
        pareto: record the MGDA min-norm weights (True, or `ParetoOptions` for a normalisation).
        layers: record per-layer Gramians (for the layer x step conflict map).
        metadata: JSON-serialisable facts about the run (hyper-parameters, ...), in the header.
        strategy: the engine strategy, as `inspect --strategy`.
        fsync: `os.fsync` after each record, so it survives a machine crash, not only a killed
            process (each record is flushed either way).
        append: keep what `path` already holds (False: start the file afresh).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        every: int = 100,
        *,
        parameters: ParametersArg = None,
        depth: int | None = DEFAULT_DEPTH,
        pareto: bool | ParetoOptions = True,
        layers: bool = True,
        metadata: Mapping[str, Any] | None = None,
        strategy: Strategy = "auto",
        fsync: bool = True,
        append: bool = True,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every should be an integer >= 1; found {every!r}")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int)):
            raise ValueError(f"depth should be an integer >= 1 or None; found {depth!r}")
        if depth is not None and depth < 1:
            raise ValueError(f"depth should be an integer >= 1 or None; found {depth!r}")
        check_strategy(strategy)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValueError(f"metadata should be a dict; found {type(metadata).__name__}")
        meta = dict(metadata or {})
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata should be JSON-serialisable: {exc}") from None
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"path should be a file; {self.path} is a directory")
        self.every = every
        self.depth = depth
        self.layers = layers
        self._pareto = pareto_options(pareto)
        self._parameters: list[tuple[str, nn.Parameter]] | Callable[[nn.Module], Any] | None = (
            parameters if parameters is None or callable(parameters) else list(parameters)
        )
        self._strategy: Strategy = strategy
        self._fsync = fsync
        self._calls = 0
        self._last_step: int | None = None
        self._records = 0
        self.skipped = 0
        self.last: Record | None = None
        self._file = self._open(meta, append)

    # -- the training-loop call -------------------------------------------------------------

    def step(
        self,
        model: nn.Module,
        losses: Mapping[str, torch.Tensor],
        *,
        step: int | None = None,
    ) -> Record | None:
        """Return the Record written for this step, or None on a step that is not recorded.

        Call it after the forward pass and before your backward (it needs the graph, and retains
        it for you). A step is recorded when `step % every == 0` (`step` defaults to the number
        of earlier calls); a second call for the same `step` (gradient accumulation) is skipped.
        Nothing is read from `model` or `losses` on a skipped step.
        """
        index = self._calls if step is None else step
        self._calls += 1
        if index % self.every or index == self._last_step:
            return None
        if self._file is None:
            raise ValueError(f"this Monitor is closed; {self.path} takes no more records")
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"step should be an integer; found {index!r}")
        record = self._analyze(model, losses, index)
        if record is None:
            return None
        self._write(record)
        self._last_step = index
        self._records += 1
        self.last = record
        return record

    def flat_metrics(self, record: Record | None = None, prefix: str = "") -> dict[str, float]:
        """Return the last (or the given) record as flat `{"grad_cos/a~b": ..., ...}` scalars,
        for `log_dict`, `SummaryWriter.add_scalar`, `wandb.log`; {} before the first record."""
        record = record if record is not None else self.last
        return {} if record is None else flat_metrics(record, prefix)

    @property
    def records(self) -> int:
        """Return how many records this Monitor has written."""
        return self._records

    @property
    def closed(self) -> bool:
        """Return whether `close()` was called."""
        return self._file is None

    def close(self) -> None:
        """Flush and close the run log; later recorded steps raise."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Monitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._file is None else "open"
        return f"Monitor({str(self.path)!r}, every={self.every}, records={self._records}, {state})"

    # -- internals --------------------------------------------------------------------------

    def _open(self, meta: dict[str, Any], append: bool) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            self.path.write_bytes(b"")
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                needs_newline = fh.read(1) != b"\n"
        fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        header = run_header(
            every=self.every,
            depth=self.depth,
            metadata=meta,
            versions={"gradtool_version": __version__, "torch_version": torch.__version__},
        )
        # A run killed mid-write leaves a partial last line: end it, so it stays one bad line.
        fh.write(
            ("\n" if needs_newline else "")
            + json.dumps(header, allow_nan=False, separators=(",", ":"))
            + "\n"
        )
        self._flush(fh)
        return fh

    def _analyze(
        self, model: nn.Module, losses: Mapping[str, torch.Tensor], index: int
    ) -> Record | None:
        params = self._parameters(model) if callable(self._parameters) else self._parameters
        try:
            problem = Problem.live(model, losses, params)
            result = compute_gramians(problem, strategy=self._strategy, retain_graph=True)
            record = build_record(
                result, step=index, depth=self.depth, pareto=self._pareto, layers=self.layers
            )
        except (LossError, GradientError) as exc:
            if not _is_nonfinite(exc, losses):
                raise
            self.skipped += 1
            warnings.warn(
                f"gradtool.Monitor: step {index} not recorded: {exc.message}",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        if self._strategy == "auto" and result.fell_back(Fallback.VMAP_FAILED):
            self._strategy = "loop"  # vmap cannot run this model: do not retry it every record
        return record

    def _write(self, record: Record) -> None:
        assert self._file is not None
        self._file.write(record.to_json() + "\n")  # the whole line in one write, then flush
        self._flush(self._file)

    def _flush(self, fh: Any) -> None:
        fh.flush()
        if self._fsync:
            os.fsync(fh.fileno())


def flat_metrics(record: Record, prefix: str = "") -> dict[str, float]:
    """Return a record as flat scalars keyed `loss/<a>`, `grad_norm/<a>`, `grad_cos/<a>~<b>`,
    `mgda_weight/<a>` and `mgda_min_norm`, each prefixed by `prefix`; undefined values are left
    out (the cosine of a zero gradient), so every value is a finite float.

    grad_norm/a = sqrt(G_aa), grad_cos/a~b = G_ab / sqrt(G_aa G_bb), from the record's Gramian.
    """
    names = record.losses
    g = gm.as_gramian(record.gramian())
    norms = to_list(gm.norms(g))
    cos = to_list(gm.cosine(g))
    out: dict[str, float | None] = {}
    for name in names:
        out[f"loss/{name}"] = record.loss_values.get(name)
    for i, name in enumerate(names):
        out[f"grad_norm/{name}"] = norms[i]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            out[f"grad_cos/{names[i]}~{names[j]}"] = cos[i][j]
    if record.pareto is not None:
        for name in names:
            out[f"mgda_weight/{name}"] = record.pareto.weights.get(name)
        out["mgda_min_norm"] = record.pareto.min_norm
    return {
        prefix + key: float(v)
        for key, v in out.items()
        if v is not None and v == v and abs(v) != float("inf")
    }


def _is_nonfinite(exc: LossError | GradientError, losses: Mapping[str, torch.Tensor]) -> bool:
    """Return whether `exc` reports a NaN / inf loss or gradient (a monitor skips those steps)."""
    if isinstance(exc, GradientError):
        return isinstance(exc, NonFiniteGradientError)
    try:
        return any(
            isinstance(v, torch.Tensor)
            and v.numel() == 1
            and not bool(torch.isfinite(v.detach()).all())
            for v in losses.values()
        )
    except Exception:
        return False
