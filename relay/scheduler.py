"""APScheduler jobs: reconciliation poll, retention, queue depths, and any job added later.

A job is a name, an async callable and an interval. Each runs in APScheduler 3's
``AsyncIOScheduler`` with ``max_instances=1`` and ``coalesce=True``, so it never
overlaps itself in one process. A *shared* job (the default) does work for the
whole database, so with several relay processes it must run once per interval in
total: each run holds a PostgreSQL advisory lock for its duration
(``pg_try_advisory_xact_lock`` in a transaction; a process that does not get it
skips the run) and claims the run in ``relay.jobs`` (skipped when any process
started it less than 90 % of an interval ago). A *local* job runs in every
process: the reconciliation poll, because each process has its own feed position,
and the queue-depth gauges, because each process exports its own ``/metrics``.

A job that raises is logged, counted in ``relay_job_failures_total{job}``, and runs
again at its next time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from relay import metrics
from relay.db import TRANSIENT_ERRORS, q

if TYPE_CHECKING:
    from relay.app import Relay

logger = logging.getLogger(__name__)

RETENTION_INTERVAL = 3600.0
QUEUE_DEPTH_INTERVAL = 15.0
ENDPOINT_DISABLE_INTERVAL = 3600.0
PUSH_PRUNE_INTERVAL = 3600.0
RETENTION_BATCH = 5000
# A shared job is skipped when another process started it less than this share of an
# interval ago (slack for timer jitter between processes).
CLAIM_SLACK = 0.9
STOP_GRACE = 5.0

CHANNELS = ("webhook", "push")
QUEUE_STATES = ("pending", "retrying", "sending", "failed")


@dataclass(frozen=True)
class Job:
    """``run`` is awaited every ``interval`` seconds; ``shared`` jobs run in one process at a time."""

    name: str
    run: Callable[[], Awaitable[object]]
    interval: float
    shared: bool = True


class Scheduler:
    """Runs ``jobs`` on an ``AsyncIOScheduler`` until ``stop()``; uses (never closes) ``pool``."""

    def __init__(self, pool: asyncpg.Pool, jobs: Sequence[Job], *, stop_grace: float = STOP_GRACE) -> None:
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"job names must be unique: {names}")
        self._pool = pool
        self.jobs = tuple(jobs)
        self._stop_grace = stop_grace
        self._running: set[asyncio.Task[object]] = set()
        self._stopping = False
        self._aps = AsyncIOScheduler(timezone=UTC)

    def start(self) -> None:
        """Start on the running event loop; every job first runs at once, then every interval."""
        now = datetime.now(UTC)
        for job in self.jobs:
            self._aps.add_job(
                self.run_job,
                "interval",
                args=[job],
                seconds=job.interval,
                id=job.name,
                name=job.name,
                next_run_time=now,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self._aps.start()
        logger.info(
            "scheduler started: %s", ", ".join(f"{job.name} every {job.interval:g}s" for job in self.jobs)
        )

    async def stop(self) -> None:
        """Let running jobs finish (up to the grace period), cancel the rest, shut APScheduler down.

        Safe to call more than once."""
        first = not self._stopping
        self._stopping = True
        if self._running:
            await asyncio.wait(set(self._running), timeout=self._stop_grace)
        if first and self._aps.running:
            self._aps.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a loop callback
        late = list(self._running)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)

    async def run_job(self, job: Job) -> bool:
        """Run ``job`` once under the scheduling rules; return whether it ran (and did not raise)."""
        if self._stopping:
            return False
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            if job.shared:
                return await self._run_shared(job)
            return await self._run_guarded(job)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Cut short by stop() after the grace period: say so once, and end the run
            # quietly rather than as an APScheduler "job raised" traceback.
            logger.warning("job %s cancelled at shutdown", job.name, extra={"job": job.name})
            return False
        finally:
            self._running.discard(task)

    async def _run_shared(self, job: Job) -> bool:
        # A transaction-scoped lock, so it is never left behind on a pooled connection
        # (and works through a transaction pooler); the claim commits with the run.
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval(q("job_try_lock"), job.name):
                    logger.debug("job %s is running in another process; skipped", job.name)
                    return False
                if not await conn.fetchval(q("job_claim_run"), job.name, job.interval * CLAIM_SLACK):
                    logger.debug("job %s ran recently in another process; skipped", job.name)
                    return False
                ok = await self._run_guarded(job)
                await conn.execute(q("job_finished"), job.name, None if ok else "failed (see the log)")
                return ok
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            self._failed(job, exc)
            return False

    async def _run_guarded(self, job: Job) -> bool:
        try:
            await job.run()
        except Exception as exc:
            self._failed(job, exc)
            return False
        return True

    def _failed(self, job: Job, exc: BaseException) -> None:
        metrics.job_failures.labels(job.name).inc()
        if isinstance(exc, TRANSIENT_ERRORS):
            # The database is away: one line, no traceback (the listener says more).
            logger.warning(
                "job %s could not reach the database (%s: %s); it runs again in %gs",
                job.name,
                type(exc).__name__,
                exc,
                job.interval,
                extra={"job": job.name},
            )
            return
        logger.error(
            "job %s failed (%s: %s); it runs again in %gs",
            job.name,
            type(exc).__name__,
            exc,
            job.interval,
            exc_info=exc,
            extra={"job": job.name},
        )


# -- the jobs ---------------------------------------------------------------------------


async def apply_retention(
    pool: asyncpg.Pool, days: float, *, batch: int = RETENTION_BATCH
) -> tuple[int, int]:
    """Delete finished deliveries and sequenced, fully delivered events older than ``days``.

    Returns (deliveries, events) deleted. Works in batches so no delete holds locks long.
    """
    cutoff = datetime.now(UTC) - timedelta(days=days)
    deliveries = await _delete_in_batches(pool, "retention_deliveries", cutoff, batch)
    events = await _delete_in_batches(pool, "retention_events", cutoff, batch)
    if deliveries or events:
        logger.info(
            "retention removed %d deliveries and %d events older than %g days", deliveries, events, days
        )
    return deliveries, events


async def _delete_in_batches(pool: asyncpg.Pool, query: str, cutoff: datetime, batch: int) -> int:
    total = 0
    while True:
        async with pool.acquire() as conn:
            status = await conn.execute(q(query), cutoff, batch)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch:
            return total


async def refresh_queue_depths(pool: asyncpg.Pool) -> None:
    """Set ``relay_deliveries_pending{channel,state}`` from ``relay.deliveries``."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(q("delivery_queue_depths"))
    counts = {(row["channel"], row["state"]): int(row["n"]) for row in rows}
    for channel in {*CHANNELS, *(channel for channel, _ in counts)}:
        for state in QUEUE_STATES:
            metrics.deliveries_pending.labels(channel, state).set(counts.get((channel, state), 0))


EndpointDisabler = Callable[[asyncpg.Pool, float], Awaitable[object]]
PushPruner = Callable[[asyncpg.Pool], Awaitable[object]]


def build_scheduler(
    relay: Relay,
    *,
    disable_failing_endpoints: EndpointDisabler | None = None,
    prune_push_subscriptions: PushPruner | None = None,
    extra_jobs: Sequence[Job] = (),
) -> Scheduler:
    """The relay's scheduler: the standard jobs, the optional channel jobs, then ``extra_jobs``.

    ``disable_failing_endpoints(pool, days)`` runs hourly with
    ``settings.endpoint_disable_after_days``; ``prune_push_subscriptions(pool)`` runs hourly.
    """
    settings, pool = relay.settings, relay.pool

    async def reconcile() -> None:
        relay.feed.wake()

    async def retention() -> None:
        await apply_retention(pool, settings.retention_days)

    async def queue_depths() -> None:
        await refresh_queue_depths(pool)

    jobs = [
        Job("reconcile", reconcile, settings.reconcile_interval, shared=False),
        Job("retention", retention, RETENTION_INTERVAL),
        Job("queue_depths", queue_depths, QUEUE_DEPTH_INTERVAL, shared=False),
    ]
    if disable_failing_endpoints is not None:
        disabler = disable_failing_endpoints

        async def endpoints() -> None:
            await disabler(pool, settings.endpoint_disable_after_days)

        jobs.append(Job("disable_failing_endpoints", endpoints, ENDPOINT_DISABLE_INTERVAL))
    if prune_push_subscriptions is not None:
        pruner = prune_push_subscriptions

        async def prune() -> None:
            await pruner(pool)

        jobs.append(Job("prune_push_subscriptions", prune, PUSH_PRUNE_INTERVAL))
    return Scheduler(pool, [*jobs, *extra_jobs])
