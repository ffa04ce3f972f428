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

from relay.capture import LOCKS
from relay.config import Settings
from relay.db import connect_once
from relay.errors import ConfigError
from relay.pooler import shares_sessions
from relay.push.vapid import VapidSigner
from relay.store import Store
from relay.wal import RETAINED_WARN

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
        await booking_line(store),
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


async def booking_line(store: Store) -> Line:
    if await store.capture_mode() == "wal":
        if await store.booking_captured():
            return ("ok", '"Booking" is in the publication relay (capture mode wal)')
        return ("fail", '"Booking" is not in the publication relay: run `relay migrate`')
    if await store.trigger_attached():
        return ("ok", 'trigger attached to "Booking"')
    return ("fail", 'trigger not attached to "Booking": run `relay migrate`')


def _size(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


async def capture_line(store: Store) -> Line:
    """The capture mode; in poll and wal mode whether a relay process leads it; in wal mode
    the slot and the WAL it retains."""
    mode = await store.capture_mode()
    if mode == "wal":
        return await wal_line(store)
    if await store.wal_slot() is not None:
        return (
            "warn",
            f"capture mode: {mode}, but the replication slot relay is left from wal mode and keeps "
            f"WAL: `relay capture {mode}` records what it holds and drops it",
        )
    if mode != "poll":
        return ("ok", f"capture mode: {mode}")
    pid = await store.leader_backend(LOCKS["poll"])
    if pid is None:
        return (
            "warn",
            "capture mode: poll, but no relay process polls for events now (none running?): "
            "events wait for a reconciliation pass",
        )
    return ("ok", f"capture mode: poll (a relay process polls, backend pid {pid})")


async def wal_line(store: Store) -> Line:
    slot = await store.wal_slot()
    back = "run `relay capture poll` then `relay capture wal` to capture again from now"
    if slot is None:
        return ("fail", f"capture mode: wal, but the replication slot relay is missing: {back}")
    if slot["wal_status"] == "lost":
        return (
            "fail",
            "capture mode: wal, but the replication slot relay was invalidated (wal_status lost: it "
            f"retained more than max_slot_wal_keep_size) and changes were lost: {back}",
        )
    retained = int(slot["retained_bytes"] or 0)
    held = f"the slot retains {_size(retained)} of WAL ({_size(int(slot['lag_bytes'] or 0))} not read yet)"
    pid = await store.leader_backend(LOCKS["wal"])
    if retained > RETAINED_WARN:
        return (
            "warn",
            f"capture mode: wal; {held}, over {_size(RETAINED_WARN)}: is a relay process reading it?",
        )
    if pid is None:
        return ("warn", f"capture mode: wal, but no relay process reads the slot now (none running?); {held}")
    return ("ok", f"capture mode: wal (a relay process reads the slot, backend pid {pid}); {held}")


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
