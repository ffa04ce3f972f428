from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from relay import app, metrics
from relay.config import Settings
from relay.db import create_pool
from relay.scheduler import Job, Scheduler, apply_retention, build_scheduler, refresh_queue_depths
from relay.store import Store, q


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    made = await create_pool(db_url)
    try:
        yield made
    finally:
        await made.close()


def job_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def failures(name: str) -> float:
    return metrics.REGISTRY.get_sample_value("relay_job_failures_total", {"job": name}) or 0.0


async def add_event(
    conn: asyncpg.Connection, booking: str, *, age_days: float = 0, sequence: bool = True
) -> int:
    await conn.execute(
        """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'm1', 'PENDING')""", booking
    )
    event_id = int(await conn.fetchval("SELECT max(id) FROM relay.events"))
    if sequence:
        await conn.execute(q("sequence_events"))
    await conn.execute(
        "UPDATE relay.events SET created_at = now() - $2::float8 * interval '1 day' WHERE id = $1",
        event_id,
        age_days,
    )
    return event_id


async def add_delivery(
    conn: asyncpg.Connection,
    event_id: int,
    target: int,
    state: str,
    *,
    finished_days_ago: float | None = None,
) -> int:
    return int(
        await conn.fetchval(
            """
            INSERT INTO relay.deliveries (event_id, channel, target_id, state, attempts, completed_at)
            VALUES ($1, 'webhook', $2, $3, 1, now() - $4::float8 * interval '1 day')
            RETURNING id
            """,
            event_id,
            target,
            state,
            finished_days_ago,
        )
    )


async def test_retention_removes_only_old_finished_rows(pool: asyncpg.Pool, db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        done = await add_event(conn, "done", age_days=20)
        done_ok = await add_delivery(conn, done, 1, "succeeded", finished_days_ago=20)
        done_failed = await add_delivery(conn, done, 2, "failed", finished_days_ago=19)
        bare_old = await add_event(conn, "bare-old", age_days=20)

        waiting = await add_event(conn, "waiting", age_days=20)
        waiting_pending = await add_delivery(conn, waiting, 1, "pending")
        waiting_old_ok = await add_delivery(conn, waiting, 2, "succeeded", finished_days_ago=20)

        late = await add_event(conn, "late", age_days=20)
        late_failed = await add_delivery(conn, late, 1, "failed", finished_days_ago=1)

        recent = await add_event(conn, "recent", age_days=1)
        recent_ok = await add_delivery(conn, recent, 1, "succeeded", finished_days_ago=1)

        unsequenced = await add_event(conn, "unsequenced", age_days=20, sequence=False)

        deleted = await apply_retention(Store(pool), 14, batch=2)  # a small batch exercises the loop

        events = {r["id"] for r in await conn.fetch("SELECT id FROM relay.events")}
        deliveries = {r["id"] for r in await conn.fetch("SELECT id FROM relay.deliveries")}
    finally:
        await conn.close()
    assert events == {waiting, late, recent, unsequenced}
    assert bare_old not in events and done not in events
    assert deliveries == {waiting_pending, late_failed, recent_ok}
    assert done_ok not in deliveries and done_failed not in deliveries and waiting_old_ok not in deliveries
    assert deleted == (3, 2)


async def test_retention_keeps_events_a_channel_has_not_planned_yet(pool: asyncpg.Pool, db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        planned = await add_event(conn, "planned", age_days=20)
        planned_position = await conn.fetchval("SELECT position FROM relay.events WHERE id = $1", planned)
        unplanned = await add_event(conn, "unplanned", age_days=20)
        await conn.execute(
            "INSERT INTO relay.cursors (name, position) VALUES ('webhook', $1)", planned_position
        )

        await apply_retention(Store(pool), 14)

        events = {r["id"] for r in await conn.fetch("SELECT id FROM relay.events")}
    finally:
        await conn.close()
    assert events == {unplanned}


async def test_queue_depths_count_pending_retrying_and_failed(pool: asyncpg.Pool, db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        event = await add_event(conn, "b1")
        await conn.execute(
            """
            INSERT INTO relay.deliveries (event_id, channel, target_id, state, attempts) VALUES
              ($1, 'webhook', 1, 'pending', 0), ($1, 'webhook', 2, 'pending', 0),
              ($1, 'webhook', 3, 'pending', 2), ($1, 'webhook', 4, 'failed', 8),
              ($1, 'webhook', 5, 'succeeded', 1), ($1, 'push', 1, 'sending', 1)
            """,
            event,
        )
    finally:
        await conn.close()

    await refresh_queue_depths(Store(pool))

    def depth(channel: str, state: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(
            "relay_deliveries_pending", {"channel": channel, "state": state}
        )

    assert depth("webhook", "pending") == 2
    assert depth("webhook", "retrying") == 1
    assert depth("webhook", "failed") == 1
    assert depth("push", "sending") == 1
    assert depth("push", "pending") == 0


async def test_shared_job_runs_once_per_interval_across_two_schedulers(db_url: str) -> None:
    name = job_name("tick")
    interval = 0.4
    runs: list[str] = []

    def make(who: str) -> Job:
        async def tick() -> None:
            runs.append(who)

        return Job(name, tick, interval)

    pools = [await create_pool(db_url) for _ in range(2)]
    schedulers = [Scheduler(Store(pools[0]), [make("a")]), Scheduler(Store(pools[1]), [make("b")])]
    started = time.monotonic()
    try:
        schedulers[0].start()
        await asyncio.sleep(interval / 2)  # out of phase: the lock alone would not keep runs apart
        schedulers[1].start()
        await asyncio.sleep(2.0)
    finally:
        for scheduler in schedulers:
            await scheduler.stop()
        elapsed = time.monotonic() - started
        for made in pools:
            await made.close()
    # Each scheduler fires about elapsed / interval times; together, without coordination,
    # they would run the job about twice that often.
    fired_per_scheduler = elapsed / interval + 1
    assert 2 <= len(runs) <= fired_per_scheduler / 0.9 + 1, runs
    conn = await asyncpg.connect(db_url)
    try:
        recorded = await conn.fetchval("SELECT runs FROM relay.jobs WHERE name = $1", name)
    finally:
        await conn.close()
    assert recorded == len(runs)


async def test_shared_job_never_overlaps_itself_across_schedulers(db_url: str) -> None:
    name = job_name("slow")
    active = 0
    overlaps = 0
    finished: asyncio.Queue[str] = asyncio.Queue()

    def make(who: str) -> Job:
        async def slow() -> None:
            nonlocal active, overlaps
            active += 1
            overlaps += active > 1
            await asyncio.sleep(0.6)  # longer than the interval: only the lock keeps runs apart
            active -= 1
            finished.put_nowait(who)

        return Job(name, slow, 0.1)

    pools = [await create_pool(db_url) for _ in range(2)]
    schedulers = [Scheduler(Store(pools[0]), [make("a")]), Scheduler(Store(pools[1]), [make("b")])]
    try:
        for scheduler in schedulers:
            scheduler.start()
        for _ in range(3):
            await asyncio.wait_for(finished.get(), 10)
    finally:
        for scheduler in schedulers:
            await scheduler.stop()
        for made in pools:
            await made.close()
    assert overlaps == 0


async def test_a_process_skips_a_shared_job_another_process_is_running(db_url: str) -> None:
    name = job_name("busy")
    entered = asyncio.Event()
    release = asyncio.Event()

    async def busy() -> None:
        entered.set()
        await release.wait()

    job = Job(name, busy, 0.01)
    pools = [await create_pool(db_url) for _ in range(2)]
    first, second = Scheduler(Store(pools[0]), [job]), Scheduler(Store(pools[1]), [job])
    try:
        running = asyncio.create_task(first.run_job(job))
        await asyncio.wait_for(entered.wait(), 5)
        # Skipped at once (advisory lock taken), not queued behind the running one.
        assert await asyncio.wait_for(second.run_job(job), 3) is False
        release.set()
        assert await asyncio.wait_for(running, 5) is True
        await asyncio.sleep(0.02)  # a full interval later the job is due again
        entered.clear()
        release.set()
        assert await asyncio.wait_for(second.run_job(job), 5) is True
    finally:
        release.set()
        for made in pools:
            await made.close()


async def test_raising_job_is_logged_counted_and_runs_again(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    name = job_name("flaky")
    calls: asyncio.Queue[int] = asyncio.Queue()
    count = 0

    async def flaky() -> None:
        nonlocal count
        count += 1
        calls.put_nowait(count)
        if count == 1:
            raise RuntimeError("boom")

    before = failures(name)
    scheduler = Scheduler(Store(pool), [Job(name, flaky, 0.2)])
    caplog.set_level(logging.ERROR, logger="relay.scheduler")
    scheduler.start()
    try:
        assert await asyncio.wait_for(calls.get(), 5) == 1
        assert await asyncio.wait_for(calls.get(), 5) == 2
    finally:
        await scheduler.stop()
    assert failures(name) - before == 1
    failed = [r for r in caplog.records if r.name == "relay.scheduler" and "boom" in r.getMessage()]
    assert len(failed) == 1 and getattr(failed[0], "job", None) == name


async def test_job_failing_on_a_lost_database_is_counted_with_one_line(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    name = job_name("offline")

    async def offline() -> None:
        raise ConnectionRefusedError("connection refused")

    scheduler = Scheduler(Store(pool), [Job(name, offline, 60, shared=False)])
    before = failures(name)
    caplog.set_level(logging.WARNING, logger="relay.scheduler")
    assert await scheduler.run_job(scheduler.jobs[0]) is False
    assert failures(name) - before == 1
    [logged] = [r for r in caplog.records if r.name == "relay.scheduler"]
    assert logged.levelno == logging.WARNING and logged.exc_info is None
    assert "could not reach the database" in logged.getMessage()


async def test_local_job_runs_in_every_scheduler(pool: asyncpg.Pool) -> None:
    name = job_name("local")
    seen: asyncio.Queue[str] = asyncio.Queue()

    def make(who: str) -> Job:
        async def local() -> None:
            seen.put_nowait(who)

        return Job(name, local, 60, shared=False)

    schedulers = [Scheduler(Store(pool), [make("a")]), Scheduler(Store(pool), [make("b")])]
    try:
        for scheduler in schedulers:
            scheduler.start()
        got = {await asyncio.wait_for(seen.get(), 5) for _ in range(2)}
    finally:
        for scheduler in schedulers:
            await scheduler.stop()
    assert got == {"a", "b"}


async def test_relay_schedules_reconciliation_and_retention(settings: Settings, db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        old = await add_event(conn, "old", age_days=30)
        async with app.start(settings, serve_http=False):

            async def retention_ran() -> None:
                gone = "SELECT count(*) = 0 FROM relay.events WHERE id = $1"
                while not await conn.fetchval(gone, old):
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(retention_ran(), 10)
            jobs = {r["name"] for r in await conn.fetch("SELECT name FROM relay.jobs")}
    finally:
        await conn.close()
    assert jobs == {"retention", "disable_failing_endpoints"}


async def test_destination_jobs_register_with_their_arguments(settings: Settings, pool: asyncpg.Pool) -> None:
    calls: asyncio.Queue[tuple[str, tuple[object, ...]]] = asyncio.Queue()

    async def disable_failing_endpoints(store: Store, days: float) -> None:
        calls.put_nowait(("disable", (store, days)))

    async def prune_push_subscriptions(store: Store) -> None:
        calls.put_nowait(("prune", (store,)))

    settings = settings.model_copy(update={"endpoint_disable_after_days": 3.5})
    # A scheduler that is not started: no timer of its own competes for the shared jobs.
    store = Store(pool)
    scheduler = build_scheduler(
        store,
        settings,
        disable_failing_endpoints=disable_failing_endpoints,
        prune_push_subscriptions=prune_push_subscriptions,
    )
    jobs = {job.name: job for job in scheduler.jobs}
    assert await scheduler.run_job(jobs["disable_failing_endpoints"])
    assert await scheduler.run_job(jobs["prune_push_subscriptions"])
    got = [await asyncio.wait_for(calls.get(), 5) for _ in range(2)]
    assert got == [("disable", (store, 3.5)), ("prune", (store,))]
    assert jobs["disable_failing_endpoints"].shared and jobs["prune_push_subscriptions"].shared


async def test_reconciliation_is_the_feeds_own_timer_not_a_job(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """One reconciliation timer: the feed's (RELAY_RECONCILE_INTERVAL); the scheduler has none."""
    scheduler = build_scheduler(Store(pool), settings)
    assert {job.name for job in scheduler.jobs} == {"retention", "queue_depths"}


async def test_stop_cancels_a_job_that_outlives_the_grace_period(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    name = job_name("stuck")
    entered = asyncio.Event()

    async def stuck() -> None:
        entered.set()
        await asyncio.Event().wait()

    scheduler = Scheduler(Store(pool), [Job(name, stuck, 60, shared=False)], stop_grace=0.2)
    caplog.set_level(logging.WARNING, logger="relay.scheduler")
    scheduler.start()
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.wait_for(scheduler.stop(), 5)
    await asyncio.wait_for(scheduler.stop(), 5)  # a second stop is harmless
    assert [r.getMessage() for r in caplog.records if r.name == "relay.scheduler"] == [
        f"job {name} cancelled at shutdown"
    ]
    assert failures(name) == 0
