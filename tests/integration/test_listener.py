"""The listener: reconnects fast, never gives up, and reconciliation fills every gap."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from relay.config import Settings
from tests.conftest import make_settings
from tests.support import insert_booking, running, sample, with_user


async def terminate(admin: asyncpg.Connection, pid: int) -> None:
    """Terminate a backend and wait (up to 5 s) until it is gone."""
    assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)


async def test_killed_listener_is_listening_again_within_a_second(settings: Settings, db_url: str) -> None:
    admin = await asyncpg.connect(db_url)
    try:
        async with running(settings) as (relay, collector):
            old_pid = relay.listener.backend_pid
            assert old_pid is not None
            reconnects = sample("relay_listener_reconnects_total")
            started = time.monotonic()
            await terminate(admin, old_pid)
            async with asyncio.timeout(5):
                while relay.listener.backend_pid in (None, old_pid):
                    await asyncio.sleep(0.005)
            elapsed = time.monotonic() - started
            assert elapsed < 1.0, f"listening again only after {elapsed:.3f}s"
            assert sample("relay_listener_reconnects_total") == reconnects + 1
            listening = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", relay.listener.backend_pid
            )
            assert listening == 1
            await insert_booking(admin, "after-reconnect")
            await collector.wait_for(["after-reconnect"], timeout=5)
    finally:
        await admin.close()


async def test_events_committed_while_the_listener_is_down_are_handed_on_once(db_url: str) -> None:
    """The listener's role is locked out while 20 bookings commit; reconciliation finds them all."""
    role = f"relay_listen_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(db_url)
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        settings = make_settings(db_url, listen_database_url=with_user(db_url, role))
        async with running(settings) as (relay, collector):
            relay.feed.notify_grace = 0.1
            recovered = sample("relay_events_recovered_total")
            await insert_booking(admin, "before")
            await collector.wait_for(["before"])

            await admin.execute(f'ALTER ROLE "{role}" NOLOGIN')
            await terminate(admin, relay.listener.backend_pid or 0)
            # pg_terminate_backend only signals: until the listener has seen its session end,
            # the backend may still be there to hear the next NOTIFY.
            deadline = asyncio.get_running_loop().time() + 5
            while relay.listener.connected.is_set():
                assert asyncio.get_running_loop().time() < deadline, "the listener did not notice"
                await asyncio.sleep(0.01)
            missed = [f"missed-{i}" for i in range(20)]
            for booking in missed:
                await insert_booking(admin, booking)
            await asyncio.sleep(0.3)
            assert not relay.listener.connected.is_set()
            assert not set(missed) & set(collector.booking_ids()), "handed on without a listener?"

            await admin.execute(f'ALTER ROLE "{role}" LOGIN')
            await collector.wait_for(missed, timeout=10)
            await insert_booking(admin, "after")
            await collector.wait_for(["after"])
            await asyncio.sleep(0.2)
            await insert_booking(admin, "sweep")  # a later pass counts what no NOTIFY announced
            await collector.wait_for(["sweep"])

            ids = [e.id for e in collector.events]
            assert len(ids) == len(set(ids)), "an event was handed on twice"
            assert collector.booking_ids() == ["before", *missed, "after", "sweep"]
            assert sample("relay_events_recovered_total") - recovered >= 20
    finally:
        await admin.execute(f'ALTER ROLE "{role}" LOGIN')
        await admin.close()
        cleanup = await asyncpg.connect(db_url)
        await cleanup.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await cleanup.execute(f'DROP ROLE IF EXISTS "{role}"')
        await cleanup.close()


async def test_garbage_notifications_are_counted_and_relay_keeps_working(
    settings: Settings, db_url: str
) -> None:
    admin = await asyncpg.connect(db_url)
    try:
        async with running(settings) as (_relay, collector):
            before = sample("relay_notifications_malformed_total")
            garbage = [
                ("booking_created", "not json"),
                ("booking_updated", "{}"),
                ("booking_deleted", "[1, 2, 3]"),
                (
                    "booking_created",
                    '{"id": "b", "merchantId": "m", "status": "X", "operation": "INSERT", '
                    '"eventId": "seven"}',
                ),
                ("booking_deleted", '{"id": "b", "merchantId": "m", "operation": "INSERT", "eventId": 5}'),
                ("booking_updated", '{"pad": "' + "y" * 7900 + '"}'),
            ]
            for channel, payload in garbage:
                await admin.execute("SELECT pg_notify($1, $2)", channel, payload)
            async with asyncio.timeout(5):
                while sample("relay_notifications_malformed_total") < before + len(garbage):
                    await asyncio.sleep(0.01)
            await insert_booking(admin, "real")
            await collector.wait_for(["real"])
            assert collector.booking_ids() == ["real"]
            assert sample("relay_notifications_malformed_total") == before + len(garbage)
    finally:
        await admin.close()


async def test_the_feed_takes_another_connection_when_its_own_is_killed(
    settings: Settings, db_url: str
) -> None:
    """The feed keeps one pool connection between passes; a killed one costs a pass, not the feed."""
    admin = await asyncpg.connect(db_url)
    try:
        async with running(settings) as (relay, collector):
            await insert_booking(admin, "before-kill")
            await collector.wait_for(["before-kill"])
            pool_pids = [
                r["pid"]
                for r in await admin.fetch(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE application_name = 'relay' AND pid <> pg_backend_pid()"
                )
            ]
            assert pool_pids, "the feed holds a pool connection while it runs"
            for pid in pool_pids:
                await terminate(admin, pid)
            for i in range(3):
                await insert_booking(admin, f"after-kill-{i}")
            await collector.wait_for([f"after-kill-{i}" for i in range(3)], timeout=10)
            assert relay.feed.position is not None
    finally:
        await admin.close()
