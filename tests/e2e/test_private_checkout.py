"""The embedded PostgreSQL starts from a checkout nobody else may enter, and says why when it cannot."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs in a child process whose relay and pgserver packages both live in the private checkout.
START_FROM_CHECKOUT = """
import asyncio, importlib.util, json, sys
from pathlib import Path
import asyncpg
import relay.embedded as embedded

embedded.CACHE_DIR = Path(sys.argv[1])
pg = embedded.EmbeddedPostgres(durable=False)
try:
    pg.start()
    async def ask() -> str:
        conn = await asyncpg.connect(pg.url)
        try:
            return await conn.fetchval("SELECT current_setting('data_directory')")
        finally:
            await conn.close()
    print(json.dumps({
        "relay": embedded.__file__,
        "pgserver": importlib.util.find_spec("pgserver").origin,
        "bin": str(pg.bin),
        "datadir": asyncio.run(ask()),
    }))
finally:
    pg.destroy()
"""


def modes(private: Path) -> dict[str, int]:
    """The mode of the checkout's directory, of every directory above it and inside it."""
    paths = [private, *private.parents, *(p for p in private.rglob("*") if p.is_dir() and not p.is_symlink())]
    return {str(p): p.stat().st_mode for p in paths}


@pytest.fixture
def private_checkout(tmp_path: Path) -> Iterator[Path]:
    """A 0700 directory holding relay and the pgserver wheel's files, as in a clone with its .venv."""
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    site = private / "checkout" / "site-packages"
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.origin is not None, "the embedded extra is not installed"
    package = Path(spec.origin).parent
    skip = shutil.ignore_patterns("include", "__pycache__")
    shutil.copytree(package, site / "pgserver", symlinks=True, ignore=skip)
    if (package.parent / "pgserver.libs").is_dir():
        shutil.copytree(package.parent / "pgserver.libs", site / "pgserver.libs", symlinks=True)
    shutil.copytree(ROOT / "relay", private / "checkout" / "relay", ignore=skip)
    yield private


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only when started by root")
def test_root_starts_the_server_from_a_0700_checkout_without_changing_any_mode(
    private_checkout: Path,
) -> None:
    checkout = private_checkout / "checkout"
    cache = Path(tempfile.mkdtemp(prefix="relay-test-cache-", dir="/tmp"))
    cache.chmod(0o755)
    before = modes(private_checkout)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PYTHONPATH"] = f"{checkout / 'site-packages'}{os.pathsep}{checkout}"
    try:
        result = subprocess.run(
            [sys.executable, "-c", START_FROM_CHECKOUT, str(cache / "relay")],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=100,
        )
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    assert Path(seen["relay"]).is_relative_to(checkout)
    assert Path(seen["pgserver"]).is_relative_to(checkout)
    assert Path(seen["bin"]).is_relative_to(cache)
    assert not Path(seen["datadir"]).is_relative_to(private_checkout)
    assert modes(private_checkout) == before
    assert private_checkout.stat().st_mode & 0o777 == 0o700


@pytest.fixture
def without_binaries(tmp_path: Path) -> dict[str, str]:
    """An environment where neither the pgserver wheel nor pg_ctl can be found."""
    shadow = tmp_path / "shadow"
    (shadow / "pgserver").mkdir(parents=True)
    (shadow / "pgserver" / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(shadow)
    env["PATH"] = str(Path(sys.executable).parent)
    return env


def test_relay_demo_without_postgresql_stops_with_one_line_saying_what_to_do(
    without_binaries: dict[str, str],
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "demo", "--port", "0"],
        env=without_binaries,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("relay demo: no PostgreSQL binaries: install the embedded extra")
    assert "DATABASE_URL" in lines[0]


def test_suite_without_postgresql_stops_with_one_line_saying_what_to_do(
    without_binaries: dict[str, str],
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/integration/test_trigger.py"],
        env=without_binaries,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "Traceback" not in output and " error" not in output, output
    reasons = [line for line in output.splitlines() if "the embedded PostgreSQL cannot start" in line]
    assert len(reasons) == 1, output
    assert "no PostgreSQL binaries: install the embedded extra" in reasons[0]
    assert "DATABASE_URL" in reasons[0]
