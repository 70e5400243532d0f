"""The training-loop monitor: every N steps, the gradient analysis of the live losses, appended to
a run log (one JSON line per record) that `gradtool report` reads.

    monitor = gradtool.Monitor("runs/train.jsonl", every=100)
    for batch in loader:
        losses = {"task_a": loss_a, "task_b": loss_b}
        monitor.step(model, losses)            # before the backward: it needs the graph
        sum(losses.values()).backward()
        optimizer.step()

It leaves the training as it was: it only calls `torch.autograd.grad` (with `retain_graph=True`),
so no parameter's `.grad` is written, no parameter changes, no random number is drawn, and the
caller's own backward still finds the graph. (PyTorch runs tensor hooks during `autograd.grad`:
a non-leaf tensor with `retain_grad()` on the path does receive the analysis' gradient.) A
skipped step costs a counter increment and a modulo.

It never stops the training for its log: a write that fails (a full disk, a file system gone
read-only, a closed descriptor) drops that record with one RuntimeWarning per Monitor, counts it
in `Monitor.dropped`, and the next record is tried again (the error may have cleared); `close()`
does not raise either. Only what fails before training starts raises: a path that cannot be
opened at construction (a directory, no permission), where the error is cheap to fix and a log
that silently stays empty would be found out only after the run.

A `torch.compile`d model is recorded like any other (its parameters under their own names, not
`_orig_mod.`) where torch allows a retained backward through the compiled graph. By default it
often does not: a graph whose backward keeps "donated buffers" refuses it. Then the step is not
recorded, one RuntimeWarning per Monitor gives the recipe, and training goes on untouched (the
refusal comes before anything runs). The recipe, set before the model's first forward:
`torch._functorch.config.donated_buffer = False` (torch's switch for a retained backward) and
`torch._inductor.config.inplace_buffers = False`: with donated buffers off but in-place buffers
on, inductor (torch 2.13) overwrites saved activations, so a second backward, the Monitor's and
then the caller's own, is silently wrong; the engine refuses that combination the same way.

Runs: each Monitor writes a run id in its header and in every record, so that several runs in
one file are never merged (see `gradtool.results.runlog`). A new Monitor starts a new run unless
told to continue one: `resume=True` continues the run the file ends with, `run_id=` names the run
(e.g. an id kept in the training checkpoint, `monitor.run_id`).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import stat
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from gradtool._version import __version__
from gradtool.analysis.convert import to_list
from gradtool.analysis.layers import GroupsArg, check_groups, group_by_globs
from gradtool.analysis.records import build_record
from gradtool.analysis.report import DEFAULT_DEPTH, ParetoOptions, pareto_options
from gradtool.engine import Fallback, Strategy, check_strategy, compute_gramians
from gradtool.engine.distributed import Group, agree, current_group, timeout_s
from gradtool.errors import (
    GradientError,
    LossError,
    NonFiniteGradientError,
    RunLogError,
    UsageError,
    opt,
)
from gradtool.linalg import gramian as gm
from gradtool.problem import Problem, parameter_aliases
from gradtool.results.runlog import RUN_ID_PATTERN, Record, last_run, run_header

NamedParameters = Iterable[tuple[str, nn.Parameter]]
ParametersArg = NamedParameters | Callable[[nn.Module], NamedParameters] | None

# fsync errors that say the file cannot be synced at all (a pipe, a character device): syncing
# is then skipped for this file, silently; any other fsync error counts the record as dropped.
_CANNOT_SYNC = frozenset({errno.EINVAL, errno.EROFS, errno.ENOTSUP, errno.EOPNOTSUPP})
# The reasons `gradtool.engine` gives a torch.compile'd graph it cannot differentiate twice.
_COMPILED_REASONS = frozenset({"donated_buffer", "compiled_inplace"})


class Monitor:
    """Records the gradient analysis of a model's losses every `every` steps to a JSON-lines file.

    Args:
        path: the run log; created with its folders, appended to if it exists unless
            `append=False`.
        every: record at steps 0, every, 2 * every, ... (the step is `step=` if given, else the
            number of earlier `step()` calls).
        parameters: `(name, Parameter)` pairs to analyse, or a function `model -> pairs`;
            default: every parameter of the model that requires grad.
        depth: module-path depth of the per-layer Gramians (as `inspect --depth`).
        pareto: record the MGDA min-norm weights (True, or `ParetoOptions` for a normalisation).
        layers: record per-layer Gramians (for the layer x step conflict map).
        groups: parameter groups across modules, name -> glob(s) on the dotted parameter names
            (as `gradtool.analyze(groups=...)`): each record carries each group's Gramian.
        metadata: JSON-serialisable facts about the run (hyper-parameters, ...), in the header.
        strategy: the engine strategy, as `inspect --strategy`.
        fsync: `os.fsync` after each record, so it survives a machine crash, not only a killed
            process (each record is written with one system call either way).
        append: keep what `path` already holds (False: start the file afresh).
        run_id: the id of the run this Monitor records (letters, digits, `._:-`, up to 64
            characters): pass the id of an earlier Monitor (`monitor.run_id`, kept in your
            checkpoint) to continue its run. Default: a new random id.
        resume: continue the run the file ends with (its id), e.g. after a restart from a
            checkpoint; a new run when the file holds none.
        writers: where else each record goes, besides the run log: callables taking the
            Record (`gradtool.integrations.writers`: TensorBoard, W&B, CSV), called on rank 0
            with every recorded step; one that raises warns once and training goes on.
            `close()` calls each one's `close()`, where it has one.
        distributed: in DDP training (a `torch.distributed` process group of several ranks,
            every rank calling `step` at the same steps), record the Gramian of the global
            batch's per-loss gradients (what DDP's averaged gradient is, per loss), reduced
            across ranks, beside the mean rank-local one (`local`); rank 0 alone writes.
            None (default): when such a group is initialised at construction; False: this
            rank's own batch only.

    Raises:
        ValueError: an argument is out of range, or `path` is a directory.
        OSError: `path` cannot be opened for appending (no permission, ...).
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
        groups: GroupsArg | None = None,
        metadata: Mapping[str, Any] | None = None,
        strategy: Strategy = "auto",
        fsync: bool = True,
        append: bool = True,
        run_id: str | None = None,
        resume: bool = False,
        distributed: bool | None = None,
        writers: Iterable[Callable[[Record], object]] | None = (),
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UsageError(f"{opt('every')} should be an integer >= 1; found {every!r}")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int)):
            raise UsageError(f"{opt('depth')} should be an integer >= 1 or None; found {depth!r}")
        if depth is not None and depth < 1:
            raise UsageError(f"{opt('depth')} should be an integer >= 1 or None; found {depth!r}")
        check_strategy(strategy)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise UsageError(f"{opt('metadata')} should be a dict; found {type(metadata).__name__}")
        meta = dict(metadata or {})
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{opt('metadata')} should be JSON-serialisable: {exc}") from None
        if run_id is not None and not (
            isinstance(run_id, str) and RUN_ID_PATTERN.fullmatch(run_id)
        ):
            raise UsageError(
                "run_id should be 1 to 64 letters, digits or '._:-' (starting with a letter or "
                f"digit); found {run_id!r}"
            )
        if not isinstance(resume, bool):
            raise UsageError(f"{opt('resume')} should be True or False; found {resume!r}")
        if resume and (run_id is not None or not append):
            other = "run_id" if run_id is not None else "append=False"
            raise UsageError(
                f"{opt('resume')} continues the run the file ends with: give resume or {other}"
            )
        self._writers = _check_writers(writers)
        self._writer_warned: set[int] = set()
        self.path = Path(path)
        if self.path.is_dir():
            raise UsageError(f"{opt('path')} should be a file; {self.path} is a directory")
        self.every = every
        self.depth = depth
        self.layers = layers
        self._groups = check_groups(groups)
        self._pareto = pareto_options(pareto)
        # A mapping name -> parameter keeps its pairs; any other iterable is taken once, now.
        self._parameters: Any = (
            parameters
            if parameters is None or callable(parameters)
            else list(parameters.items())
            if isinstance(parameters, Mapping)
            else list(parameters)
        )
        self._strategy: Strategy = strategy
        self._fsync = fsync
        self._calls = 0
        self._last_step: int | None = None
        self._records = 0
        self.skipped = 0
        self.dropped = 0
        self.last: Record | None = None
        # Distributed: no collective here (a Monitor built on rank 0 alone must not hang); the
        # ranks meet at the first recorded step (`_meet`), with a timeout.
        group = _group(distributed)
        self._distributed = group is not None
        self._met = False
        self._writes = group is None or group.rank == 0  # rank 0 alone writes
        self.run_id: str | None = run_id if run_id is not None else uuid.uuid4().hex[:12]
        if resume and self._writes:
            self.run_id = self._resumed_id()
        self._write_warned = False
        self._compile_warned = False
        self._torn = False  # a failed write may have left part of a line: end it first
        self._closed = False
        self._file: _AppendFile | None = None
        if self._writes:
            self._file = self._open(meta, append)

    # -- the training-loop call -------------------------------------------------------------

    def step(
        self,
        model: nn.Module,
        losses: Mapping[str, torch.Tensor],
        *,
        step: int | None = None,
    ) -> Record | None:
        """Return the Record of this step, or None on a step that is not recorded.

        Call it after the forward pass and before your backward (it needs the graph, and retains
        it for you). A step is recorded when `step % every == 0` (`step` defaults to the number
        of earlier calls); a second call for the same `step` (gradient accumulation) is skipped.
        Nothing is read from `model` or `losses` on a skipped step. A record the run log could
        not take is still returned (and counted in `dropped`).
        """
        index = self._calls if step is None else step
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise UsageError(
                f"{opt('step')} should be an integer >= 0; found {index!r}", option="step"
            )
        self._calls += 1
        if index % self.every or index == self._last_step:
            return None
        if self._closed:
            raise UsageError(
                f"this Monitor is closed; {self.path} takes no more records", reason="closed"
            )
        record = self._analyze(model, losses, index)
        if record is None:
            return None
        if self.last is not None and record.losses != self.last.losses:
            raise LossError(
                f"losses are {record.losses} at step {index} but were {self.last.losses} at "
                f"step {self.last.step}: one run log holds one set of losses",
                hint="pass the same loss names, in the same order, at every step; give another "
                "set of losses its own run log",
                reason="loss_names_changed",
            )
        if not self._emit(record.to_json()):
            self.dropped += 1
        self._send(record)
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
        """Return how many steps this Monitor has recorded (written, or dropped by a failing
        write: `records - dropped` reached the run log)."""
        return self._records

    @property
    def closed(self) -> bool:
        """Return whether `close()` was called."""
        return self._closed

    def close(self) -> None:
        """Close the run log; later recorded steps raise. Never raises itself: a failure to
        close (the last records may not have reached the disk) is a RuntimeWarning."""
        self._closed = True
        writers, self._writers = self._writers, []
        for writer in writers:
            closer = getattr(writer, "close", None)
            if callable(closer):
                self._call_writer(writer, closer)
        fh, self._file = self._file, None
        if fh is None:
            return
        try:
            fh.close()
        except OSError as exc:
            warnings.warn(
                f"gradtool.Monitor: closing {self.path} failed ({_describe(exc)}); its last "
                "records may be lost",
                RuntimeWarning,
                stacklevel=2,
            )

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
        state = "closed" if self._closed else "open"
        return (
            f"Monitor({str(self.path)!r}, every={self.every}, run_id={self.run_id!r}, "
            f"records={self._records}, dropped={self.dropped}, {state})"
        )

    # -- internals --------------------------------------------------------------------------

    def _resumed_id(self) -> str | None:
        """Return the id of the run the file ends with (None for a run written before run ids),
        or a new one when the file holds no run."""
        try:
            found = last_run(self.path)
        except RunLogError as exc:
            raise UsageError(f"{opt('resume')} cannot read {self.path}: {exc.message}") from None
        return self.run_id if found is None else found.id

    def _open(self, meta: dict[str, Any], append: bool) -> _AppendFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = _AppendFile(self.path, truncate=not append)
        # A run killed mid-write leaves a partial last line: end it, so it stays one bad line.
        self._torn = append and _ends_without_newline(self.path)
        header = run_header(
            every=self.every,
            depth=self.depth,
            metadata=meta,
            versions={"gradtool_version": __version__, "torch_version": torch.__version__},
            run=self.run_id,
        )
        self._file = fh
        self._emit(json.dumps(header, allow_nan=False, separators=(",", ":")))
        return fh

    def _emit(self, line: str) -> bool:
        """Append `line` to the run log in one write (then fsync); return whether it got there.

        A failure warns once per Monitor and is otherwise silent: the training goes on. Ranks
        other than 0 of a distributed run write nothing.
        """
        if not self._writes:
            return True
        fh = self._file
        assert fh is not None
        data = ("\n" if self._torn else "").encode() + line.encode("utf-8") + b"\n"
        written = 0
        try:
            while written < len(data):
                count = fh.write(data[written:])
                if not count:
                    raise OSError(errno.EIO, "the write took no byte")
                written += count
            if self._fsync:
                self._sync(fh)
        except (OSError, ValueError) as exc:
            self._torn = self._torn or 0 < written < len(data)
            self._warn_write(exc)
            return False
        self._torn = False
        return True

    def _sync(self, fh: _AppendFile) -> None:
        try:
            fh.sync()
        except OSError as exc:
            if exc.errno not in _CANNOT_SYNC:
                raise
            self._fsync = False  # a pipe or a device: there is nothing to sync

    def _send(self, record: Record) -> None:
        """Hand `record` to each writer (rank 0 alone); a failing writer never stops training."""
        if self._writes:
            for writer in self._writers:
                self._call_writer(writer, writer, record)

    def _call_writer(self, writer: object, call: Callable[..., object], *args: Any) -> None:
        """Run `call(*args)` of `writer`; an exception warns once per writer and is dropped."""
        try:
            call(*args)
        except Exception as exc:
            if id(writer) in self._writer_warned:
                return
            self._writer_warned.add(id(writer))
            warnings.warn(
                f"gradtool.Monitor: the writer {_name_of(writer)} failed "
                f"({type(exc).__name__}: {exc}); training goes on, and it is called again with "
                "each later record",
                RuntimeWarning,
                stacklevel=4,
            )

    def _warn_write(self, exc: BaseException) -> None:
        if self._write_warned:
            return
        self._write_warned = True
        warnings.warn(
            f"gradtool.Monitor: cannot write to {self.path} ({_describe(exc)}); training goes "
            "on, this record is dropped and each later one is tried again (Monitor.dropped "
            "counts the records lost)",
            RuntimeWarning,
            stacklevel=4,
        )

    def _analyze(
        self, model: nn.Module, losses: Mapping[str, torch.Tensor], index: int
    ) -> Record | None:
        _check_static_graph(model)
        model = _unwrapped(_uncompiled(model))
        params = self._parameters(model) if callable(self._parameters) else self._parameters
        group = self._meet(index, losses) if self._distributed else None
        try:
            problem: Problem | None = None
            error: BaseException | None = None
            try:
                problem = Problem.live(model, losses, params)
                aliases = parameter_aliases(model) if self._groups else None
                if self._groups:  # a glob matching no parameter fails before any gradient
                    names = [n for n, _ in problem.parameters]
                    group_by_globs(names, self._groups, aliases=aliases)
            except Exception as exc:
                error = exc
            if group is not None:  # a failure on any rank is a failure on every rank
                agree(group, error)
            elif error is not None:
                raise error
            assert problem is not None
            result = compute_gramians(
                problem, strategy=self._strategy, retain_graph=True, group=group
            )
            record = build_record(
                result,
                step=index,
                depth=self.depth,
                pareto=self._pareto,
                layers=self.layers,
                groups=self._groups,
                aliases=aliases,
                run=self.run_id,
            )
        except GradientError as exc:
            if exc.reason in _COMPILED_REASONS:
                self._skip_compiled(index, exc)
                return None
            if not _is_nonfinite(exc, losses):
                raise
            self._skip_nonfinite(index, exc)
            return None
        except LossError as exc:
            if not _is_nonfinite(exc, losses):
                raise
            self._skip_nonfinite(index, exc)
            return None
        if (
            self._strategy == "auto"
            and result.fell_back(Fallback.VMAP_FAILED)
            and result.strategy != "structured"  # which would be lost; it falls back per step
        ):
            self._strategy = "loop"  # vmap cannot run this model: do not retry it every record
        return record

    def _meet(self, index: int, losses: Mapping[str, torch.Tensor]) -> Group:
        """Return the process group, after meeting the other ranks at the first recorded step
        (each rank must call `step` there: a Monitor on rank 0 alone would wait in the first
        collective; here it fails after HANDSHAKE_S with the reason) and sharing rank 0's run
        id; collectives' tensors go to the losses' device under NCCL."""
        device = next((t.device for t in losses.values() if isinstance(t, torch.Tensor)), None)
        group = current_group(device)
        if group is None:
            raise UsageError(
                "this Monitor records a distributed run, but the process group is gone",
                hint="call monitor.close() before torch.distributed.destroy_process_group()",
            )
        if not self._met:
            _handshake(group, index)
            shared: list[Any] = [self.run_id]
            torch.distributed.broadcast_object_list(shared, src=0, device=group.device)
            self.run_id = shared[0]
            self._met = True
        return group

    def _skip_nonfinite(self, index: int, exc: LossError | GradientError) -> None:
        self.skipped += 1
        warnings.warn(
            f"gradtool.Monitor: step {index} not recorded: {exc.message}",
            RuntimeWarning,
            stacklevel=4,
        )

    def _skip_compiled(self, index: int, exc: GradientError) -> None:
        self.skipped += 1
        if self._compile_warned:
            return
        self._compile_warned = True
        warnings.warn(
            f"gradtool.Monitor: step {index} not recorded: {exc.message}; training goes on, "
            f"and later steps of this graph are skipped the same way (Monitor.skipped counts "
            f"them). To record them: {exc.hint}",
            RuntimeWarning,
            stacklevel=4,
        )


class _AppendFile:
    """The run log, opened for appending (O_APPEND): each line goes out in one `write(2)`.

    No user-space buffer: what `write` returns is on its way to the file, so a failure is seen at
    the record that caused it, and lines of two processes appending to one file interleave whole.
    """

    def __init__(self, path: Path, *, truncate: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self.fd: int | None = os.open(path, flags | (os.O_TRUNC if truncate else 0), 0o666)

    def write(self, data: bytes) -> int:
        """Write `data` (or a first part of it); return how many bytes were written."""
        if self.fd is None:
            raise ValueError("I/O operation on closed file")
        return os.write(self.fd, data)

    def sync(self) -> None:
        """Flush what was written to the storage device (`fsync`)."""
        if self.fd is None:
            raise ValueError("I/O operation on closed file")
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the descriptor (once)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _ends_without_newline(path: Path) -> bool:
    """Return whether the regular file at `path` is non-empty and does not end with a newline."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # a device or a pipe: nothing to read back
        with open(path, "rb") as fh:
            if fh.seek(0, os.SEEK_END) == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:
        return False


def _name_of(writer: object) -> str:
    """Return a writer's name for a message: a function's own, else its class's."""
    return str(getattr(writer, "__qualname__", None) or type(writer).__name__)


def _check_writers(writers: Iterable[Callable[[Record], object]] | None) -> list[Any]:
    """Return `writers` as a list (None: none); raise UsageError unless each is callable."""
    if writers is None:
        return []
    if callable(writers) or isinstance(writers, (str, bytes)):
        raise UsageError(
            f"{opt('writers')} should be a list of writers; found one writer, not in a list",
            option="writers",
        )
    found = list(writers)
    for writer in found:
        if not callable(writer):
            raise UsageError(
                f"{opt('writers')} should hold callables taking a Record; found "
                f"{type(writer).__name__}",
                option="writers",
            )
    return found


def _group(distributed: bool | None) -> Group | None:
    """Return the process group a Monitor reduces over (see `Monitor(distributed=...)`)."""
    if distributed is not None and not isinstance(distributed, bool):
        raise UsageError(
            f"{opt('distributed')} should be True, False or None; found {distributed!r}"
        )
    if distributed is False:
        return None
    group = current_group()
    if group is None and distributed:
        raise UsageError(
            f"{opt('distributed', True)} needs an initialised torch.distributed process group "
            "of two or more ranks",
            hint="call torch.distributed.init_process_group first (torchrun sets up its "
            "environment), or leave distributed out",
            option="distributed",
        )
    return group


# Seconds the ranks wait for each other at a distributed Monitor's first recorded step (at most
# the collectives' timeout, GRADTOOL_DIST_TIMEOUT).
HANDSHAKE_S = 60.0
_MONITORS = itertools.count()  # per process: the k-th distributed Monitor meets the others' k-th


def _handshake(group: Group, index: int) -> None:
    """Meet every rank through the process group's store, or raise a `UsageError` naming how many
    ranks came: a collective would wait for a missing rank until the group's timeout."""
    try:
        store = torch.distributed.distributed_c10d._get_default_store()
    except Exception:  # no store to meet through: the collectives' own timeout applies
        return
    key = f"gradtool/monitor/{next(_MONITORS)}"
    store.add(key, 1)
    wait = min(HANDSHAKE_S, timeout_s())
    deadline = time.monotonic() + wait
    came = store.add(key, 0)
    while came < group.world and time.monotonic() < deadline:
        time.sleep(0.01)
        came = store.add(key, 0)
    if came < group.world:
        raise UsageError(
            f"in a distributed run every rank must call Monitor.step: {came} of {group.world} "
            f"ranks reached step {index} within {wait:.0f} s",
            hint="build the Monitor and call step on every rank (rank 0 alone writes), or pass "
            "distributed=False to record this rank's own batch",
            option="distributed",
            reason="missing_ranks",
        )


def _check_static_graph(model: nn.Module) -> None:
    """Refuse a DistributedDataParallel model with static_graph=True: its first iteration
    queues the gradient all-reduce on the next backward pass, which would be gradtool's own
    (measured: the training then differs, and the ranks drift apart)."""
    if type(model).__name__ == "DistributedDataParallel" and getattr(model, "static_graph", False):
        raise UsageError(
            "DistributedDataParallel(static_graph=True) hands its all-reduce to the next "
            "backward pass, which would be gradtool's: the training would change",
            hint="use static_graph=False (the default) on the runs you monitor",
            reason="static_graph",
        )


def _unwrapped(model: nn.Module) -> nn.Module:
    """Return the module a DistributedDataParallel wraps (its parameters, under their own
    names), else `model`."""
    if type(model).__name__ == "DistributedDataParallel" and isinstance(
        getattr(model, "module", None), nn.Module
    ):
        return model.module
    return model


def _uncompiled(model: nn.Module) -> nn.Module:
    """Return the module a `torch.compile` wrapper holds (the same parameters, under their own
    names), or `model` itself."""
    inner = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
        return inner
    return model


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


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
    if exc.reason == "nonfinite":  # also one relayed from another rank (its own loss)
        return True
    try:
        return any(
            isinstance(v, torch.Tensor)
            and v.numel() == 1
            and not bool(torch.isfinite(v.detach()).all())
            for v in losses.values()
        )
    except Exception:
        return False
