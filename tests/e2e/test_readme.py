"""The README's output blocks are real output: regenerating them changes nothing."""

from __future__ import annotations

import importlib.util

from _models import ROOT


def test_readme_output_blocks_are_fresh() -> None:
    spec = importlib.util.spec_from_file_location(
        "readme_outputs", ROOT / "scripts" / "readme_outputs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert module.MARKER.search(text), "the README should hold at least one output block"
    assert module.render(text) == text, "stale README output: run python scripts/readme_outputs.py"


def test_readme_quick_start_commands_exist() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
