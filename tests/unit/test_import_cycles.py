"""The architecture as the imports show it: no cycle, no component importing the composition
root, and no SQL outside the store. Read from the source with ``ast``, so imports under
``TYPE_CHECKING`` and inside functions count as much as those at the top of a module."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "relay"
# The entry points run the composition root; nothing else may import it.
ROOT_CALLERS = {"relay.cli", "relay.demo"}
SQL = re.compile(
    r"\b(SELECT\s+[\w*(]|SHOW\s+\w|INSERT\s+INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|"
    r"(CREATE|ALTER|DROP)\s+(TABLE|SCHEMA|INDEX|TRIGGER|FUNCTION))"
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(name: str, tree: ast.AST) -> set[str]:
    """Every relay module ``name``'s source imports, wherever the import statement is."""
    known = modules()
    package = name if modules()[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
            targets = [full if full in known else base for full in names]
        for target in targets:
            parts = target.split(".")
            # Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c.
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known.keys()
    found.discard(name)
    return found


@cache
def graph() -> dict[str, set[str]]:
    return {name: imported(name, ast.parse(path.read_text("utf-8"))) for name, path in modules().items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a closed path), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_type_checking_import() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from relay.app import Relay\n"
    edges = {"relay.http": imported("relay.http", ast.parse(source)), "relay.app": {"relay.http"}}
    assert find_cycle(edges) == ["relay.app", "relay.http", "relay.app"]


def test_function_level_and_relative_imports_count() -> None:
    source = "def f():\n    from relay.live import hub\n    from . import sender\n"
    assert {"relay.live", "relay.live.hub", "relay.push.sender"} <= imported(
        "relay.push.routes", ast.parse(source)
    )


def test_relay_has_no_import_cycle() -> None:
    assert find_cycle(graph()) is None


def test_only_the_entry_points_import_the_composition_root() -> None:
    importers = {name for name, targets in graph().items() if "relay.app" in targets}
    assert importers <= ROOT_CALLERS


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_the_sql_pattern_catches_the_statements_relay_runs() -> None:
    for statement in (
        "SELECT id FROM relay.events",
        "INSERT INTO relay.jobs (name) VALUES ($1)",
        'UPDATE "Booking" SET status = $2',
        "DELETE FROM relay.deliveries WHERE id = $1",
        "CREATE TABLE relay.x (id int)",
        "SHOW server_version",
        "SELECT pg_backend_pid()",
        "SELECT 1",
    ):
        assert SQL.search(statement), statement
    assert not SQL.search("use POST to subscribe or DELETE to unsubscribe")


def test_no_module_but_the_store_holds_sql() -> None:
    holders = [
        f"{name}:{line}: {text.strip()[:60]!r}"
        for name, path in modules().items()
        if name != "relay.store" and not name.startswith("relay.store.")
        for line, text in _strings(ast.parse(path.read_text("utf-8")))
        if SQL.search(text)
    ]
    assert holders == []
