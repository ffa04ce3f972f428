"""The dispatcher's database work in batches: outcomes recorded in one statement, a send slot
freed when its attempt ends (not when its outcome is recorded)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta
from typing import ClassVar

import asyncpg

from relay.db import create_pool
from relay.destinations import Delivery, Outcome
from relay.dispatcher import Dispatcher
from relay.events import Event
from relay.feed import Feed
from relay.retry import RetrySchedule, retrying
from relay.store import Attempt, ClaimRoom, Store
from relay.webhooks.endpoints import add_endpoint
from tests.webhook_receiver import LOOPBACK, booking, wait_rows, write_bookings

ROOM = ClaimRoom({}, 100, {}, 100, {}, 100)


async def _claimed(db_url: str, store: Store, count: int, worker: str) -> list[Delivery]:
    """``count`` webhook deliveries of merchant m1, planned and leased to ``worker``."""
    await add_endpoint(store, merchant_id="m1", url="http://127.0.0.1:9/", allow=LOOPBACK)
    await store.create_cursors(["webhook"])
    await write_bookings(db_url, *(booking(f"b{i}", "m1") for i in range(count)))
    await store.advance(0, 100)  # sequence them
    planned, _ = await store.plan(["webhook"], 100)
    assert planned == count
    claimed = await store.claim("webhook", 100, worker, 30.0, ROOM)
    return sorted((delivery for delivery, _ in claimed), key=lambda d: d.id)


async def test_one_statement_records_each_outcome_and_its_schedule_and_hands_back_the_rest(
    db_url: str,
) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        store = Store(conn)
        succeeded, retried, failed, handed_back, elsewhere = await _claimed(db_url, store, 5, "w1")
        await store.record(
            [
                Attempt(succeeded.id, "succeeded", 0.0, 204, None, 12),
                Attempt(retried.id, "pending", 90.0, 503, "HTTP 503", 30),
                Attempt(failed.id, "failed", 0.0, None, "timed out after 15 s", 15000),
                Attempt(handed_back.id, None, 5.0, None, None, None),
            ],
            "w1",
        )
        # A row leased to another worker is left alone, however it is named.
        await store.record([Attempt(elsewhere.id, "succeeded", 0.0, 204, None, 1)], "w2")
        rows = {
            row["id"]: row
            for row in await conn.fetch(
                "SELECT *, next_attempt_at - now() AS wait FROM relay.deliveries ORDER BY id"
            )
        }
    finally:
        await conn.close()

    def shape(delivery: Delivery) -> tuple[object, ...]:
        row = rows[delivery.id]
        return (
            row["state"],
            row["attempts"],
            row["last_status"],
            row["last_error"],
            row["last_response_ms"],
            row["locked_by"],
            row["completed_at"] is not None,
        )

    assert shape(succeeded) == ("succeeded", 1, 204, None, 12, None, True)
    assert shape(retried) == ("pending", 1, 503, "HTTP 503", 30, None, False)
    assert shape(failed) == ("failed", 1, None, "timed out after 15 s", 15000, None, True)
    assert shape(handed_back) == ("pending", 0, None, None, None, None, False)
    assert shape(elsewhere) == ("sending", 0, None, None, None, "w1", False)
    assert timedelta(seconds=89) < rows[retried.id]["wait"] <= timedelta(seconds=90)
    assert timedelta(seconds=4) < rows[handed_back.id]["wait"] <= timedelta(seconds=5)


class RecordedLater:
    """Webhook deliveries sent nowhere; the first send locks its own row from another
    connection, so recording its outcome (and every outcome after it) waits until the test
    lets go."""

    kind: ClassVar[str] = "webhook"

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.sent: asyncio.Queue[int] = asyncio.Queue()
        self.locker: asyncpg.Connection | None = None
        self.lock: asyncpg.transaction.Transaction | None = None

    async def load(self, deliveries: Sequence[Delivery]) -> None:
        return None

    async def send(self, delivery: Delivery, event: Event) -> Outcome:
        if self.locker is None:
            self.locker = await asyncpg.connect(self.db_url)
            self.lock = self.locker.transaction()
            await self.lock.start()
            await self.locker.execute("SELECT 1 FROM relay.deliveries WHERE id = $1 FOR UPDATE", delivery.id)
        self.sent.put_nowait(delivery.id)
        return Outcome.success(204)

    async def gone(self, delivery: Delivery, outcome: Outcome) -> None:
        raise AssertionError("not expected")

    async def release(self) -> None:
        if self.lock is not None and self.locker is not None:
            lock, locker, self.lock = self.lock, self.locker, None
            await lock.rollback()
            await locker.close()


async def test_a_merchants_next_deliveries_are_sent_while_earlier_outcomes_wait_to_be_recorded(
    db_url: str,
) -> None:
    pool = await create_pool(db_url)
    store = Store(pool)
    await add_endpoint(store, merchant_id="m1", url="http://127.0.0.1:9/", allow=LOOPBACK)
    destination = RecordedLater(db_url)
    # One send at a time for the merchant, AHEAD in hand: without freeing the slot when an
    # attempt ends, the deliveries after those would wait for the first outcome to be recorded.
    dispatcher = Dispatcher(
        store, [destination], RetrySchedule.parse("0,100ms"), per_merchant=1, poll_interval=0.1, grace=1.0
    )  # type: ignore[list-item]
    feed = Feed(store, reconcile_interval=0.05)
    feed.subscribe(lambda _events: dispatcher.wake())
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(dispatcher.plan_loop(stop)),
        asyncio.create_task(dispatcher.deliver_loop(stop)),
    ]
    try:
        await dispatcher.started.wait()
        tasks.append(asyncio.create_task(feed.run(stop)))
        await write_bookings(db_url, *(booking(f"b{i}", "m1") for i in range(10)))
        sent = [await asyncio.wait_for(destination.sent.get(), 10) for _ in range(10)]
        assert len(set(sent)) == 10
        rows = await wait_rows(db_url, lambda rows: len(rows) == 10)
        assert sum(row["state"] == "succeeded" for row in rows) == 0  # all waiting behind the lock
        await destination.release()
        rows = await wait_rows(db_url, lambda rows: all(r["state"] == "succeeded" for r in rows))
        assert [row["attempts"] for row in rows] == [1] * 10
    finally:
        await destination.release()
        stop.set()
        await asyncio.gather(*tasks)
        await pool.close()


async def test_a_renewal_skips_rows_being_recorded_instead_of_waiting_for_them(db_url: str) -> None:
    """A renewal that waited for a row another statement holds could lock rows in the opposite
    order from that statement (a record of outcomes) and deadlock with it."""
    conn, other = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        store = Store(conn)
        first, second = await _claimed(db_url, store, 2, "w1")
        before = await conn.fetchval("SELECT locked_until FROM relay.deliveries WHERE id = $1", second.id)
        async with other.transaction():
            await other.execute("SELECT 1 FROM relay.deliveries WHERE id = $1 FOR UPDATE", first.id)
            async with asyncio.timeout(2):
                await store.renew([first.id, second.id], "w1", 60.0)
        after = await conn.fetchval("SELECT locked_until FROM relay.deliveries WHERE id = $1", second.id)
        assert after - before > timedelta(seconds=20)
    finally:
        await conn.close()
        await other.close()


async def test_outcomes_are_recorded_after_a_deadlock_with_another_transaction(db_url: str) -> None:
    """PostgreSQL breaks a deadlock by rolling one transaction back; when it is the record of
    outcomes, the record is made again (a deadlock is a transient error) and nothing waits
    for a lease to run out."""
    conn, other = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        store = Store(conn)
        first, second = await _claimed(db_url, store, 2, "w1")
        outcomes = [Attempt(d.id, "succeeded", 0.0, 204, None, 1) for d in (first, second)]
        async with other.transaction():
            await other.execute("SELECT 1 FROM relay.deliveries WHERE id = $1 FOR UPDATE", second.id)
            recording = asyncio.create_task(retrying(lambda: store.record(outcomes, "w1"), what="record"))
            await asyncio.sleep(0.3)  # the record holds the first row and waits for the second
            assert not recording.done()
            # Taking the first row now closes the cycle: PostgreSQL rolls one of the two back.
            with contextlib.suppress(asyncpg.DeadlockDetectedError):
                await other.execute("SELECT 1 FROM relay.deliveries WHERE id = $1 FOR UPDATE", first.id)
        async with asyncio.timeout(10):
            await recording
        states = await conn.fetch(
            "SELECT state FROM relay.deliveries WHERE id = ANY($1::bigint[])", [first.id, second.id]
        )
        assert [row["state"] for row in states] == ["succeeded", "succeeded"]
    finally:
        await conn.close()
        await other.close()
