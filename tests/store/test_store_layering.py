"""The store holds storage, not requests: its backends never import auth, tracing or a service
(who caused an event is stamped by the server layer through visage.store.base.stamp_events_with)."""
from __future__ import annotations

import ast
from pathlib import Path

STORE = Path(__file__).resolve().parents[2] / "lib/visage/store"
FORBIDDEN = ("visage.auth", "visage.tracing", "visage.server", "visage.errors", "visage_")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_store_modules_import_no_auth_tracing_or_service():
    found = {f"{path.name}: {name}" for path in STORE.glob("*.py") for name in _imports(path)
             if name.startswith(FORBIDDEN)}
    assert found == set()

