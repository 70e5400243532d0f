"""`gradtool --help` and `--version` answer without importing torch (checked in a fresh process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_PROBE = textwrap.dedent(
    """
    import sys
    from gradtool.cli import app
    try:
        app(sys.argv[1:], prog_name="gradtool")
    except SystemExit as exc:
        code = exc.code or 0
    else:
        code = 0
    heavy = sorted(m for m in ("torch", "numpy", "rich.table") if m in sys.modules)
    sys.stderr.write("IMPORTED " + ",".join(heavy) + "\\n")
    sys.exit(code)
    """
)


def _run(*args: str) -> tuple[int, str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120
    )
    line = [x for x in done.stderr.splitlines() if x.startswith("IMPORTED ")][-1]
    imported = [m for m in line.removeprefix("IMPORTED ").split(",") if m]
    return done.returncode, done.stdout, imported


@pytest.mark.parametrize(
    "args",
    [("--help",), ("--version",), ("inspect", "--help"), ("pareto", "--help"), ()],
    ids=["help", "version", "inspect-help", "pareto-help", "no-args"],
)
def test_help_and_version_do_not_import_torch(args: tuple[str, ...]) -> None:
    code, out, imported = _run(*args)
    assert "torch" not in imported, f"gradtool {' '.join(args)} imported torch"
    assert "numpy" not in imported
    if args == ("--version",):
        assert code == 0 and out.startswith("gradtool ")
    elif args:
        assert code == 0 and "Usage" in out


def test_python_m_gradtool_version_does_not_import_torch() -> None:
    """The module entry point, traced by the interpreter itself (-X importtime)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gradtool", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.startswith("gradtool ")
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "gradtool.cli" in modules
    assert "torch" not in modules
