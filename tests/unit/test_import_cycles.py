"""The vmaild package has no import cycle, lazy imports included, and parsing the
configuration stays a leaf: it never loads the database layer.

The graph is read from the source with ``ast``, not from ``sys.modules``: every import
statement counts, at module level, inside functions and methods, and under
``if TYPE_CHECKING:``. A cycle hidden behind a function-level import still couples the
two modules both ways; it only moves the failure from import time to call time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vmaild

PACKAGE = "vmaild"
ROOT = Path(vmaild.__file__).resolve().parent


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (``vmaild.ctl`` for ``ctl/__init__.py``)."""
    modules: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names, relative levels resolved."""
    if node.level == 0:
        return node.module or ""
    # A package's own __init__ is level 1's anchor; a plain module's anchor is its package.
    anchor = module.split(".") if is_package else module.split(".")[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        # ``import a.b.c`` and ``from a.b.c import x`` load a.b.c; name the deepest module
        # of the package the dotted name reaches.
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith(PACKAGE) and name != module:
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # ``from . import config`` imports the submodule; ``from .db import X``
                # imports the module db (X is a name in it).
                add(sub if sub in modules else base)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each module of
    one imports, directly or not, every other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component, to name in a failure."""
    return [_one_cycle(graph, set(c)) for c in components(graph)]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, for the message."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError("a strongly connected component without a cycle")


def test_the_walk_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "vmaild.config" in graph and "vmaild.ctl.main" in graph
    # Module level, relative: ctl/main.py has ``from .context import ...``.
    assert "vmaild.ctl.context" in graph["vmaild.ctl.main"]
    # Function level: cli.py imports the daemon only when it serves.
    assert "vmaild.daemon" in graph["vmaild.cli"]
    # ``from . import config as config_mod`` names the submodule, not the package.
    assert "vmaild.config" in graph["vmaild.cli"]


def test_cycle_finder_reports_lazy_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = [
        f"{' -> '.join(_one_cycle(graph, set(c)))}  (all of {', '.join(c)})"
        for c in components(graph)
    ]
    assert not found, "import cycles:\n" + "\n".join(found)


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def _third_party(path: Path) -> set[str]:
    """Top-level names of the absolute imports outside the package, anywhere in a file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names - {PACKAGE}


def test_configuration_is_a_leaf_even_through_lazy_imports() -> None:
    graph = import_graph()
    files = module_files()
    for leaf in ("vmaild.config", "vmaild.sections"):
        reached = _closure(graph, leaf)
        assert "vmaild.db" not in reached, f"{leaf} reaches vmaild.db"
        assert {m for m in reached if "pymysql" in _third_party(files[m])} == set(), leaf


def test_parsing_the_configuration_does_not_load_the_database_layer() -> None:
    code = (
        "import sys, vmaild.config as c\n"
        "c.parse('[database]\\nhosts = h\\nuser = u\\ndbname = d\\n'\n"
        "        '[policy]\\nlisten = 127.0.0.1:1\\n[auth]\\nlisten = unix:/run/a\\n'\n"
        "        '[map m]\\nquery = SELECT 1 WHERE k = \\'%s\\'\\n')\n"
        "print(' '.join(sorted(m for m in sys.modules\n"
        "                      if m == 'pymysql' or m.startswith(('pymysql.', 'vmaild.')))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "pymysql" not in out
    assert "vmaild.db" not in out
    assert not [m for m in out if m.startswith("pymysql.")]
