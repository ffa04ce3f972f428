"""Sources, capture modes, the leader lock of poll and wal mode, and wal mode's slot."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import asyncpg

from relay.errors import CaptureError, SourceError
from relay.events import Source
from relay.queries import Queries, q


class CaptureQueries(Queries):
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
