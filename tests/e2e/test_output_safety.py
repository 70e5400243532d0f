"""What the CLI writes never destroys a user's file, `--json` stdout is exactly one document, and
a gradfile that changes the working folder moves no path.

- an `-o` (or `--plot`) that is an input of the run (gradfile, checkpoint, run log), by any name
  (hard link, symbolic link, `..`), is refused before any work, the input unchanged;
- an `-o` that is not a regular file (/dev/null, a FIFO, a link to one) is written in place and
  stays what it was; a link to a file is kept and its target replaced;
- a failure after this run wrote `-o` keeps that document; a stale one that cannot be removed
  is a warning;
- whatever the gradfile prints (Python, a thread, `os.write(1, ...)`, C `printf`, a child
  process) goes to stderr;
- relative `-o`, `--plot` and `--checkpoint` stay where they were typed, whatever `os.chdir`
  the gradfile does.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _models import HEADER, LOSSES, PNG_SIGNATURE, ROOT, invoke, strict_json
from _runlog_samples import conflict_run, write_run
from typer.testing import CliRunner, Result

POSIX = pytest.mark.skipif(os.name != "posix", reason="needs POSIX links, devices and FIFOs")
MARKED = (
    "from pathlib import Path\nPath(__file__).with_name('ran.marker').touch()\n"
    + HEADER
    + "model = nn.Linear(3, 1)\n"
    + LOSSES
)


@pytest.fixture(autouse=True)
def _plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADTOOL_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def gradfile(write_gradfile: Callable[..., Path]) -> Path:
    """A valid gradfile that leaves `ran.marker` beside itself when it runs."""
    return write_gradfile(MARKED)


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run.jsonl", conflict_run())


def error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_refused(result: Result, *words: str) -> None:
    """Exit 2, one `Error:` line holding `words`, a hint, nothing on stdout, no traceback."""
    assert result.exit_code == 2, result.output
    line = error_line(result)
    for word in words:
        assert word in line, (word, line)
    assert "Hint:" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output


def ran(gradfile: Path) -> bool:
    return gradfile.with_name("ran.marker").exists()


def save_checkpoint(path: Path, weight: float = 0.5, bias: float = 0.25) -> Path:
    model = torch.nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.fill_(bias)
    torch.save(model.state_dict(), path)
    return path


# --- 1. an output that is an input is refused, before any work ----------------------------------


def aliases(tmp_path: Path, target: Path) -> dict[str, Path]:
    """Return other names of `target`: itself, a hard link, a symbolic link, a `..` detour."""
    (tmp_path / "sub").mkdir(exist_ok=True)
    hard, soft = tmp_path / "hard.json", tmp_path / "soft.json"
    os.link(target, hard)
    soft.symlink_to(target.name)
    return {
        "same": target,
        "hard-link": hard,
        "symlink": soft,
        "dotdot": tmp_path / "sub" / ".." / target.name,
    }


ALIASES = ["same", "hard-link", "symlink", "dotdot"]


@POSIX
@pytest.mark.parametrize("alias", ALIASES)
def test_report_output_onto_its_run_log_is_refused_and_the_log_kept(
    runner: CliRunner, run_log: Path, tmp_path: Path, alias: str
) -> None:
    before = run_log.read_bytes()
    output = aliases(tmp_path, run_log)[alias]
    result = invoke(runner, "report", run_log, "--json", "-o", output)
    assert_refused(result, "would overwrite the run log", str(run_log))
    assert run_log.read_bytes() == before
    assert output.read_bytes() == before  # the alias itself is untouched too


@POSIX
@pytest.mark.parametrize("alias", ALIASES)
def test_output_onto_the_checkpoint_is_refused_before_the_gradfile_runs(
    runner: CliRunner, gradfile: Path, tmp_path: Path, alias: str
) -> None:
    checkpoint = save_checkpoint(tmp_path / "ck.pt")
    before = checkpoint.read_bytes()
    output = aliases(tmp_path, checkpoint)[alias]
    result = invoke(runner, "inspect", gradfile, "--checkpoint", checkpoint, "-o", output)
    assert_refused(result, "would overwrite the checkpoint")
    assert checkpoint.read_bytes() == before
    assert not ran(gradfile)


def test_output_onto_the_gradfile_is_refused_and_the_gradfile_kept(
    runner: CliRunner, gradfile: Path
) -> None:
    before = gradfile.read_bytes()
    result = invoke(runner, "pareto", gradfile, "-o", gradfile)
    assert_refused(result, "would overwrite the gradfile")
    assert gradfile.read_bytes() == before
    assert not ran(gradfile)


def test_a_plot_onto_an_input_is_refused(runner: CliRunner, gradfile: Path, tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "weights.png")  # an odd name, but an input
    before = checkpoint.read_bytes()
    result = invoke(runner, "inspect", gradfile, "--checkpoint", checkpoint, "--plot", checkpoint)
    assert_refused(result, "--plot", "would overwrite the checkpoint")
    assert checkpoint.read_bytes() == before
    assert not ran(gradfile)


def test_output_and_plot_naming_one_file_is_refused(
    runner: CliRunner, gradfile: Path, tmp_path: Path
) -> None:
    figure = tmp_path / "fig.png"
    result = invoke(runner, "inspect", gradfile, "-o", figure, "--plot", figure)
    assert_refused(result, "-o", "--plot", "name the same file")
    assert not figure.exists() and not ran(gradfile)


def test_report_output_onto_one_of_its_figures_is_refused(
    runner: CliRunner, run_log: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "figures"
    result = invoke(runner, "report", run_log, "--plot", folder, "-o", folder / "grad_norms.png")
    assert_refused(result, "name the same file", "grad_norms.png")
    assert not folder.exists()


def test_report_figure_onto_its_run_log_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "figures"
    folder.mkdir()
    run_log = write_run(folder / "cosine_pairs.png", conflict_run())
    before = run_log.read_bytes()
    result = invoke(runner, "report", run_log, "--plot", folder)
    assert_refused(result, "would overwrite the run log")
    assert run_log.read_bytes() == before


# --- 2. an output that is not a regular file is written in place, never replaced ---------------


@POSIX
@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_output_to_dev_null_succeeds_and_dev_null_stays_a_device(
    runner: CliRunner, gradfile: Path
) -> None:
    result = invoke(runner, "inspect", gradfile, "--json", "-o", "/dev/null")
    assert result.exit_code == 0, result.output
    strict_json(result.stdout)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@POSIX
@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_a_failed_run_leaves_dev_null_a_device(runner: CliRunner, gradfile: Path) -> None:
    result = invoke(runner, "inspect", gradfile, "--params", "zz*", "-o", "/dev/null")
    assert result.exit_code == 2
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert "removed" not in result.stderr


class FifoReader:
    """Read a FIFO in a thread until its writer closes it (opened without blocking, so a run
    that never writes it fails the test after `timeout` instead of hanging it)."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = b""
        self.got_eof = False
        self.timeout = timeout
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            if chunk:
                self.data += chunk
            elif self.data:  # end of file after the document
                self.got_eof = True
                return
            else:
                time.sleep(0.005)  # no writer yet

    def result(self) -> bytes:
        self.thread.join(self.timeout)
        os.close(self.fd)
        assert self.got_eof, "the FIFO was never written and closed"
        return self.data


@POSIX
def test_output_to_a_fifo_streams_the_document_and_keeps_the_fifo(
    runner: CliRunner, gradfile: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "doc.pipe"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    result = invoke(runner, "inspect", gradfile, "--json", "-o", fifo)
    assert result.exit_code == 0, result.output
    assert strict_json(reader.result().decode("utf-8")) == strict_json(result.stdout)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@POSIX
def test_output_through_a_symlink_to_a_fifo_keeps_both(
    runner: CliRunner, gradfile: Path, tmp_path: Path
) -> None:
    fifo, link = tmp_path / "doc.pipe", tmp_path / "doc.json"
    os.mkfifo(fifo)
    link.symlink_to(fifo.name)
    reader = FifoReader(fifo)
    result = invoke(runner, "inspect", gradfile, "-o", link)
    assert result.exit_code == 0, result.output
    assert strict_json(reader.result().decode("utf-8"))["command"] == "inspect"
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)


@POSIX
def test_output_through_a_symlink_replaces_the_target_and_keeps_the_link(
    runner: CliRunner, gradfile: Path, tmp_path: Path
) -> None:
    (tmp_path / "runs").mkdir()
    target, link = tmp_path / "runs" / "1.json", tmp_path / "latest.json"
    target.write_text("{}\n", encoding="utf-8")
    link.symlink_to(Path("runs") / "1.json")
    result = invoke(runner, "pareto", gradfile, "--json", "-o", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(Path("runs") / "1.json")
    assert strict_json(target.read_text(encoding="utf-8")) == strict_json(result.stdout)


@POSIX
def test_a_failed_run_neither_follows_nor_removes_a_symlinked_output(
    runner: CliRunner, gradfile: Path, tmp_path: Path
) -> None:
    target, link = tmp_path / "earlier.json", tmp_path / "latest.json"
    target.write_bytes(b'{"earlier": true}\n')
    link.symlink_to(target.name)
    result = invoke(runner, "inspect", gradfile, "--params", "zz*", "-o", link)
    assert result.exit_code == 2
    assert link.is_symlink() and target.read_bytes() == b'{"earlier": true}\n'
    assert "Warning:" in result.stderr and "links to an earlier run's document" in result.stderr
    assert "Traceback" not in result.output


# --- 3. what this run wrote stays; a stale document that cannot go is a warning ---------------

REMOVES_FIGURES = """
import shutil
from pathlib import Path
import torch
from torch import nn

model = nn.Linear(3, 1)

def losses(model):
    shutil.rmtree(Path(__file__).with_name("figures"), ignore_errors=True)
    y = model(torch.ones(4, 3))
    return {"mean": y.mean(), "square": (y ** 2).mean()}
"""


def test_a_plot_failure_keeps_the_document_this_run_wrote(
    runner: CliRunner, write_gradfile: Callable[..., Path], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    path = write_gradfile(REMOVES_FIGURES)
    (tmp_path / "figures").mkdir()
    out, figure = tmp_path / "out.json", tmp_path / "figures" / "fig.png"
    out.write_text('{"earlier": true}\n', encoding="utf-8")
    result = invoke(runner, "inspect", path, "--json", "-o", out, "--plot", figure)
    assert result.exit_code == 2, result.output
    assert "cannot write the figure" in error_line(result) and str(figure) in error_line(result)
    assert "Traceback" not in result.output
    assert strict_json(out.read_text(encoding="utf-8")) == strict_json(result.stdout)
    assert "removed" not in result.stderr


def test_a_stale_output_that_cannot_be_removed_is_a_warning(
    runner: CliRunner, gradfile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.json"
    out.write_bytes(b'{"earlier": true}\n')
    unlink = Path.unlink

    def read_only(self: Path, missing_ok: bool = False) -> None:
        if self == out:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    result = invoke(runner, "inspect", gradfile, "--params", "zz*", "-o", out)
    assert result.exit_code == 2
    assert "matched none" in error_line(result)
    warning = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warning) == 1 and "Read-only file system" in warning[0], result.stderr
    assert "Traceback" not in result.output
    assert out.exists()


# --- 4. --json stdout is one document, whatever the gradfile prints ---------------------------

PRINTS = r"""
import ctypes, os, sys, threading
import torch
from torch import nn

def noise(tag):
    print(f"PY-{tag}")
    worker = threading.Thread(target=print, args=(f"THREAD-{tag}",))
    worker.start()
    worker.join()
    os.write(1, f"FD-{tag}\n".encode())
    ctypes.CDLL(None).printf(f"C-{tag}\n".encode())  # left in C's stdout buffer: no fflush
    os.system(f"echo CHILD-{tag}")
    sys.stdout.write(f"UNFLUSHED-{tag}")  # no newline, no flush

noise("IMPORT")
model = nn.Linear(3, 1)

def losses(model):
    noise("LOSSES")
    y = model(torch.ones(4, 3))
    return {"mean": y.mean(), "square": (y ** 2).mean()}
"""
MARKERS = ["PY", "THREAD", "FD", "C", "CHILD", "UNFLUSHED"]


def run_process(*args: str | Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("GRADTOOL_DEBUG", "FORCE_COLOR")}
    environ["NO_COLOR"] = "1"
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environ,
        timeout=120,
        check=False,
    )


@POSIX
def test_json_stdout_is_one_document_whatever_the_gradfile_prints(
    write_gradfile: Callable[..., Path],
) -> None:
    path = write_gradfile(PRINTS)
    proc = run_process(sys.executable, "-m", "gradtool", "inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = strict_json(proc.stdout)
    assert doc["command"] == "inspect" and doc["losses"] == ["mean", "square"]
    for tag in ("IMPORT", "LOSSES"):
        for marker in MARKERS:
            assert f"{marker}-{tag}" in proc.stderr, (marker, tag, proc.stderr)
            assert f"{marker}-{tag}" not in proc.stdout


@POSIX
def test_prints_of_a_failing_gradfile_stay_off_stdout(write_gradfile: Callable[..., Path]) -> None:
    path = write_gradfile(
        PRINTS.replace("    y = model(", '    raise RuntimeError("boom")\n    y = model(')
    )
    proc = run_process(sys.executable, "-m", "gradtool", "pareto", path, "--json")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "FD-LOSSES" in proc.stderr and "C-LOSSES" in proc.stderr
    assert "Error: losses(model) raised RuntimeError" in proc.stderr


@POSIX
def test_stdout_is_restored_after_the_block_even_when_it_raises() -> None:
    code = textwrap.dedent(
        """
        import os, sys
        from gradtool.cli.output import user_prints_to_stderr
        try:
            with user_prints_to_stderr():
                print("inside-print")
                os.write(1, b"inside-fd\\n")
                raise RuntimeError
        except RuntimeError:
            pass
        print("after-print", flush=True)
        os.write(1, b"after-fd\\n")
        """
    )
    proc = run_process(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "after-print\nafter-fd\n"
    assert "inside-print" in proc.stderr and "inside-fd" in proc.stderr


# --- 5. a gradfile's os.chdir moves no path ------------------------------------------------------

CHDIR = """
import os
from pathlib import Path
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
(HERE / "elsewhere").mkdir(exist_ok=True)
os.chdir(HERE / "elsewhere")
model = nn.Linear(3, 1)

def losses(model):
    os.chdir(HERE / "elsewhere")
    y = model(torch.ones(4, 3))
    return {"mean": y.mean(), "square": (y ** 2).mean()}
"""


def test_relative_paths_stay_where_typed_when_the_gradfile_changes_folder(
    runner: CliRunner,
    write_gradfile: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("matplotlib")
    write_gradfile(CHDIR)
    save_checkpoint(tmp_path / "ck.pt", weight=0.5, bias=0.25)  # y = 3 * 0.5 + 0.25 = 1.75
    monkeypatch.chdir(tmp_path)
    result = invoke(
        runner,
        "inspect",
        "gradfile.py",
        "--checkpoint",
        "ck.pt",
        "-o",
        "out.json",
        "--plot",
        "fig.png",
        "--json",
    )
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert doc == strict_json(result.stdout)
    assert doc["loss_values"]["mean"] == pytest.approx(1.75)
    assert doc["loss_values"]["square"] == pytest.approx(1.75**2)
    assert (tmp_path / "fig.png").read_bytes().startswith(PNG_SIGNATURE)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert doc["meta"]["gradfile"] == "gradfile.py"  # shown as typed


def test_messages_show_relative_paths_as_typed(
    runner: CliRunner, gradfile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(runner, "inspect", gradfile.name, "-o", "out.json")
    assert result.exit_code == 0, result.output
    assert "wrote out.json" in result.stderr and str(tmp_path) not in result.stderr
    result = invoke(runner, "inspect", gradfile.name, "-o", Path("nowhere") / "out.json")
    assert result.exit_code == 2
    assert error_line(result) == (
        f"Error: -o {Path('nowhere') / 'out.json'}: the folder nowhere does not exist"
    )


def test_output_inside_a_checkpoint_folder_is_refused_and_the_weights_kept(
    runner: CliRunner, write_gradfile: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 1)\n" + LOSSES)
    folder = tmp_path / "hf"
    folder.mkdir()
    weights = folder / "pytorch_model.bin"
    torch.save(torch.nn.Linear(3, 1).state_dict(), weights)
    before = weights.read_bytes()
    result = invoke(runner, "inspect", path, "--checkpoint", folder, "-o", weights)
    assert result.exit_code == 2, result.output
    assert "an input of this run" in result.stderr
    assert weights.read_bytes() == before


def test_a_device_as_checkpoint_is_one_error_line(
    runner: CliRunner, write_gradfile: Callable[..., Path]
) -> None:
    path = write_gradfile(HEADER + "model = nn.Linear(3, 1)\n" + LOSSES)
    result = invoke(runner, "inspect", path, "--checkpoint", "/dev/zero")
    assert result.exit_code == 1
    assert "Error: checkpoint /dev/zero is not a regular file" in result.stderr
