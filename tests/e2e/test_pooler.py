"""Relay behind a real PgBouncer 1.18 in transaction mode (Debian's ``pgbouncer``).

``DATABASE_URL`` goes through PgBouncer and ``RELAY_LISTEN_DATABASE_URL`` straight to
PostgreSQL, as on a platform that hands out a pooled and a direct URL: `relay migrate`,
`relay webhooks add` and `relay check` work through the pooler, and `relay run` delivers a
booking to /ws, a webhook and /events with its scheduler's jobs running cleanly. LISTEN
on the pooler is refused by `relay check` with one clear line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from relay import app
from relay.auth import mint_token
from relay.db import create_pool
from relay.pooler import shares_sessions
from tests.conftest import make_settings
from tests.pgbouncer import PgBouncer, find_pgbouncer, running
from tests.webhook_receiver import RelayProcess
from tests.webhook_receiver import running as receiving

SECRET = "pooler-test-secret-0123456789abcdef0123"

if find_pgbouncer() is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the PgBouncer tests: install Debian's pgbouncer (see .ci/run)")
    pytest.skip(
        "PgBouncer is not installed (apt-get install pgbouncer); pooler tests skipped",
        allow_module_level=True,
    )


@pytest.fixture
def pgbouncer(db_url: str) -> Iterator[PgBouncer]:
    with running(db_url) as bouncer:
        yield bouncer


def relay_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_pool_detects_the_pooler_and_keeps_no_prepared_statements(pgbouncer: PgBouncer) -> None:
    pool = await create_pool(pgbouncer.url)
    try:
        async with pool.acquire() as conn:
            for n in range(3):
                assert await conn.fetchval("SELECT $1::int + 1", n) == n + 1
            assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
    finally:
        await pool.close()


async def test_run_logs_an_error_when_listen_would_go_through_the_pooler(
    pgbouncer: PgBouncer, caplog: pytest.LogCaptureFixture
) -> None:
    async with app.start(make_settings(pgbouncer.url), serve_http=False) as relay:
        await asyncio.wait_for(relay.feed.started.wait(), 10)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "LISTEN uses DATABASE_URL too, and a transaction pooler cannot LISTEN: set "
        "RELAY_LISTEN_DATABASE_URL to the database's direct (unpooled) URL; until then "
        "events may arrive only with the reconciliation poll"
    ]


def deploy(bouncer: PgBouncer) -> None:
    """What a deploy runs first (fly.toml's release command), through the pooler. With a
    prepared-statement cache it would leave named statements in PgBouncer's sessions."""
    migrated = relay_cli("migrate", DATABASE_URL=bouncer.url)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert migrated.stdout.strip() == "already up to date"


def test_check_passes_with_a_pooled_database_url_and_a_direct_listen_url(pgbouncer: PgBouncer) -> None:
    deploy(pgbouncer)
    result = relay_cli(
        "check",
        DATABASE_URL=pgbouncer.url,
        RELAY_LISTEN_DATABASE_URL=pgbouncer.direct,
        RELAY_JWT_SECRET=SECRET,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("fail")], output
    roles = [
        line for line in lines if line.startswith(("ok   DATABASE_URL", "ok   RELAY_LISTEN_DATABASE_URL"))
    ]
    assert roles == [
        "ok   DATABASE_URL goes through a transaction pooler: used for Relay's queries and transactions, "
        "without prepared statements (RELAY_DATABASE_POOLER=auto)",
        "ok   RELAY_LISTEN_DATABASE_URL is a direct session connection: used for LISTEN and any work "
        "that needs a session",
    ], output
    assert any(line.startswith("ok   LISTEN works on the listen connection") for line in lines), output


@pytest.mark.parametrize("listen", ["unset", "pooled"])
def test_check_refuses_listen_through_the_pooler_with_one_clear_line(
    pgbouncer: PgBouncer, listen: str
) -> None:
    env = {"DATABASE_URL": pgbouncer.url}
    if listen == "pooled":  # set, and not the same string as DATABASE_URL
        env["RELAY_LISTEN_DATABASE_URL"] = pgbouncer.url + "?application_name=relay-listen"
    result = relay_cli("check", **env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    failed = [line for line in result.stdout.splitlines() if line.startswith("fail")]
    assert len(failed) == 1, output
    assert "transaction pooler, which cannot LISTEN" in failed[0]
    assert "set RELAY_LISTEN_DATABASE_URL to the database's direct (unpooled) URL" in failed[0]


def test_check_fails_with_a_line_when_the_cache_is_forced_on_through_the_pooler(pgbouncer: PgBouncer) -> None:
    result = relay_cli(
        "check",
        DATABASE_URL=pgbouncer.url,
        RELAY_LISTEN_DATABASE_URL=pgbouncer.direct,
        RELAY_DATABASE_POOLER="off",
    )
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("fail")]
    assert failed == [
        "fail DATABASE_URL goes through a transaction pooler, but RELAY_DATABASE_POOLER=off keeps "
        "prepared statements, which fail there: set RELAY_DATABASE_POOLER=auto"
    ], result.stdout + result.stderr


@pytest.mark.parametrize(
    ("pool_mode", "settings", "pooled"),
    [
        ("transaction", {}, True),
        ("transaction", {"server_round_robin": 1}, True),
        ("session", {}, False),
    ],
    ids=["transaction", "transaction-round-robin", "session"],
)
async def test_detection_tells_transaction_pooling_from_a_session(
    db_url: str, pool_mode: str, settings: dict[str, object], pooled: bool
) -> None:
    with running(db_url, pool_mode=pool_mode, **settings) as bouncer:
        # Another client keeps sessions busy meanwhile, as on a shared pooler.
        other = await asyncpg.connect(bouncer.url, statement_cache_size=0)
        try:
            for _ in range(3):
                await other.fetchval("SELECT 1")
                assert await shares_sessions(bouncer.url) is pooled
        finally:
            await other.close()
    assert await shares_sessions(db_url) is False


async def test_run_delivers_through_the_pooler_with_the_scheduler_clean(
    pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    deploy(pgbouncer)
    settings = make_settings(pgbouncer.url, jwt_secret=SECRET)
    token = mint_token(settings, merchant_id="m1", user_id="u1")
    async with receiving() as receiver:
        added = relay_cli(
            "webhooks",
            "add",
            "--merchant",
            "m1",
            "--url",
            receiver.url(),
            DATABASE_URL=pgbouncer.url,
            RELAY_EGRESS_ALLOW="127.0.0.0/8",
        )
        assert added.returncode == 0, added.stdout + added.stderr
        log = tmp_path / "relay.log"
        relay = RelayProcess(
            pgbouncer.url,
            log,
            RELAY_LISTEN_DATABASE_URL=pgbouncer.direct,
            RELAY_JWT_SECRET=SECRET,
            RELAY_RECONCILE_INTERVAL="0.5",
        )
        try:
            await relay.ready()
            base = f"http://127.0.0.1:{relay.port}"
            async with connect(f"ws://127.0.0.1:{relay.port}/ws?token={token}") as ws:
                assert json.loads(await ws.recv())["type"] == "connected"
                # The application writes through the pooler too (without a statement cache).
                writer = await asyncpg.connect(pgbouncer.url, statement_cache_size=0)
                try:
                    await writer.execute(
                        """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'm1', 'NEW')""",
                        "b-pooled",
                    )
                finally:
                    await writer.close()
                while (message := json.loads(await ws.recv()))["type"] != "event":
                    pass
                assert message["channel"] == "booking_created"
                assert message["data"]["id"] == "b-pooled"
            hook = await receiver.get(within=15)
            assert hook.json["data"]["id"] == "b-pooled"
            async with httpx.AsyncClient(base_url=base) as client:
                polled = await client.get("/events", headers={"Authorization": f"Bearer {token}"})
                assert polled.status_code == 200, polled.text
                assert [e["data"]["id"] for e in polled.json()["events"]] == ["b-pooled"]
                metrics = (await client.get("/metrics")).text
            # The shared jobs ran at start-up, in their pooled transactions, without an error.
            direct = await asyncpg.connect(pgbouncer.direct)
            try:
                jobs = {r["name"]: r for r in await direct.fetch("SELECT * FROM relay.jobs")}
            finally:
                await direct.close()
            assert set(jobs) >= {"retention", "disable_failing_endpoints"}, jobs
            for name, row in jobs.items():
                assert row["runs"] >= 1 and row["failures"] == 0 and row["last_error"] is None, (
                    name,
                    dict(row),
                )
            assert "relay_deliveries_pending{" in metrics  # the local queue_depths job ran
            assert not [line for line in metrics.splitlines() if line.startswith("relay_job_failures_total{")]
        finally:
            code = await relay.stop()
    text = log.read_text()
    assert code == 0, text
    assert "DATABASE_URL goes through a transaction pooler" in text
    for problem in ("Traceback", "ERROR", "failed", "PreparedStatement", "ExceptionGroup"):
        assert problem not in text, text
