"""Regenerates (or checks) the README's output blocks from real runs of the CLI.

A block is a marker line `<!-- gradtool-output: ARGS -->` followed by a ```text fence; its body is
the stdout of `gradtool ARGS` at a width of 100 columns without colour.

    python scripts/readme_outputs.py          # rewrite README.md in place
    python scripts/readme_outputs.py --check  # exit 1 if a block is stale
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- gradtool-output: (?P<args>.+?) -->\n```text\n(?P<body>.*?)```", re.S)


def run(args: str) -> str:
    """Return the stdout of `gradtool ARGS`, run in-process with a fixed width and no colour."""
    from typer.testing import CliRunner

    from gradtool.cli import app

    env = {"NO_COLOR": "1", "COLUMNS": "100", "TERM": "dumb"}
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(app, shlex.split(args), env=env)
    finally:
        os.chdir(old)
    if result.exit_code != 0:
        raise SystemExit(f"gradtool {args} exited {result.exit_code}:\n{result.output}")
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    return "\n".join(lines).strip("\n") + "\n"


def render(text: str) -> str:
    """Return `text` with every output block regenerated."""
    return MARKER.sub(
        lambda m: f"<!-- gradtool-output: {m['args']} -->\n```text\n{run(m['args'])}```", text
    )


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    fresh = render(text)
    if "--check" in sys.argv[1:]:
        if fresh != text:
            print("README.md output blocks are stale: run python scripts/readme_outputs.py")
            return 1
        return 0
    readme.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
