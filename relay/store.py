"""Every query Relay runs, as named methods over the named queries of ``sql/queries.sql``.

Callers say what they want (``advance``, ``claim``, ``record``, ``add_endpoint``);
only this module knows the SQL, as procrastinate's ``manager.py`` does. A ``Store``
runs over a pool (a relay process) or one connection (the CLI, the listener's probe)
and never closes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Literal, NamedTuple
from uuid import UUID

import asyncpg

from relay.destinations import Delivery
from relay.errors import CaptureError, SetupError, SourceError
from relay.events import Event, Source

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^\d{4}_.*\.sql$")


def sql_file(name: str) -> str:
    return resources.files("relay.sql").joinpath(name).read_text(encoding="utf-8")


@cache
def queries(file: str = "queries.sql") -> dict[str, str]:
    """The named queries of a file in ``sql/`` (``-- name: x`` headers)."""
    parts = _NAME.split(sql_file(file))
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def q(name: str) -> str:
    return queries()[name]


def migration_files() -> list[tuple[str, str]]:
    names = sorted(p.name for p in resources.files("relay.sql").iterdir() if _MIGRATION.match(p.name))
    return [(name.removesuffix(".sql"), sql_file(name)) for name in names]


def _count(status: str) -> int:
    """The row count of a command status such as ``INSERT 0 12`` or ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class Attempt(NamedTuple):
    """One recorded outcome: the row's next state and what the destination answered; state
    None hands the delivery back (pending after ``delay``) without using up an attempt."""

    delivery_id: int
    state: str | None
    delay: float
    status: int | None
    error: str | None
    ms: int | None


@dataclass(frozen=True)
class ClaimRoom:
    """What one process already holds per destination, merchant and host, and the caps it
    may hold up to: a claim takes no more than each key's remaining room."""

    destinations: Mapping[int, int]
    destination_cap: int
    merchants: Mapping[str, int]
    merchant_cap: int
    hosts: Mapping[str, int]
    host_cap: int


@dataclass
class JobRun:
    """A claimed run of a shared job; set ``error`` before the claim is released if it failed."""

    error: str | None = None


class Store:
    """Relay's queries over ``db`` (an asyncpg pool or connection, never closed here)."""

    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self._db = db

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as conn:
                yield conn
        else:
            yield self._db

    # ------------------------------------------------------------------ events

    async def position(self) -> int:
        """The last position sequenced so far."""
        async with self._conn() as conn:
            return int(await conn.fetchval(q("max_position")))

    async def advance(self, after: int, limit: int) -> list[Event]:
        """Sequence what has committed, then the events after position ``after``: the feed's pass."""
        async with self._conn() as conn:
            return [Event.from_row(r) for r in await conn.fetch(q("advance"), after, limit)]

    async def events_after(self, after: int, limit: int) -> list[Event]:
        """The events after position ``after``, without sequencing (the poller does, in poll mode)."""
        async with self._conn() as conn:
            return [Event.from_row(r) for r in await conn.fetch(q("events_after"), after, limit)]

    async def oldest_position(self) -> int:
        """The position just before the oldest retained event."""
        async with self._conn() as conn:
            return int(await conn.fetchval(q("oldest_position")))

    async def merchant_events(self, merchant_id: str, after: int, limit: int) -> list[Event]:
        async with self._conn() as conn:
            rows = await conn.fetch(q("merchant_events_after"), merchant_id, after, limit)
        return [Event.from_row(r) for r in rows]

    # ------------------------------------------------------------------ health

    async def ping(self, within: float | None = None) -> None:
        """A round trip; TimeoutError if it takes longer than ``within`` seconds."""
        async with self._conn() as conn:
            await conn.fetchval(q("ping"), timeout=within)

    async def backend_pid(self) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval(q("backend_pid")))

    async def notify_queue_usage(self) -> float:
        async with self._conn() as conn:
            return float(await conn.fetchval(q("notify_queue_usage")))

    async def notify(self, channel: str, payload: str) -> None:
        async with self._conn() as conn:
            await conn.execute(q("notify"), channel, payload)

    # ------------------------------------------------------------------ planning and delivery

    async def create_cursors(self, kinds: Sequence[str]) -> None:
        """A planning cursor per destination kind, at the last position sequenced so far."""
        async with self._conn() as conn:
            for kind in kinds:
                await conn.execute(q("cursor_create"), kind)

    async def plan(self, kinds: Sequence[str], batch: int) -> tuple[int, bool]:
        """Insert the deliveries of up to ``batch`` events per kind and move each kind's cursor.

        One transaction per kind locks its cursor row, so planning is exactly-once however
        many processes run. Returns (deliveries planned, whether more events are waiting).
        """
        planned, more = 0, False
        async with self._conn() as conn:
            for kind in kinds:
                async with conn.transaction():
                    window = await conn.fetchrow(q("plan_window"), kind, batch)
                    if window is None:  # removed meanwhile
                        await conn.execute(q("cursor_create"), kind)
                        window = await conn.fetchrow(q("plan_window"), kind, batch)
                    position, upto, last = int(window["position"]), int(window["upto"]), int(window["last"])
                    if upto <= position:
                        continue
                    status = await conn.execute(q(f"{kind}_plan"), position, upto)
                    await conn.execute(q("cursor_set"), kind, upto)
                planned += _count(status)
                more = more or upto < last
        return planned, more

    async def claim(
        self, kind: str, limit: int, worker: str, lease: float, room: ClaimRoom
    ) -> list[tuple[Delivery, Event]]:
        """Lease up to ``limit`` due deliveries of ``kind`` within ``room`` (see ``deliveries_claim``)."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                q("deliveries_claim"),
                kind,
                limit,
                worker,
                lease,
                json.dumps({str(key): n for key, n in room.destinations.items()}),
                room.destination_cap,
                json.dumps(room.merchants),
                room.merchant_cap,
                json.dumps(room.hosts),
                room.host_cap,
                [key for key, n in room.destinations.items() if n >= room.destination_cap],
                [key for key, n in room.merchants.items() if n >= room.merchant_cap],
                [key for key, n in room.hosts.items() if n >= room.host_cap],
            )
        claimed = []
        events: dict[int, Event] = {}  # an event's deliveries share one parse of its payload
        for row in rows:
            delivery = Delivery(
                id=row["id"],
                event_id=row["event_id"],
                kind=row["channel"],
                destination_id=row["target_id"],
                merchant_id=row["merchant_id"],
                attempts=row["attempts"],
                host=row["destination"],
            )
            event = events.get(delivery.event_id)
            if event is None:
                payload = row["payload"]
                event = events[delivery.event_id] = Event(
                    position=row["event_position"],
                    id=row["event_id"],
                    channel=row["event_channel"],
                    merchant_id=row["event_merchant_id"],
                    data=json.loads(payload) if isinstance(payload, str) else payload,
                    created_at=row["created_at"],
                )
            claimed.append((delivery, event))
        return claimed

    async def record(self, outcomes: Sequence[Attempt], worker: str) -> None:
        """Write a batch of outcomes in one statement: attempts, and hand-backs (state None)."""
        if not outcomes:
            return
        columns = list(zip(*outcomes, strict=True))
        async with self._conn() as conn:
            await conn.execute(q("deliveries_record"), *(list(c) for c in columns), worker)

    async def renew(self, delivery_ids: Sequence[int], worker: str, lease: float) -> None:
        async with self._conn() as conn:
            await conn.execute(q("deliveries_renew"), list(delivery_ids), worker, lease)

    # ------------------------------------------------------------------ scheduled jobs

    @contextlib.asynccontextmanager
    async def shared_run(self, job: str, min_gap: float) -> AsyncIterator[JobRun | str]:
        """Claim a run of a shared job, or say why not (running elsewhere, ran recently).

        The claim is a transaction-scoped advisory lock held for the whole run (never left
        behind on a pooled connection, and fine through a transaction pooler), committed
        together with the run's outcome.
        """
        async with self._conn() as conn, conn.transaction():
            if not await conn.fetchval(q("job_try_lock"), job):
                yield "running in another process"
                return
            if not await conn.fetchval(q("job_claim_run"), job, min_gap):
                yield "ran recently in another process"
                return
            run = JobRun()
            yield run
            await conn.execute(q("job_finished"), job, run.error)

    async def delete_finished_deliveries(self, before: datetime, batch: int) -> int:
        async with self._conn() as conn:
            return _count(await conn.execute(q("retention_deliveries"), before, batch))

    async def delete_delivered_events(self, before: datetime, batch: int) -> int:
        async with self._conn() as conn:
            return _count(await conn.execute(q("retention_events"), before, batch))

    async def queue_depths(self) -> dict[tuple[str, str], int]:
        """Deliveries waiting or given up, by (destination kind, state)."""
        async with self._conn() as conn:
            rows = await conn.fetch(q("delivery_queue_depths"))
        return {(row["channel"], row["state"]): int(row["n"]) for row in rows}

    # ------------------------------------------------------------------ webhook endpoints

    async def add_endpoint(
        self, merchant_id: str, url: str, events: list[str] | None, secret: str, limit: int
    ) -> asyncpg.Record | None:
        """Insert an endpoint unless the merchant has ``limit`` already (then None). One
        merchant's registrations take turns, so concurrent ones cannot pass the limit."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute(q("webhook_merchant_lock"), merchant_id)
            if await conn.fetchval(q("webhook_count"), merchant_id) >= limit:
                return None
            row: asyncpg.Record = await conn.fetchrow(q("webhook_add"), merchant_id, url, events, secret)
        return row

    async def endpoints(self, merchant_id: str | None) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            return list(await conn.fetch(q("webhook_list"), merchant_id))

    async def endpoint(self, endpoint_id: int) -> asyncpg.Record | None:
        async with self._conn() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(q("webhook_endpoint"), endpoint_id)
        return row

    async def endpoints_by_id(self, endpoint_ids: Sequence[int]) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(q("webhook_endpoints_by_id"), list(endpoint_ids))
        return rows

    async def delete_endpoint(self, endpoint_id: int, merchant_id: str) -> bool:
        """Remove a merchant's endpoint, cancelling its pending deliveries; False if none."""
        async with self._conn() as conn:
            return bool(await conn.fetchval(q("webhook_delete"), endpoint_id, merchant_id))

    async def disable_endpoint(self, endpoint_id: int, reason: str) -> bool:
        async with self._conn() as conn:
            return await conn.fetchval(q("webhook_disable"), endpoint_id, reason) is not None

    async def enable_endpoint(self, endpoint_id: int) -> bool:
        async with self._conn() as conn:
            return await conn.fetchval(q("webhook_enable"), endpoint_id) is not None

    async def rotate_secret(self, endpoint_id: int, secret: str, overlap: float) -> bool:
        async with self._conn() as conn:
            return await conn.fetchval(q("webhook_rotate"), endpoint_id, secret, overlap) is not None

    async def mark_failing(self, endpoint_id: int, failing: bool) -> None:
        """Start (or end) the endpoint's failure streak."""
        async with self._conn() as conn:
            await conn.execute(q("webhook_failing" if failing else "webhook_recovered"), endpoint_id)

    async def disable_failing_endpoints(self, days: float) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            return list(await conn.fetch(q("webhook_disable_failing"), float(days)))

    async def replay(self, delivery_ids: Sequence[int] | None, endpoint_id: int | None) -> list[int]:
        ids = list(delivery_ids) if delivery_ids else None
        async with self._conn() as conn:
            return [r["id"] for r in await conn.fetch(q("deliveries_replay_failed"), ids, endpoint_id)]

    # ------------------------------------------------------------------ push subscriptions

    async def subscription(self, subscription_id: int) -> asyncpg.Record | None:
        async with self._conn() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(q("push_subscription"), subscription_id)
        return row

    async def subscriptions(self, subscription_ids: Sequence[int]) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(
                q("push_subscriptions_by_id"), list(subscription_ids)
            )
        return rows

    async def upsert_subscription(
        self,
        merchant_id: str,
        user_id: str,
        endpoint: str,
        p256dh: str,
        auth: str,
        expires_at: datetime | None,
        channels: list[str] | None,
        *,
        per_merchant: int,
        per_user: int,
    ) -> tuple[int, bool] | Literal["merchant", "user"]:
        """Store a browser's subscription (one row per merchant and endpoint); return its id and
        whether it is new, or which limit of live subscriptions it would pass. One merchant's
        subscriptions change one at a time, so the counts are still true at the upsert."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute(q("push_subscription_lock"), merchant_id)
            quota = await conn.fetchrow(q("push_subscription_quota"), merchant_id, user_id, endpoint)
            if not quota["endpoint_live"] and quota["merchant_live"] >= per_merchant:
                return "merchant"
            if not quota["endpoint_live_for_user"] and quota["user_live"] >= per_user:
                return "user"
            row = await conn.fetchrow(
                q("push_subscription_upsert"),
                merchant_id,
                user_id,
                endpoint,
                p256dh,
                auth,
                expires_at,
                channels,
            )
        return int(row["id"]), bool(row["created"])

    async def delete_subscription(self, endpoint: str, merchant_id: str, user_id: str) -> None:
        async with self._conn() as conn:
            await conn.execute(q("push_subscription_delete"), endpoint, merchant_id, user_id)

    async def subscription_sent(self, subscription_id: int, success: bool) -> None:
        async with self._conn() as conn:
            await conn.execute(q("push_subscription_sent"), subscription_id, success)

    async def subscription_gone(self, subscription_id: int, delivery_id: int) -> None:
        async with self._conn() as conn:
            await conn.execute(q("push_subscription_gone"), subscription_id, delivery_id)

    async def prune_subscriptions(self) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval(q("push_prune")))

    # ------------------------------------------------------------------ presence

    async def presence_register(self, process_id: UUID, lease: float, slot: str | None) -> bool:
        """Take or renew the process's lease; True when its row was missing (see the query)."""
        async with self._conn() as conn:
            return bool(await conn.fetchval(q("presence_register"), process_id, lease, slot))

    async def presence_flush(
        self, process_id: UUID, counts: Sequence[tuple[str, str, int]], channel: str, notices: Sequence[str]
    ) -> None:
        """Store the process's counts ((merchant, user, connections), 0 deleting) and NOTIFY
        ``channel`` with each of ``notices``. ForeignKeyViolationError: the process's lease
        ran out (register again)."""
        merchants, users, connections = [c[0] for c in counts], [c[1] for c in counts], [c[2] for c in counts]
        async with self._conn() as conn:
            await conn.execute(
                q("presence_flush"), process_id, merchants, users, connections, channel, list(notices)
            )

    async def presence_remove(
        self, leaving: UUID | None = None, slot: str | None = None, besides: UUID | None = None
    ) -> list[str]:
        """Remove expired processes, ``leaving``, and those of ``slot`` but ``besides``; the
        merchants whose presence changed."""
        async with self._conn() as conn:
            rows = await conn.fetch(q("presence_remove"), leaving, slot, besides)
        return [r["merchant_id"] for r in rows]

    async def presence_counts(self, merchants: Sequence[str], besides: UUID) -> list[tuple[str, str, int]]:
        """(merchant, user, connections) over every live process but ``besides``."""
        async with self._conn() as conn:
            rows = await conn.fetch(q("presence_counts"), list(merchants), besides)
        return [(r["merchant_id"], r["user_id"], r["connections"]) for r in rows]

    # ------------------------------------------------------------------ sources

    async def sources(self) -> list[Source]:
        """Every attached source, the built-in booking one included."""
        async with self._conn() as conn:
            return [Source.from_row(r) for r in await conn.fetch(q("sources_list"))]

    async def sources_without_trigger(self) -> list[Source]:
        async with self._conn() as conn:
            return [Source.from_row(r) for r in await conn.fetch(q("sources_without_trigger"))]

    async def attach_source(
        self,
        table: str,
        entity: str,
        tenant_column: str,
        key: str,
        watch: Sequence[str],
        fields: Sequence[str],
    ) -> Source:
        """Attach ``table`` (or replace its options); SourceError says why not, in one line."""
        args = (table, entity, tenant_column, key, list(watch), list(fields))
        return await self._change_source("source_attach", *args)

    async def detach_source(self, table: str) -> Source:
        return await self._change_source("source_detach", table)

    async def _change_source(self, query: str, *args: object) -> Source:
        async with self._conn() as conn:
            try:
                return Source.from_row(await conn.fetchrow(q(query), *args))
            except asyncpg.InvalidParameterValueError as exc:  # the checks' own refusal
                raise SourceError(str(exc)) from None
            except (asyncpg.UndefinedFunctionError, asyncpg.InvalidSchemaNameError) as exc:
                raise SourceError(
                    "Relay's schema is missing or older than sources: run `relay migrate`"
                ) from exc
            except asyncpg.PostgresError as exc:  # a missing privilege, say
                raise SourceError(f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc

    # ------------------------------------------------------------------ capture modes

    async def capture_mode(self) -> str:
        async with self._conn() as conn:
            return str(await conn.fetchval(q("capture_mode")))

    async def set_capture(self, mode: str) -> str:
        """Switch every source to ``mode``; return the mode before. CaptureError says why not."""
        async with self._conn() as conn:
            try:
                return str(await conn.fetchval(q("set_capture"), mode))
            except asyncpg.InvalidParameterValueError as exc:  # the function's own refusal
                raise CaptureError(str(exc)) from None
            except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError):
                raise CaptureError("the relay schema is missing or old: run `relay migrate`") from None

    async def try_leader_lock(self, lock: str, within: float | None = None) -> bool:
        """Take a leader's session lock if no session holds it (on a dedicated connection)."""
        async with self._conn() as conn:
            return bool(await conn.fetchval(q("leader_try_lock"), lock, timeout=within))

    @contextlib.asynccontextmanager
    async def leader_lock(self, lock: str, within: float) -> AsyncIterator[None]:
        """Hold a leader's session lock, waiting up to ``within`` seconds for it (TimeoutError)."""
        async with self._conn() as conn:
            await conn.fetchval(q("leader_lock"), lock, timeout=within)
            try:
                yield
            finally:
                await conn.fetchval(q("leader_unlock"), lock)

    async def poll_events(self, limit: int, within: float | None = None) -> int:
        """The poller's pass: sequence what committed and wake every relay; how many it sequenced."""
        async with self._conn() as conn:
            return int(await conn.fetchval(q("poll_events"), limit, timeout=within))

    async def leader_backend(self, lock: str) -> int | None:
        """The backend pid of the relay process's leader that holds ``lock``, if one does."""
        async with self._conn() as conn:
            pid = await conn.fetchval(q("leader_backend"), lock)
        return None if pid is None else int(pid)

    # ------------------------------------------------------------------ capture mode wal

    async def wal_refusal(self) -> str | None:
        """Why this database and role cannot use wal mode, in one line (None: they can)."""
        async with self._conn() as conn:
            reason = await conn.fetchval(q("wal_refusal"))
        return None if reason is None else str(reason)

    async def wal_prepare(self) -> None:
        """The publication (empty), then the slot: each in a transaction of its own."""
        async with self._conn() as conn:
            await conn.execute(q("wal_publication"))
            try:
                await conn.execute(q("wal_slot_create"))
            except asyncpg.DuplicateObjectError:
                pass  # another `relay capture wal` made it meanwhile

    async def wal_drop_slot(self) -> None:
        async with self._conn() as conn:
            await conn.execute(q("wal_slot_drop"))

    async def wal_slot(self) -> asyncpg.Record | None:
        """The slot's ``wal_status``, ``lag_bytes`` and ``retained_bytes``; None without a slot."""
        async with self._conn() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(q("wal_slot"))
        return row

    async def wal_peek(self, limit: int, within: float | None = None) -> tuple[int, list[tuple[int, bytes]]]:
        """The WAL flushed so far, and the slot's messages before it: up to ``limit`` of
        them, in whole transactions, as (lsn, data). LSNs are integers."""
        async with self._conn() as conn:
            rows = await conn.fetch(q("wal_peek"), limit, timeout=within)
        return int(rows[0]["upto"]), [(int(r["lsn"]), r["data"]) for r in rows if r["lsn"] is not None]

    async def wal_columns(self, relids: Sequence[int]) -> dict[int, list[str]]:
        async with self._conn() as conn:
            rows = await conn.fetch(q("wal_columns"), list(relids))
        return {int(r["relid"]): list(r["columns"]) for r in rows}

    async def wal_record(
        self,
        relids: Sequence[int],
        ops: Sequence[str],
        new: Sequence[str | None],
        old: Sequence[str | None],
        lsns: Sequence[int],
        parts: Sequence[int],
        within: float | None = None,
    ) -> int:
        """Record decoded changes (row literals of their tables) as events, sequence them and
        wake every relay, in one transaction; how many events it sequenced."""
        async with self._conn() as conn:
            args = (list(relids), list(ops), list(new), list(old), list(lsns), list(parts))
            return int(await conn.fetchval(q("wal_record"), *args, timeout=within))

    async def wal_advance(self, lsn: int, within: float | None = None) -> None:
        async with self._conn() as conn:
            await conn.execute(q("wal_advance"), lsn, timeout=within)

    async def wal_snapshot_allowed(self) -> bool:
        async with self._conn() as conn:
            return bool(await conn.fetchval(q("wal_snapshot_allowed")))

    async def wal_log_snapshot(self) -> None:
        async with self._conn() as conn:
            await conn.execute(q("wal_log_snapshot"))

    # ------------------------------------------------------------------ schema

    async def server_version(self) -> str:
        async with self._conn() as conn:
            return str(await conn.fetchval(q("server_version")))

    async def migrations_applied(self) -> int | None:
        """How many migrations are applied; None when the relay schema is missing."""
        async with self._conn() as conn:
            if not await conn.fetchval(q("schema_present")):
                return None
            return int(await conn.fetchval(q("migrations_count")))

    async def trigger_attached(self) -> bool:
        async with self._conn() as conn:
            return bool(await conn.fetchval(q("trigger_attached")))

    async def booking_captured(self) -> bool:
        """The trigger on "Booking", or in wal mode "Booking" in the publication."""
        async with self._conn() as conn:
            return bool(await conn.fetchval(q("booking_captured")))

    async def migrate(self) -> list[str]:
        """Apply pending migrations and attach the trigger; return the names applied.

        Idempotent, and safe when several processes run it at once: everything happens in
        one transaction behind an advisory lock, so a second runner waits and finds
        nothing left to do.
        """
        async with self._conn() as conn, conn.transaction():
            await conn.execute(q("migrate_lock"))
            if not await conn.fetchval(q("booking_table_exists")):
                raise SetupError(
                    'table "Booking" does not exist in this database (search_path: '
                    + str(await conn.fetchval(q("search_path")))
                    + "); create it with your application's migrations, then run `relay migrate` again"
                )
            await conn.execute(q("migrations_table"))
            done = {r["name"] for r in await conn.fetch(q("migrations_applied"))}
            applied = []
            for name, text in migration_files():
                if name in done:
                    continue
                await conn.execute(text)
                await conn.execute(q("migration_record"), name)
                applied.append(name)
                logger.info("applied migration %s", name)
            if applied or not await conn.fetchval(q("booking_captured")):
                # The built-in source, through the path every source takes.
                await conn.execute(q("attach_booking"))
            return applied


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """``relay migrate`` on ``conn`` (see ``Store.migrate``)."""
    return await Store(conn).migrate()
