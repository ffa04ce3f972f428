from __future__ import annotations

import os
import subprocess
import sys

import pytest

from relay.check import check, pooler_hint
from relay.config import Settings
from relay.embedded import free_port


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
    assert not any("pooler" in line for line in lines)


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


async def test_check_warns_when_the_listen_url_looks_like_a_transaction_pooler(
    settings: Settings,
) -> None:
    pooled = settings.model_copy(
        update={"listen_database_url": f"postgresql://postgres@127.0.0.1:{6432}/postgres"}
    )
    lines = await check(pooled)
    warnings = [text for status, text in lines if status == "warn" and "pooler" in text]
    assert len(warnings) == 1
    assert "port 6432" in warnings[0]
    assert "RELAY_LISTEN_DATABASE_URL" in warnings[0]


async def test_check_does_not_warn_about_a_direct_listen_url(settings: Settings) -> None:
    lines = await check(settings)
    assert [text for status, text in lines if status == "warn" and "pooler" in text] == []


@pytest.mark.parametrize(
    ("dsn", "looks_pooled"),
    [
        ("postgresql://u:p@db.example.com:6432/app", True),
        ("postgresql://u:p@my-pgbouncer.internal:5432/app", True),
        ("postgresql://u:p@aws-0-eu-central-1.pooler.supabase.com:5432/postgres", True),
        ("postgresql://u:p@db.example.com:5432/app", False),
        ("postgresql://u:p@127.0.0.1/app", False),
    ],
)
def test_pooler_hint_recognises_pooler_urls(dsn: str, looks_pooled: bool) -> None:
    assert (pooler_hint(dsn) is not None) is looks_pooled
