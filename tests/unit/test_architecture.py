"""The layout's rules (shared/ARCHITECTURE.md), read from every import of every module with `ast`.

Each package may import only the packages its rule allows; nothing imports the top-level face
`gradtool` from inside; no circle between packages; torch, typer and rich stay where they belong;
library messages name no command-line flag.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gradtool"

PACKAGES = (
    "problem",
    "engine",
    "linalg",
    "weightings",
    "analysis",
    "results",
    "monitoring",
    "render",
    "cli",
    "integrations",
)
# The units a gradtool import can name: the packages above and the top-level modules.
TOP_MODULES = ("api", "errors", "_version", "__main__")

# unit -> the gradtool units it may import (None: no restriction beyond the global rules).
ALLOWED: dict[str, set[str] | None] = {
    "errors": set(),
    "_version": set(),
    "linalg": {"errors"},
    "results": {"errors", "_version"},
    "problem": {"errors"},
    "weightings": {"linalg", "errors"},
    "engine": {"problem", "linalg", "errors"},
    "render": {"results", "errors", "_version"},
    "analysis": None,
    "monitoring": None,
    "integrations": None,
    "api": None,
    "cli": None,
    "__main__": {"cli"},
}
NEVER: dict[str, set[str]] = {
    "analysis": {"api", "render", "cli"},
    "monitoring": {"api", "render", "cli"},
    "integrations": {"api", "render", "cli"},
}
NO_TORCH = {"results", "render", "errors", "_version"}
TYPER_ONLY = {"cli"}
RICH_ONLY = {"render", "cli"}
# Library messages (errors raised, warnings issued) outside these units name no CLI flag.
FLAG_WORDING_ALLOWED = {"cli", "render"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
# A whole command line in backquotes names what made a file (`gradtool inspect --json`): no advice.
QUOTED_COMMAND = re.compile(r"`gradtool [^`]*`")


@dataclass(frozen=True)
class Import:
    module: str  # the absolute module imported, e.g. "gradtool.engine.result" or "torch"
    line: int


def unit_of(path: Path, root: Path = PACKAGE) -> str:
    """Return the unit a source file belongs to: its package, or its top-level module's name."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path = PACKAGE) -> Iterator[Import]:
    """Yield every import in `path`: top level, inside functions and TYPE_CHECKING blocks alike."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path, root)
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module == "gradtool":  # `from gradtool import x`: x is a unit
                for alias in node.names:
                    yield Import(f"gradtool.{alias.name}", node.lineno)
            else:
                yield Import(module, node.lineno)


def target_unit(module: str) -> str | None:
    """Return the gradtool unit `module` is in ("" for the top-level face), None if not ours."""
    parts = module.split(".")
    if parts[0] != "gradtool":
        return None
    return parts[1] if len(parts) > 1 else ""


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sources():
        unit = unit_of(path)
        for imp in imports(path):
            target = target_unit(imp.module)
            if target and target != unit:
                graph.setdefault(unit, set()).add(target)
    return graph


def test_every_module_is_in_a_known_unit() -> None:
    units = {unit_of(p) for p in sources()} - {"__init__"}
    assert units <= set(PACKAGES) | set(TOP_MODULES), units - set(PACKAGES) - set(TOP_MODULES)
    flat = [p.name for p in PACKAGE.glob("*.py")]
    assert sorted(flat) == sorted(["__init__.py", *(f"{m}.py" for m in TOP_MODULES)])


def violations(path: Path, root: Path = PACKAGE) -> list[str]:
    """Return each import of `path` that breaks a rule, worded with its line."""
    unit = unit_of(path, root)
    broken: list[str] = []
    for imp in imports(path, root):
        target = target_unit(imp.module)
        top = imp.module.split(".")[0]
        where = f"{path.relative_to(root.parent)}:{imp.line} imports {imp.module}"
        if target == "" and unit != "__init__":
            broken.append(f"{where}: nothing inside imports the top-level face `gradtool`")
        if target and target != unit:
            allowed = ALLOWED.get(unit)
            if allowed is not None and target not in allowed:
                broken.append(f"{where}: {unit} may import only {sorted(allowed) or 'nothing'}")
            if target in NEVER.get(unit, set()):
                broken.append(f"{where}: {unit} never imports {target}")
        if top == "torch" and unit in NO_TORCH:
            broken.append(f"{where}: {unit} must stay torch-free")
        if top == "typer" and unit not in TYPER_ONLY:
            broken.append(f"{where}: only cli imports typer")
        if top == "rich" and unit not in RICH_ONLY:
            broken.append(f"{where}: nothing below render imports rich")
    return broken


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layout(path: Path) -> None:
    broken = violations(path)
    assert not broken, "\n".join(broken)


def test_no_circle_between_packages() -> None:
    graph = edges()
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                circles.append([*trail[trail.index(nxt) :], nxt])
            elif len(trail) < 12:
                visit(nxt, [*trail, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not circles, " ; ".join(" -> ".join(c) for c in circles)


def _message_texts(node: ast.Call) -> Iterator[str]:
    """Yield the source of each message argument (f-strings whole, as written)."""
    for arg in [*node.args, *(k.value for k in node.keywords if k.arg in (None, "hint"))]:
        yield ast.unparse(arg)


def _is_message_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name.endswith("Error") or name == "warn"


@pytest.mark.parametrize(
    "path",
    [p for p in sources() if unit_of(p) not in FLAG_WORDING_ALLOWED],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_library_messages_name_no_cli_flag(path: Path) -> None:
    found = flag_messages(path)
    assert not found, "word options with errors.opt(...), not CLI flags:\n" + "\n".join(found)


def flag_messages(path: Path) -> list[str]:
    """Return the error and warning messages in `path` that name a CLI flag."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.name}:{node.lineno}: {text}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _is_message_call(node)
        for text in _message_texts(node)
        if FLAG.search(QUOTED_COMMAND.sub("", text))
    ]


def test_the_checker_catches_a_flag_in_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        'raise UsageError(f"no {x}", hint="use --strategy loop")\n'
        'warnings.warn(f"try a smaller --lr than {lr}")\n'
        'raise RunLogError(f"a `gradtool {c} --json` document")\n',
        encoding="utf-8",
    )
    assert [line.split(":")[1] for line in flag_messages(bad)] == ["1", "2"]


@pytest.mark.parametrize(
    ("where", "source", "rule"),
    [
        ("engine/bad.py", "def f():\n    from gradtool.render import make_console\n", "engine may"),
        ("linalg/bad.py", "from gradtool.engine.result import EngineResult\n", "linalg may"),
        ("results/bad.py", "import torch\n", "torch-free"),
        ("render/bad.py", "from gradtool.analysis import build_report\n", "render may"),
        ("analysis/bad.py", "from gradtool import api\n", "never imports api"),
        ("monitoring/bad.py", "from gradtool.cli.output import emit\n", "never imports cli"),
        ("engine/bad.py", "import gradtool\n", "top-level face"),
        ("analysis/bad.py", "import rich.table\n", "rich"),
        ("render/bad.py", "import typer\n", "typer"),
        ("engine/bad.py", "from ..render import report\n", "engine may"),
    ],
)
def test_the_checker_catches_a_broken_rule(
    tmp_path: Path, where: str, source: str, rule: str
) -> None:
    root = tmp_path / "gradtool"
    path = root / where
    path.parent.mkdir(parents=True)
    path.write_text(source, encoding="utf-8")
    found = violations(path, root)
    assert any(rule in v for v in found), found
