from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg

from relay.embedded import free_port
from tests.support import with_user


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "relay", "check"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_passes_against_a_migrated_database(db_url: str) -> None:
    result = run_check({"DATABASE_URL": db_url, "RELAY_JWT_SECRET": "s" * 32})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "ok   configuration is valid" in lines
    assert any(line.startswith("ok   database reachable (PostgreSQL") for line in lines)
    assert 'ok   trigger attached to "Booking"' in lines
    assert any(line.startswith("ok   LISTEN works on the listen connection") for line in lines)
    assert not any(line.startswith("fail") for line in lines)
    assert "ok   LISTEN uses DATABASE_URL (RELAY_LISTEN_DATABASE_URL is unset or the same)" in lines


def test_check_fails_with_one_clear_line_when_the_database_is_unreachable() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    result = run_check({"DATABASE_URL": url})
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("fail")]
    assert len(failed) == 1
    assert failed[0].startswith("fail database unreachable at DATABASE_URL:")


def test_check_names_the_missing_database_url() -> None:
    result = run_check({})
    assert result.returncode == 1
    assert "DATABASE_URL is missing" in result.stderr


def test_check_says_what_each_direct_url_is_used_for(db_url: str) -> None:
    result = run_check({"DATABASE_URL": db_url, "RELAY_LISTEN_DATABASE_URL": db_url + "?application_name=x"})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert (
        "ok   DATABASE_URL is a direct session connection: used for Relay's queries and transactions, "
        "with prepared statements"
    ) in lines
    assert (
        "ok   RELAY_LISTEN_DATABASE_URL is a direct session connection: used for LISTEN and any work "
        "that needs a session"
    ) in lines


def test_check_reports_an_unreachable_listen_url_in_one_line(db_url: str) -> None:
    result = run_check(
        {
            "DATABASE_URL": db_url,
            "RELAY_LISTEN_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
        }
    )
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("fail")]
    assert len(failed) == 1, result.stdout
    assert failed[0].startswith("fail listen connection unreachable at RELAY_LISTEN_DATABASE_URL: ")
    assert "Traceback" not in result.stderr


def test_check_warns_when_the_pooler_setting_turns_the_cache_off_on_a_direct_url(db_url: str) -> None:
    result = run_check({"DATABASE_URL": db_url, "RELAY_DATABASE_POOLER": "on"})
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stdout.splitlines() if "RELAY_DATABASE_POOLER" in line]
    assert warnings == [
        "warn DATABASE_URL is a direct session connection, but RELAY_DATABASE_POOLER=on turns its "
        "prepared statements off (each query costs more): unset RELAY_DATABASE_POOLER"
    ]


async def test_a_step_that_raises_becomes_a_fail_line_not_a_traceback(db_url: str) -> None:
    """A role that may connect but not use Relay's schema: the schema step fails with one line."""
    role = f"relay_check_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(db_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        result = await asyncio.to_thread(run_check, {"DATABASE_URL": with_user(db_url, role)})
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("fail")]
    assert failed == [
        "fail checking the relay schema failed: "
        "InsufficientPrivilegeError: permission denied for schema relay"
    ], result.stdout
    assert any(
        line.startswith("ok   LISTEN works on the listen connection") for line in result.stdout.splitlines()
    )
