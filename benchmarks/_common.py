"""Helpers shared by the benchmark scripts: the machine description, medians, RESULTS.md sections.

Each script owns one section of `benchmarks/RESULTS.md`, between `<!-- NAME:start -->` and
`<!-- NAME:end -->` markers, and replaces only that section, so the scripts can be rerun one at
a time and the hand-written text around the sections is kept.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def median(values: Sequence[float]) -> float:
    """Return the median of `values`."""
    return statistics.median(values)


def cpu_model() -> str:
    """Return the CPU model name and the number of CPUs the process may use."""
    name = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if found:
            name = found.group(1).strip()
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} CPUs"


def versions() -> str:
    """Return the Python, torch and torchjd versions (importing torch)."""
    import importlib.metadata as md

    import torch

    try:
        torchjd = md.version("torchjd")
    except md.PackageNotFoundError:
        torchjd = "not installed"
    return f"Python {platform.python_version()}, torch {torch.__version__}, torchjd {torchjd}"


def gpu_name(device: str) -> str | None:
    """Return the CUDA device name when `device` is a CUDA device."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def header(title: str, device: str, extra: Sequence[str] = ()) -> list[str]:
    """Return the markdown lines describing the run: machine, versions, command, date."""
    command = "python " + " ".join(shlex.quote(a) for a in [_rel(sys.argv[0]), *sys.argv[1:]])
    lines = [
        f"### {title}",
        "",
        f"- Machine: {cpu_model()}" + (f"; GPU {gpu_name(device)}" if gpu_name(device) else ""),
        f"- Versions: {versions()}",
        f"- Command: `{command}`",
        f"- Date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
    ]
    lines += [f"- {e}" for e in extra]
    return [*lines, ""]


def write_section(path: Path, name: str, lines: Sequence[str]) -> None:
    """Replace the `name` section of the markdown file `path` (append it when absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = "\n".join([start, *lines, end])
    text = path.read_text() if path.exists() else "# gradtool benchmark results\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def table(head: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    """Return a markdown table; `align`: 'l' or 'r' per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(head) - 1)
    marks = [":---" if a == "l" else "---:" for a in align]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(marks) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def git_describe() -> str:
    """Return the short commit of the working tree (with '+dirty'), or 'unknown'."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")


def _rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def rss_bytes() -> int:
    """Return this process's resident set size now (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm_bytes() -> int:
    """Return this process's peak resident set size (VmHWM; reset via /proc/self/clear_refs)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")
