"""Capture mode wal: read the replication slot, record its changes as events, move it on.

asyncpg speaks no replication protocol, so the wal reader polls the slot with SQL
functions, every ``RELAY_POLL_INTERVAL`` seconds, on the leader's connection (one relay
process at a time, see ``relay.capture.Leader``). A pass:

1. peeks at the slot (``pg_logical_slot_peek_binary_changes``, pgoutput protocol 1): the
   changes of whole transactions, in commit order, up to the WAL flushed when it started;
2. turns each changed row into a row literal of its table (the decoded text values, by
   column name, in the order of the table's row type; an unchanged TOASTed value of an
   UPDATE is taken from the old row, which replica identity FULL sends);
3. records them in one transaction (``relay.wal_record``: one INSERT ... SELECT, generated
   from the sources, rebuilds each change as a row of its table and writes it as the
   poll-mode trigger would, as a compact row whose payload, id and position are given in
   the same statement; NOTIFY relay_wake wakes every relay process);
4. only then moves the slot on (``pg_replication_slot_advance``). A crash between 3 and 4
   replays those changes, and the unique LSN of each recorded change refuses them.

Peeking starts decoding afresh from the slot's restart point each time, and so does moving
the slot on. PostgreSQL moves that point only at a running-transactions record, which it
writes about every 15 s: on a busy server every pass would decode up to 15 s of WAL again.
So the reader writes one itself each time ``SNAPSHOT_BYTES`` of WAL went by since its last
(``pg_log_standby_snapshot()``, PostgreSQL 16 and later, where the role may: a superuser,
or granted EXECUTE on it). Every pass decodes what lies between that point and the end of
the WAL twice (the peek, the move), so that distance is what a pass costs: with 4 MB, the
reader's backend spent some 490 µs of CPU per change under one pgbench writer on the
bench, with 256 kB about 100 (64 kB and 1 MB: 120 and 150; a pass that meets a new record
also writes a snapshot file and the slot's state). An idle slot is moved on once a second
past WAL that held nothing for Relay.

Leaving wal mode, ``relay capture`` takes the leader's lock itself, runs passes until the
slot is empty, then drops it (``switch``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from relay import metrics
from relay.capture import LOCKS
from relay.errors import CaptureError
from relay.pgoutput import (
    UNCHANGED,
    Change,
    Commit,
    Relation,
    Truncate,
    Tuple,
    Value,
    parse,
)
from relay.store import Store

logger = logging.getLogger(__name__)

LOCK = LOCKS["wal"]
# Messages per peek at most (whole transactions: a larger one comes whole).
BATCH = 10_000
# Seconds between two moves of an idle slot past WAL with nothing for Relay.
ADVANCE_IDLE = 1.0
# Bytes of WAL between two running-transactions records the reader writes.
SNAPSHOT_BYTES = 256 << 10
# Seconds a pass may take (a peek decodes from the slot's restart point).
PASS_TIMEOUT = 120.0
# Seconds between two reads of a slot found invalidated or missing.
LOST_RETRY = 5.0
# Seconds `relay capture` waits for a relay process to stop reading the slot.
HANDOVER_TIMEOUT = 30.0
# Past this much retained WAL, `relay check` warns.
RETAINED_WARN = 1 << 30


@dataclass(frozen=True, slots=True)
class Decoded:
    """The changes of a peek, ready for ``relay.wal_record`` (rows as name -> value)."""

    changes: list[tuple[Change, int, int, Relation]]
    last_commit: int | None


def decode(messages: Sequence[tuple[int, bytes]]) -> Decoded:
    """Each change with its LSN, its number among the changes of that LSN, and its relation."""
    relations: dict[int, Relation] = {}
    changes: list[tuple[Change, int, int, Relation]] = []
    last_commit: int | None = None
    previous, part = -1, 0
    for lsn, data in messages:
        if data[:1] == b"B":
            continue  # a transaction's Begin: nothing in it is needed
        message = parse(data)
        if isinstance(message, Relation):
            relations[message.relid] = message
        elif isinstance(message, Change):
            part = part + 1 if lsn == previous else 0
            previous = lsn
            changes.append((message, lsn, part, relations[message.relid]))
        elif isinstance(message, Commit):
            last_commit = message.end_lsn
        elif isinstance(message, Truncate):
            # As in the trigger modes (row triggers do not fire on TRUNCATE): no event.
            logger.debug("TRUNCATE of relations %s is not an event", message.relids)
    return Decoded(changes, last_commit)


def _quoted(value: Value) -> str:
    if value is None or value is UNCHANGED:
        return ""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def row_literal(row: Tuple, at: Sequence[int | None], fallback: Tuple | None = None) -> str:
    """A row literal of a table, straight from a decoded row: ``at`` maps each column of the
    table's row type to its place in the row; each value quoted, nothing for NULL and for a
    column the row lacks (None in ``at``: added since, or generated). An unchanged TOASTed
    value comes from ``fallback`` (the old row)."""
    fields = []
    for i in at:
        if i is None:
            fields.append("")
            continue
        value = row[i]
        if value is UNCHANGED:  # TOASTed and unchanged: the old row has it
            value = fallback[i] if fallback is not None else None
        fields.append(_quoted(value))
    return "(" + ",".join(fields) + ")"


class WalReader:
    """The wal leader's pass (``__call__``), keeping when it last moved the slot on.

    ``on_recorded()`` runs as soon as a pass's events are committed, before the slot is moved
    on: its own process's feed need not wait for that (the other processes hear relay_wake).
    """

    def __init__(self, on_recorded: Callable[[], None] = lambda: None) -> None:
        self._on_recorded = on_recorded
        # The columns of each table's row type, by the relation as the slot last described it
        # (a new description, after DDL, reads them again).
        self._columns: dict[Relation, list[str]] = {}
        self._advanced: int = 0
        self._advanced_at = 0.0
        self._lost_until = 0.0
        self.lost: str | None = None  # why the slot cannot be read, while it cannot
        self.more = False  # the last pass stopped at its limit
        self._snapshots: bool | None = None  # whether it may write running-transactions records
        self._snapshot_lsn = 0

    async def __call__(self, store: Store) -> tuple[int, bool]:
        if time.monotonic() < self._lost_until:
            return 0, False
        try:
            count = await self.read(store)
        except (asyncpg.ObjectNotInPrerequisiteStateError, asyncpg.UndefinedObjectError) as exc:
            self._slot_lost(exc)
            return 0, False
        if self.lost is not None:
            logger.info("the replication slot relay is readable again")
            self.lost = None
            metrics.wal_slot_lost.set(0)
        return count, self.more

    def _slot_lost(self, exc: asyncpg.PostgresError) -> None:
        self._lost_until = time.monotonic() + LOST_RETRY
        reason = " ".join(str(exc).split())
        if self.lost != reason:
            logger.error(
                "capture mode wal cannot read the replication slot relay (%s): changes the slot no "
                "longer holds are not recorded; run `relay capture poll` then `relay capture wal` "
                "to capture again from now",
                reason,
            )
        self.lost = reason
        metrics.wal_slot_lost.set(1)

    async def read(self, store: Store, limit: int = BATCH) -> int:
        """One pass; how many events it sequenced."""
        upto, messages = await store.wal_peek(limit, within=PASS_TIMEOUT)
        self.more = len(messages) >= limit
        decoded = decode(messages)
        count = 0
        if decoded.changes:
            count = await self.record(store, decoded)
            if count:
                self._on_recorded()
        # Everything committed before ``upto`` came, unless the peek stopped at ``limit``.
        target = decoded.last_commit if self.more else upto
        idle = time.monotonic() - self._advanced_at >= ADVANCE_IDLE
        if target is not None and target > self._advanced and (decoded.changes or idle):
            await store.wal_advance(target, within=PASS_TIMEOUT)
            self._advanced, self._advanced_at = target, time.monotonic()
        if upto - self._snapshot_lsn >= SNAPSHOT_BYTES:
            await self._log_snapshot(store)
            self._snapshot_lsn = upto
        if count:
            metrics.wal_events.inc(count)
        return count

    async def _log_snapshot(self, store: Store) -> None:
        """A running-transactions record, so the slot's restart point can follow (see above)."""
        if self._snapshots is None:
            self._snapshots = await store.wal_snapshot_allowed()
            if not self._snapshots:
                logger.info(
                    "this role may not run pg_log_standby_snapshot(): on a busy server each read of "
                    "the slot decodes up to 15 s of WAL again (GRANT EXECUTE on it to avoid that)"
                )
        if self._snapshots:
            await store.wal_log_snapshot()

    async def record(self, store: Store, decoded: Decoded) -> int:
        """Record decoded changes as events (without moving the slot on); how many it sequenced."""
        unknown = {r for _, _, _, r in decoded.changes} - self._columns.keys()
        if unknown:
            current = await store.wal_columns(sorted({r.relid for r in unknown}))
            self._columns.update({r: current[r.relid] for r in unknown if r.relid in current})
        relids, ops, news, olds, lsns, parts = [], [], [], [], [], []
        places: dict[Relation, list[int | None]] = {}
        for change, lsn, part, relation in decoded.changes:
            at = places.get(relation)
            if at is None:
                table = self._columns.get(relation)
                if table is None:
                    continue  # the table was dropped since
                sent = {column: i for i, column in enumerate(relation.columns)}
                at = places[relation] = [sent.get(column) for column in table]
            old = change.old
            relids.append(change.relid)
            ops.append(change.op)
            news.append(None if change.new is None else row_literal(change.new, at, old))
            olds.append(None if old is None else row_literal(old, at))
            lsns.append(lsn)
            parts.append(part)
        try:
            return await store.wal_record(relids, ops, news, olds, lsns, parts, within=PASS_TIMEOUT)
        except asyncpg.PostgresError:
            self._columns.clear()  # a row type changed without a new description (a generated column)
            raise


async def switch(store: Store, session: Store, mode: str) -> str:
    """``relay capture MODE``: switch, with what wal mode needs on the way in and out;
    return the mode before. ``session`` is a connection to the listen URL (session-bound:
    the reader's lock); CaptureError says why not, in one line."""
    if mode == "wal":
        reason = await store.wal_refusal()
        if reason is not None:
            raise CaptureError(reason)
        await store.wal_prepare()
        try:
            return await store.set_capture(mode)
        except CaptureError:
            if await store.capture_mode() != "wal":
                await store.wal_drop_slot()  # a slot nobody reads would keep WAL for ever
            raise
    before = await store.set_capture(mode)
    if before == "wal" or await store.wal_slot() is not None:
        await drain(session)
        await store.wal_drop_slot()
    return before


async def drain(session: Store) -> int:
    """Record what the slot still holds (as the reader, under its lock); how many events."""
    if await session.wal_slot() is None:
        return 0
    try:
        async with session.leader_lock(LOCK, within=HANDOVER_TIMEOUT):
            reader, total = WalReader(), 0
            while True:
                total += await reader.read(session)
                if not reader.more:
                    return total
    except TimeoutError:
        pid = await session.leader_backend(LOCK)
        raise CaptureError(
            f"a relay process (backend pid {pid}) still reads the replication slot after "
            f"{HANDOVER_TIMEOUT:g} s: run `relay capture` again once it has followed the switch"
        ) from None
    except (asyncpg.ObjectNotInPrerequisiteStateError, asyncpg.UndefinedObjectError) as exc:
        logger.error(
            "the replication slot relay could not be read (%s): changes it no longer held were not recorded",
            " ".join(str(exc).split()),
        )
        return 0
