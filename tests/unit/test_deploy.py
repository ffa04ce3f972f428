"""fly.toml and deploy/Dockerfile agree with the code (Docker cannot run here: they are parsed)."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route

from relay.cli import build_parser
from relay.config import Settings
from tests.support import http_routes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fly() -> dict[str, Any]:
    return tomllib.loads((ROOT / "fly.toml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every instruction, continuation lines joined."""
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


def route_paths() -> set[str]:
    settings = Settings(database_url="postgresql://relay@localhost/relay")
    return {route.path for route in http_routes(settings) if isinstance(route, Route)}


def relay_command(command: str) -> str:
    """The `relay` subcommand that ``command`` runs, checked against the CLI."""
    words = shlex.split(command)
    assert words[0] == "relay", command
    build_parser().parse_args(words[1:])  # exits on an unknown command
    return " ".join(words[1:])


def default_port() -> int:
    port = Settings.model_fields["http_port"].default
    assert isinstance(port, int)
    return port


def test_release_command_is_relay_migrate(fly: dict[str, Any]) -> None:
    assert relay_command(fly["deploy"]["release_command"]) == "migrate"


def test_fly_builds_the_repository_dockerfile(fly: dict[str, Any]) -> None:
    assert (ROOT / fly["build"]["dockerfile"]).resolve() == ROOT / "deploy" / "Dockerfile"


def test_http_service_port_is_the_default_relay_http_port(fly: dict[str, Any]) -> None:
    assert default_port() == 8080
    assert fly["http_service"]["internal_port"] == default_port()
    assert int(fly["env"].get("RELAY_HTTP_PORT", default_port())) == default_port()


def test_http_service_keeps_a_machine_running_for_the_listener_and_websockets(fly: dict[str, Any]) -> None:
    service = fly["http_service"]
    assert service["auto_stop_machines"] in ("off", False)
    assert service["min_machines_running"] >= 1
    assert service["concurrency"]["type"] == "connections"


def test_health_checks_use_routes_the_app_serves(fly: dict[str, Any]) -> None:
    paths = route_paths()
    routing = fly["http_service"]["checks"]
    assert [check["path"] for check in routing] == ["/readyz"]
    machine = fly["checks"]
    assert {check["path"] for check in machine.values()} == {"/healthz"}
    assert all(check["port"] == default_port() for check in machine.values())
    assert {"/readyz", "/healthz"} <= paths
    assert fly["metrics"]["path"] in paths
    assert fly["metrics"]["port"] == default_port()


def test_graceful_stop_signal_matches(fly: dict[str, Any], dockerfile: list[tuple[str, str]]) -> None:
    assert fly["kill_signal"] == "SIGTERM"
    assert ("STOPSIGNAL", "SIGTERM") in dockerfile


def test_dockerfile_uses_slim_python_311(dockerfile: list[tuple[str, str]]) -> None:
    bases = [args.split()[0] for word, args in dockerfile if word == "FROM"]
    assert bases and all(base.startswith("python:3.11") and base.endswith("-slim") for base in bases)


def test_dockerfile_runs_relay_run_as_a_non_root_user(dockerfile: list[tuple[str, str]]) -> None:
    last = final_stage(dockerfile)
    users = [args.split(":")[0] for word, args in last if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    cmd = [args for word, args in last if word in ("CMD", "ENTRYPOINT")]
    assert cmd == ['["relay", "run"]']
    assert relay_command("relay run") == "run"


def test_dockerfile_installs_the_project_with_its_sql(dockerfile: list[tuple[str, str]]) -> None:
    copies = {args for word, args in dockerfile if word == "COPY"}
    assert "sql ./sql" in copies and "relay ./relay" in copies
    assert any(word == "RUN" and "pip install ." in args for word, args in dockerfile)
    assert ("EXPOSE", str(default_port())) in final_stage(dockerfile)


def test_the_image_carries_no_postgresql_binaries(dockerfile: list[tuple[str, str]]) -> None:
    """pgserver is the `embedded` extra, which the image does not install and make does."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [dep for dep in project["dependencies"] if dep.startswith("pgserver")]
    assert [dep for dep in project["optional-dependencies"]["embedded"] if dep.startswith("pgserver")]
    runs = [args for word, args in dockerfile if word == "RUN" and "pip install" in args]
    installs = [run.split("pip install", 1)[1].split("&&")[0].split() for run in runs]
    assert installs and all(words == ["."] for words in installs)
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -e '.[dev,embedded]'" in makefile
