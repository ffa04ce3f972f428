"""`relay migrate`: idempotent, safe when run concurrently, clear when "Booking" is missing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from relay.store import Store, migrate, migration_files
from tests.conftest import BOOKING_TABLE, Cluster

TRIGGER_COUNT = """
    SELECT count(*) FROM pg_trigger WHERE tgrelid = '"Booking"'::regclass AND NOT tgisinternal
"""


@pytest.fixture
async def blank_db(cluster: Cluster) -> AsyncIterator[str]:
    """A database with nothing of Relay's in it."""
    name = f"relay_blank_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(cluster.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield cluster.url(name)
    finally:
        await cluster.drop_database(name)


def relay_cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_migrate_twice_applies_once_then_is_a_no_op(blank_db: str) -> None:
    conn = await asyncpg.connect(blank_db)
    try:
        await conn.execute(BOOKING_TABLE)
        first = relay_cli("migrate", database_url=blank_db)
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("applied ")
        second = relay_cli("migrate", database_url=blank_db)
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == "already up to date"
        names = [
            r["name"] for r in await conn.fetch("SELECT name FROM relay.schema_migrations ORDER BY name")
        ]
        assert names == [name for name, _ in migration_files()]
        assert await Store(conn).trigger_attached()
        assert await conn.fetchval(TRIGGER_COUNT) == 1
    finally:
        await conn.close()


async def test_concurrent_migrations_both_succeed_and_apply_each_file_once(blank_db: str) -> None:
    setup = await asyncpg.connect(blank_db)
    await setup.execute(BOOKING_TABLE)
    conns = [await asyncpg.connect(blank_db) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(name for name, _ in migration_files())
        assert await setup.fetchval("SELECT count(*) FROM relay.schema_migrations") == len(migration_files())
    finally:
        for conn in conns:
            await conn.close()
        await setup.close()


async def test_missing_booking_table_is_one_clear_line_and_changes_nothing(blank_db: str) -> None:
    result = relay_cli("migrate", database_url=blank_db)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert 'table "Booking" does not exist' in lines[0]
    conn = await asyncpg.connect(blank_db)
    try:
        assert await conn.fetchval("SELECT to_regnamespace('relay')") is None
    finally:
        await conn.close()


async def test_migrate_replaces_the_seed_trigger(blank_db: str) -> None:
    """A database that ran the seed guide's migration ends up with one trigger, Relay's."""
    conn = await asyncpg.connect(blank_db)
    try:
        await conn.execute(BOOKING_TABLE)
        await conn.execute(
            """
            CREATE FUNCTION notify_booking_changes() RETURNS trigger AS $$
            BEGIN PERFORM pg_notify('booking_created', '{}'); RETURN NEW; END; $$ LANGUAGE plpgsql;
            CREATE TRIGGER booking_changes_trigger AFTER INSERT OR UPDATE OR DELETE ON "Booking"
            FOR EACH ROW EXECUTE FUNCTION notify_booking_changes();
            """
        )
        await migrate(conn)
        assert await Store(conn).trigger_attached()
        assert await conn.fetchval(TRIGGER_COUNT) == 1
    finally:
        await conn.close()
