"""`relay check`: configuration, database reachability, and LISTEN on the listen connection."""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import urlsplit

import asyncpg

from relay.config import Settings
from relay.db import TRANSIENT_ERRORS
from relay.errors import ConfigError
from relay.push.vapid import VapidSigner
from relay.store import Store

POOLER_PORTS = {6432}
POOLER_WORDS = ("pgbouncer", "pooler", "pgcat", "supavisor", "odyssey")


def pooler_hint(dsn: str) -> str | None:
    """Why ``dsn`` looks like a transaction pooler, or None."""
    parts = urlsplit(dsn)
    host = (parts.hostname or "").lower()
    if parts.port in POOLER_PORTS:
        return f"port {parts.port} is PgBouncer's default port"
    for word in POOLER_WORDS:
        if word in host:
            return f"host name {host!r} mentions {word!r}"
    return None


async def check(settings: Settings) -> list[tuple[str, str]]:
    """Return (status, message) lines; status is ``ok``, ``warn`` or ``fail``."""
    lines: list[tuple[str, str]] = [("ok", "configuration is valid")]
    lines += [("ok" if on else "warn", text) for on, text in optional_parts(settings)]
    lines += push_key_problems(settings)
    dsn = settings.require_database_url()
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
        return [*lines, ("fail", f"database unreachable at DATABASE_URL: {type(exc).__name__}: {exc}")]
    try:
        store = Store(conn)
        lines.append(("ok", f"database reachable (PostgreSQL {await store.server_version()})"))
        count = await store.migrations_applied()
        if count is not None:
            attached = await store.trigger_attached()
            lines.append(("ok", f"relay schema present ({count} migrations applied)"))
            lines.append(
                ("ok", 'trigger attached to "Booking"')
                if attached
                else ("fail", 'trigger not attached to "Booking": run `relay migrate`')
            )
            lines += await sources_lines(store)
            lines.append(await capture_line(store))
        else:
            lines.append(("fail", "relay schema missing: run `relay migrate`"))
        lines.append(await _listen_round_trip(settings.listen_url, store))
    finally:
        await conn.close()
    hint = pooler_hint(settings.listen_url)
    if hint:
        lines.append(
            (
                "warn",
                f"the listen connection may go through a transaction pooler ({hint}); LISTEN needs a "
                "session connection: set RELAY_LISTEN_DATABASE_URL to the direct database URL",
            )
        )
    return lines


async def sources_lines(store: Store) -> list[tuple[str, str]]:
    """The attached sources, and any whose trigger is gone (its table dropped or recreated)."""
    lines = [
        (
            "fail",
            f"source {s.entity}: the trigger on {s.table} is missing (table dropped or recreated?): "
            f"run `relay attach` for it again, or `relay detach {s.table}`",
        )
        for s in await store.sources_without_trigger()
    ]
    attached = [s.entity for s in await store.sources() if s.entity != "booking"]
    if attached:
        lines.append(("ok", f"sources attached besides booking: {', '.join(attached)}"))
    return lines


async def capture_line(store: Store) -> tuple[str, str]:
    """The capture mode, and in poll mode whether a relay process polls."""
    mode = await store.capture_mode()
    if mode != "poll":
        return ("ok", f"capture mode: {mode}")
    pid = await store.poller_backend()
    if pid is None:
        return (
            "warn",
            "capture mode: poll, but no relay process polls for events now (none running?): "
            "events wait for a reconciliation pass",
        )
    return ("ok", f"capture mode: poll (a relay process polls, backend pid {pid})")


def optional_parts(settings: Settings) -> list[tuple[bool, str]]:
    return [
        (
            settings.jwt_enabled,
            "token routes "
            + ("on" if settings.jwt_enabled else "off: set RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY"),
        ),
        (
            settings.push_enabled,
            "Web Push "
            + (
                "on" if settings.push_enabled else "off: set RELAY_VAPID_PRIVATE_KEY (see `relay vapid-keys`)"
            ),
        ),
    ]


def push_key_problems(settings: Settings) -> list[tuple[str, str]]:
    """A malformed VAPID key or subject would stop `relay run`: say so here too."""
    if not settings.push_enabled:
        return []
    try:
        VapidSigner.from_settings(settings)
    except ConfigError as exc:
        return [("fail", str(exc))]
    return []


async def _listen_round_trip(listen_dsn: str, sender: Store) -> tuple[str, str]:
    channel = f"relay_check_{os.getpid()}"
    try:
        listener = await asyncpg.connect(listen_dsn, timeout=5)
    except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
        return ("fail", f"listen connection unreachable: {type(exc).__name__}: {exc}")
    received: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(channel, lambda *args: received.put_nowait(args[3]))
        started = time.perf_counter()
        await sender.notify(channel, "ping")
        try:
            await asyncio.wait_for(received.get(), timeout=3)
        except TimeoutError:
            return (
                "fail",
                "LISTEN does not work on the listen connection (no notification within 3 s); "
                "a transaction pooler cannot LISTEN: set RELAY_LISTEN_DATABASE_URL to a direct URL",
            )
        elapsed = (time.perf_counter() - started) * 1000
        return ("ok", f"LISTEN works on the listen connection (round trip {elapsed:.1f} ms)")
    except asyncpg.PostgresError as exc:
        return ("fail", f"LISTEN failed on the listen connection: {exc}")
    finally:
        await listener.close()
