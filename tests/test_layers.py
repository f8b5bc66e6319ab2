"""The package's shape, as docs/architecture.md draws it: dependencies point one way, no import cycle, no
module over 600 lines.

Layers, top to bottom: ``api``, ``cli``, ``bench`` -> ``search``, ``indexer`` -> ``encoders``, ``media``,
``storage`` -> the top-level modules (``config``, ``errors``, ``spaces``, ``digest``). A module may import its
own part and the layers below; ``search`` never imports ``indexer``; ``encoders``, ``media`` and ``storage``
don't import each other. Every import counts, those inside functions and under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "xmodal"
LAYER = {"api": 3, "cli": 3, "bench": 3, "search": 2, "indexer": 2, "encoders": 1, "media": 1, "storage": 1,
         "config": 0, "errors": 0, "spaces": 0, "digest": 0, "__init__": 0}
APART = {frozenset({"search", "indexer"}), frozenset({"encoders", "media"}), frozenset({"encoders", "storage"}),
         frozenset({"media", "storage"})}
MAX_LINES = 600


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """The xmodal modules ``name`` imports (resolved to modules, not names inside them)."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:  # `from a.b import c`: c is a module, or a name in a.b
                target = target.rpartition(".")[0]
            if target.startswith("xmodal.") and target != name:
                found.add(target)
    return found


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


GRAPH = {name: imports(name, path) for name, path in modules().items()}


def test_the_layers_are_known() -> None:
    assert {part(m) for m in GRAPH} <= set(LAYER), {part(m) for m in GRAPH} - set(LAYER)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_or_sideways_import(module: str) -> None:
    here = part(module)
    for target in sorted(GRAPH[module]):
        there = part(target)
        if there == here or there == "__init__":
            continue
        assert LAYER[there] <= LAYER[here], f"{module} imports {target}: upward"
        assert frozenset({here, there}) not in APART, f"{module} imports {target}: {here} and {there} stay apart"


def test_no_import_cycle() -> None:
    seen: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(module: str) -> None:
        seen[module] = 1
        stack.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if target.startswith(module + "."):  # a package's __init__ re-exporting its own modules
                continue
            if seen.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in seen:
                visit(target)
        stack.pop()
        seen[module] = 2

    for module in sorted(GRAPH):
        if module not in seen:
            visit(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_over_600_lines(module: str) -> None:
    lines = modules()[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{module}: {lines} lines (split it along its jobs)"


def test_the_checks_can_fail() -> None:
    """The graph sees imports inside functions and relative imports (what the rules above rely on)."""
    assert "xmodal.search.engine" in GRAPH["xmodal.api.service"]
    assert any(t.startswith("xmodal.indexer.engines") for t in GRAPH["xmodal.indexer.run"])
    assert "xmodal.media.audio" in GRAPH["xmodal.search.queries"]  # imported inside a method
