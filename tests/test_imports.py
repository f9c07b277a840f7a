"""The package's import graph: arrows only point down, no cycles, no module past the size aim.

Every ``import``/``from ... import`` of a ``brcatool`` module counts, function-local ones included
(a lazy import hides a cycle from Python, not from the reader); only ``if TYPE_CHECKING:`` blocks are
skipped. ``from brcatool.pkg import name`` counts as an edge to ``brcatool.pkg.name`` when that is a
module, else to the package ``brcatool.pkg`` (its ``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import brcatool

ROOT = Path(brcatool.__file__).parent
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("brcatool"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            if base.startswith("brcatool"):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = _imports(tree, name, path.name == "__init__.py", known)
        graph[name] = {e for e in edges if e in known and e != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_detector_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("import brcatool.x\nfrom brcatool.y import z\nif TYPE_CHECKING:\n    import brcatool.w\n"
                     "def f():\n    from brcatool import y\n")
    known = {"brcatool.x", "brcatool.y", "brcatool.w"}
    assert _imports(tree, "brcatool.v", False, known) == {"brcatool.x", "brcatool.y"}


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (move the shared piece down): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_module_past_the_size_aim():
    big = {name: n for name, path in _modules().items()
           if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them along their seams): {big}"
