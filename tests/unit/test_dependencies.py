"""Every library relay/ imports is declared in pyproject.toml, not merely installed as a
dependency of a dependency (where any release of the other package may drop it)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["embedded"]]
    return {_normalise(re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0]) for req in requirements}


def imported_libraries() -> dict[str, str]:
    """Top-level names of the non-standard modules relay/ imports -> a file importing it."""
    found: dict[str, str] = {}
    for path in (ROOT / "relay").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top != "relay" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_library_is_a_declared_dependency() -> None:
    distributions = packages_distributions()
    wanted = declared()
    undeclared = {
        module: where
        for module, where in imported_libraries().items()
        if not {_normalise(d) for d in distributions.get(module, [module])} & wanted
    }
    assert undeclared == {}


def test_the_check_sees_the_libraries_relay_adapts() -> None:
    assert {"uvicorn", "websockets", "aiohttp", "cryptography"} <= set(imported_libraries())
