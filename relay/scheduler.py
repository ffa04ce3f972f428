"""APScheduler jobs: retention, queue depths, the destinations' upkeep, and any job added later.

A job is a name, an async callable and an interval. Each runs in APScheduler 3's
``AsyncIOScheduler`` with ``max_instances=1`` and ``coalesce=True``, so it never
overlaps itself in one process. A *shared* job (the default) does work for the
whole database, so with several relay processes it must run once per interval in
total: each run holds a PostgreSQL advisory lock for its duration
(``pg_try_advisory_xact_lock`` in a transaction; a process that does not get it
skips the run) and claims the run in ``relay.jobs`` (skipped when any process
started it less than 90 % of an interval ago). A *local* job runs in every
process: the queue-depth gauges, because each process exports its own ``/metrics``.

A job that raises is logged, counted in ``relay_job_failures_total{job}``, and runs
again at its next time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from relay import metrics
from relay.config import Settings
from relay.db import TRANSIENT_ERRORS
from relay.destinations import KINDS
from relay.store import JobRun, Store

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

QUEUE_STATES = ("pending", "retrying", "sending", "failed")


@dataclass(frozen=True)
class Job:
    """``run`` is awaited every ``interval`` seconds; ``shared`` jobs run in one process at a time."""

    name: str
    run: Callable[[], Awaitable[object]]
    interval: float
    shared: bool = True


class Scheduler:
    """Runs ``jobs`` on an ``AsyncIOScheduler`` until ``stop()``; claims shared runs in ``store``."""

    def __init__(self, store: Store, jobs: Sequence[Job], *, stop_grace: float = STOP_GRACE) -> None:
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"job names must be unique: {names}")
        self._store = store
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
        try:
            async with self._store.shared_run(job.name, job.interval * CLAIM_SLACK) as run:
                if not isinstance(run, JobRun):
                    logger.debug("job %s skipped: %s", job.name, run)
                    return False
                ok = await self._run_guarded(job)
                run.error = None if ok else "failed (see the log)"
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


async def apply_retention(store: Store, days: float, *, batch: int = RETENTION_BATCH) -> tuple[int, int]:
    """Delete finished deliveries and sequenced, fully delivered events older than ``days``.

    Returns (deliveries, events) deleted. Works in batches so no delete holds locks long.
    """
    cutoff = datetime.now(UTC) - timedelta(days=days)
    deliveries = await _delete_in_batches(store.delete_finished_deliveries, cutoff, batch)
    events = await _delete_in_batches(store.delete_delivered_events, cutoff, batch)
    if deliveries or events:
        logger.info(
            "retention removed %d deliveries and %d events older than %g days", deliveries, events, days
        )
    return deliveries, events


async def _delete_in_batches(
    delete: Callable[[datetime, int], Awaitable[int]], cutoff: datetime, batch: int
) -> int:
    total = 0
    while True:
        deleted = await delete(cutoff, batch)
        total += deleted
        if deleted < batch:
            return total


async def refresh_queue_depths(store: Store) -> None:
    """Set ``relay_deliveries_pending{channel,state}`` (the label holds the destination kind)."""
    counts = await store.queue_depths()
    for kind in {*KINDS, *(kind for kind, _ in counts)}:
        for state in QUEUE_STATES:
            metrics.deliveries_pending.labels(kind, state).set(counts.get((kind, state), 0))


EndpointDisabler = Callable[[Store, float], Awaitable[object]]
PushPruner = Callable[[Store], Awaitable[object]]


def build_scheduler(
    store: Store,
    settings: Settings,
    *,
    disable_failing_endpoints: EndpointDisabler | None = None,
    prune_push_subscriptions: PushPruner | None = None,
    extra_jobs: Sequence[Job] = (),
) -> Scheduler:
    """The relay's scheduler: the standard jobs, the optional destination jobs, then ``extra_jobs``.

    ``disable_failing_endpoints(store, days)`` runs hourly with
    ``settings.endpoint_disable_after_days``; ``prune_push_subscriptions(store)`` runs hourly.
    Reconciliation is not a job: the feed runs a pass every ``RELAY_RECONCILE_INTERVAL``.
    """

    async def retention() -> None:
        await apply_retention(store, settings.retention_days)

    async def queue_depths() -> None:
        await refresh_queue_depths(store)

    jobs = [
        Job("retention", retention, RETENTION_INTERVAL),
        Job("queue_depths", queue_depths, QUEUE_DEPTH_INTERVAL, shared=False),
    ]
    if disable_failing_endpoints is not None:
        disabler = disable_failing_endpoints

        async def endpoints() -> None:
            await disabler(store, settings.endpoint_disable_after_days)

        jobs.append(Job("disable_failing_endpoints", endpoints, ENDPOINT_DISABLE_INTERVAL))
    if prune_push_subscriptions is not None:
        pruner = prune_push_subscriptions

        async def prune() -> None:
            await pruner(store)

        jobs.append(Job("prune_push_subscriptions", prune, PUSH_PRUNE_INTERVAL))
    return Scheduler(store, [*jobs, *extra_jobs])
