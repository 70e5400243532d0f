"""Shared fixtures: write a gradfile into a temporary folder, and a CLI runner.

Plain helpers (paths, gradfile snippets, `invoke`, `strict_json`, the `TwoHeads` model) are in
tests/_models.py; hand-made run-log records in tests/_runlog_samples.py.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

WriteGradfile = Callable[..., Path]


@pytest.fixture
def write_gradfile(tmp_path: Path) -> WriteGradfile:
    """Return `write(source, name="gradfile.py") -> Path`: `source` dedented into tmp_path."""

    def write(source: str, name: str = "gradfile.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
        return path

    return write


@pytest.fixture
def runner() -> CliRunner:
    """Return a typer CliRunner; its results keep stdout and stderr apart (`.stdout`, `.stderr`)."""
    return CliRunner()
