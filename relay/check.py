"""`relay check`: configuration, the two database URLs (each a transaction pooler or a direct
session, and what Relay uses it for), the relay schema, and a LISTEN round trip.

One line per finding: ``ok``, ``warn`` or ``fail``. A step that raises becomes a
``fail`` line naming the step, never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable

import asyncpg

from relay.config import Settings
from relay.db import connect_once
from relay.errors import ConfigError
from relay.pooler import shares_sessions
from relay.push.vapid import VapidSigner
from relay.store import Store

Line = tuple[str, str]
TIMEOUT = 5.0
DIRECT_HINT = "the database's direct (unpooled) URL"


def describe(exc: BaseException) -> str:
    """An exception as one line: its type and its message with the line breaks folded."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def check(settings: Settings) -> list[Line]:
    """Return (status, message) lines; status is ``ok``, ``warn`` or ``fail``."""
    lines: list[Line] = [("ok", "configuration is valid")]
    lines += [("ok" if on else "warn", text) for on, text in optional_parts(settings)]
    lines += push_key_problems(settings)
    dsn = settings.require_database_url()
    try:
        conn = await connect_once(dsn, connect_timeout=TIMEOUT)
    except Exception as exc:
        return [*lines, ("fail", f"database unreachable at DATABASE_URL: {describe(exc)}")]
    try:
        store = Store(conn)
        lines += await _step("reading the server version", _version(store))
        pooled = await _probe(dsn)
        lines.append(database_role(settings, pooled))
        separate = settings.listen_url != dsn
        listen_pooled = await _probe(settings.listen_url) if separate else pooled
        lines.append(listen_role(separate, listen_pooled))
        lines += await _step("checking the relay schema", _schema(store))
        # No round trip where the listen URL is a pooler or unreachable: that is its fail line.
        if listen_pooled is False or (not separate and listen_pooled is not True):
            lines += await _step("the LISTEN round trip", _listen_round_trip(settings.listen_url, store))
    finally:
        conn.terminate()
    return lines


async def _step(what: str, lines: Awaitable[list[Line]]) -> list[Line]:
    try:
        return await lines
    except Exception as exc:
        return [("fail", f"{what} failed: {describe(exc)}")]


async def _probe(dsn: str) -> bool | Exception:
    """True through a transaction pooler, False on a direct session, or why it could not tell."""
    try:
        async with asyncio.timeout(TIMEOUT):
            return await shares_sessions(dsn)
    except Exception as exc:
        return exc


async def _version(store: Store) -> list[Line]:
    return [("ok", f"database reachable (PostgreSQL {await store.server_version()})")]


async def _schema(store: Store) -> list[Line]:
    count = await store.migrations_applied()
    if count is None:
        return [("fail", "relay schema missing: run `relay migrate`")]
    return [
        ("ok", f"relay schema present ({count} migrations applied)"),
        ("ok", 'trigger attached to "Booking"')
        if await store.trigger_attached()
        else ("fail", 'trigger not attached to "Booking": run `relay migrate`'),
        *await sources_lines(store),
        await capture_line(store),
    ]


def database_role(settings: Settings, pooled: bool | Exception) -> Line:
    """What DATABASE_URL is, what Relay uses it for, and what to change."""
    setting = settings.database_pooler
    if isinstance(pooled, Exception):
        return (
            "fail",
            f"could not tell whether DATABASE_URL goes through a transaction pooler: {describe(pooled)}",
        )
    if pooled and setting == "off":
        return (
            "fail",
            "DATABASE_URL goes through a transaction pooler, but RELAY_DATABASE_POOLER=off keeps "
            "prepared statements, which fail there: set RELAY_DATABASE_POOLER=auto",
        )
    if pooled:
        return (
            "ok",
            "DATABASE_URL goes through a transaction pooler: used for Relay's queries and "
            f"transactions, without prepared statements (RELAY_DATABASE_POOLER={setting})",
        )
    if setting == "on":
        return (
            "warn",
            "DATABASE_URL is a direct session connection, but RELAY_DATABASE_POOLER=on turns its "
            "prepared statements off (each query costs more): unset RELAY_DATABASE_POOLER",
        )
    return (
        "ok",
        "DATABASE_URL is a direct session connection: used for Relay's queries and transactions, "
        "with prepared statements",
    )


def listen_role(separate: bool, pooled: bool | Exception) -> Line:
    """What the listen URL is, what Relay uses it for, and what to change."""
    if not separate:
        shared = "LISTEN uses DATABASE_URL (RELAY_LISTEN_DATABASE_URL is unset or the same)"
        if pooled is True:
            return (
                "fail",
                f"{shared}, a transaction pooler, which cannot LISTEN: "
                f"set RELAY_LISTEN_DATABASE_URL to {DIRECT_HINT}",
            )
        return ("ok", shared)
    if isinstance(pooled, Exception):
        return ("fail", f"listen connection unreachable at RELAY_LISTEN_DATABASE_URL: {describe(pooled)}")
    if pooled:
        return (
            "fail",
            "RELAY_LISTEN_DATABASE_URL goes through a transaction pooler, which cannot LISTEN: "
            f"set RELAY_LISTEN_DATABASE_URL to {DIRECT_HINT}",
        )
    return (
        "ok",
        "RELAY_LISTEN_DATABASE_URL is a direct session connection: used for LISTEN and any work "
        "that needs a session",
    )


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
    except Exception as exc:
        return [("fail", f"invalid setting RELAY_VAPID_PRIVATE_KEY: {describe(exc)}")]
    return []


async def _listen_round_trip(listen_dsn: str, sender: Store) -> list[Line]:
    channel = f"relay_check_{os.getpid()}"
    try:
        listener = await asyncpg.connect(listen_dsn, timeout=TIMEOUT)
    except Exception as exc:
        return [("fail", f"listen connection unreachable: {describe(exc)}")]
    received: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(channel, lambda *args: received.put_nowait(args[3]))
        started = time.perf_counter()
        await sender.notify(channel, "ping")
        try:
            await asyncio.wait_for(received.get(), timeout=3)
        except TimeoutError:
            return [
                (
                    "fail",
                    "LISTEN does not work on the listen connection (no notification within 3 s); "
                    "a transaction pooler cannot LISTEN: set RELAY_LISTEN_DATABASE_URL to a direct URL",
                )
            ]
        elapsed = (time.perf_counter() - started) * 1000
        return [("ok", f"LISTEN works on the listen connection (round trip {elapsed:.1f} ms)")]
    except asyncpg.PostgresError as exc:
        return [("fail", f"LISTEN failed on the listen connection: {describe(exc)}")]
    finally:
        listener.terminate()
