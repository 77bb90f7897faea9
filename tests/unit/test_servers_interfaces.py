"""servers/* get what they need through servers/interfaces.py, never the daemon: the
dependency points from daemon.py to the listeners, not back (lazy and TYPE_CHECKING
imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import vmaild.servers

SERVERS = Path(vmaild.servers.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports anywhere in its body, relative imports resolved."""
    package = ["vmaild", "servers"]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_no_listener_imports_the_daemon() -> None:
    modules = sorted(SERVERS.glob("*.py"))
    assert len(modules) >= 7
    for path in modules:
        imports = imported_modules(path)
        assert "vmaild.servers.base" in imports or path.name in {
            "__init__.py",
            "base.py",
            "interfaces.py",
            "sockets.py",  # binds unix sockets for base.start_listener; no protocol
            "inherited.py",  # sockets systemd passed, for the daemon; no protocol
            "limits.py",
        }, path.name  # the walk sees imports
        assert "vmaild.daemon" not in imports, f"{path.name} imports vmaild.daemon"
