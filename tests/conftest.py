"""Test harness on a real PostgreSQL.

``DATABASE_URL`` when set, otherwise a throwaway server started here. Every test
gets a fresh database cloned from a migrated template. Tests that stop and restart
PostgreSQL use ``own_server``: a server this suite started itself, always.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from relay.config import Settings
from relay.embedded import EmbeddedPostgres, EmbeddedPostgresError
from relay.store import migrate

BOOKING_TABLE = """
CREATE TABLE "Booking" (
    id           text PRIMARY KEY,
    "merchantId" text NOT NULL,
    status       text NOT NULL,
    notes        text
)
"""


def _with_database(url: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


async def _prepare_template(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(_with_database(admin_url, name))
    try:
        await conn.execute(BOOKING_TABLE)
        await migrate(conn)
    finally:
        await conn.close()


class Cluster:
    """A PostgreSQL server with a migrated template; hands out fresh databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.template = f"relay_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        asyncio.run(_prepare_template(admin_url, self.template))

    def url(self, database: str) -> str:
        return _with_database(self.admin_url, database)

    async def create_database(self) -> str:
        name = f"relay_t_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await admin.close()
        return name

    async def drop_database(self, name: str) -> None:
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    def drop_template(self) -> None:
        async def go() -> None:
            admin = await asyncpg.connect(self.admin_url)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
            finally:
                await admin.close()

        asyncio.run(go())


@contextlib.contextmanager
def embedded_server() -> Iterator[EmbeddedPostgres]:
    """A throwaway server; where none can start, the run stops with the one-line reason."""
    server: EmbeddedPostgres | None = None
    try:
        server = EmbeddedPostgres(durable=False)
        server.start()
    except EmbeddedPostgresError as exc:
        if server is not None:
            server.destroy()
        pytest.exit(f"the embedded PostgreSQL cannot start: {exc}", returncode=3)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    url = os.environ.get("DATABASE_URL")
    if url:
        made = Cluster(url)
        try:
            yield made
        finally:
            made.drop_template()
        return
    with embedded_server() as server:
        yield Cluster(server.url)


@pytest.fixture
async def db_url(cluster: Cluster) -> AsyncIterator[str]:
    name = await cluster.create_database()
    try:
        yield cluster.url(name)
    finally:
        await cluster.drop_database(name)


async def _wal_level(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW wal_level"))
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def wal_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """A server with wal_level = logical (capture mode wal): the suite's own (the embedded
    server starts with it), else, when DATABASE_URL's has another level, one started here."""
    if asyncio.run(_wal_level(cluster.admin_url)) == "logical":
        yield cluster
        return
    with embedded_server() as server:
        yield Cluster(server.url)


async def _drop_with_slots(cluster: Cluster, name: str) -> None:
    """Drop a database that may hold a replication slot (a slot in use would block it)."""
    admin = await asyncpg.connect(cluster.admin_url)
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        for _ in range(100):
            if not await admin.fetchval(
                "SELECT count(*) FROM pg_replication_slots WHERE database = $1 AND active", name
            ):
                break
            await asyncio.sleep(0.05)
        await admin.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1", name
        )
    finally:
        await admin.close()
    await cluster.drop_database(name)


@pytest.fixture
async def wal_db_url(wal_cluster: Cluster) -> AsyncIterator[str]:
    """A fresh database on a server where capture mode wal works; its slot goes with it."""
    name = await wal_cluster.create_database()
    try:
        yield wal_cluster.url(name)
    finally:
        await _drop_with_slots(wal_cluster, name)


@pytest.fixture
def own_server() -> Iterator[EmbeddedPostgres]:
    """A server this test may stop, kill and restart; never the one in DATABASE_URL."""
    with embedded_server() as server:
        asyncio.run(_prepare_template(server.url, "relay"))
        yield server


def make_settings(db_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": db_url,
        "reconcile_interval": 30.0,
        "probe_interval": 0.5,
        "probe_timeout": 1.0,
        "reconnect_max_delay": 1.0,
        "http_host": "127.0.0.1",
        "http_port": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)
