"""Presence: which users of each merchant are online, across every relay process.

Each process counts its own live connections per (merchant, user) at once, in memory,
and tells its local rooms when a user's first connection opens (``presence_joined``) or
its last one closes (``presence_left``). The counts reach the other processes through
PostgreSQL, the only shared state, in batches:

* every ``BATCH_INTERVAL`` at most, the counts that changed are written in one statement
  (``relay.presence``, unlogged) that also NOTIFYs ``relay_presence`` with the merchants
  they belong to;
* every process LISTENs on that channel (on the listener's connection), reads the other
  processes' counts of the merchants named that have connections here (one query per
  batch), and tells its rooms whose presence that changed;
* each process holds a lease (``relay.presence_processes``) that it renews every
  ``lease / 5`` seconds; any process removes the counts of a process whose lease ran out
  (it died without leaving) and notifies, so its users leave within ``lease`` plus a
  heartbeat. A restarted process has a new id: the old one's lease runs out likewise.

So connecting 1,000 clients at once costs a few statements per batch, not one per client,
and nothing is added to the path of events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay.aio import wait_any
from relay.auth import TokenVerifier
from relay.db import TRANSIENT_ERRORS
from relay.http_auth import authenticate, error
from relay.live.hub import Hub, Sink
from relay.retry import FailureStreak
from relay.store import Store

logger = logging.getLogger(__name__)

CHANNEL = "relay_presence"
BATCH_INTERVAL = 0.1  # seconds over which changes are gathered into one write and one read
LOAD_WAIT = 2.0  # how long a first connection of a merchant waits for the other processes' counts
MAX_NOTICE = 7000  # bytes of one NOTIFY payload (PostgreSQL's limit is 8000)
DB_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, asyncpg.PostgresError)

Counts = dict[str, int]


class OnlineUser(BaseModel):
    userId: str
    connections: int = Field(ge=1, description="Its open /ws and Socket.IO connections, on every process.")


class Online(BaseModel):
    """``GET /presence``: the merchant's users with a live connection on any relay process."""

    online: list[OnlineUser] = Field(description="Sorted by userId.")


def notices(sender: str, merchants: Iterable[str]) -> list[str]:
    """NOTIFY payloads naming ``merchants``, each under ``MAX_NOTICE`` bytes. A merchant id
    too long for one is sent as ``"all"``: every process then reads all it tracks."""
    out: list[str] = []
    batch: list[str] = []
    size = 0
    for merchant in sorted(merchants):
        cost = len(json.dumps(merchant).encode()) + 1
        if cost > MAX_NOTICE - 100:
            out.append(json.dumps({"from": sender, "all": True}))
            continue
        if size + cost > MAX_NOTICE - 100 and batch:
            out.append(json.dumps({"from": sender, "merchants": batch}))
            batch, size = [], 0
        batch.append(merchant)
        size += cost
    if batch:
        out.append(json.dumps({"from": sender, "merchants": batch}))
    return out


class Presence:
    """This process's view of presence, for the merchants it has connections of."""

    def __init__(self, store: Store, hub: Hub, *, lease: float = 10.0, slot: str | None = None) -> None:
        """``slot``: where this process serves (host name and HTTP port), if fixed: starting,
        it removes the counts of an earlier process of the same slot (one that was killed)."""
        self.process_id = uuid.uuid4()
        self._slot = slot
        self._started = False
        self._id = str(self.process_id)
        self._store, self._hub, self._lease = store, hub, lease
        self._local: dict[str, Counts] = {}  # this process's connections
        self._remote: dict[str, Counts] = {}  # the other processes' ones, for merchants tracked here
        self._wanted: dict[str, int] = {}  # connections waiting for a merchant's first read
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._unflushed: set[tuple[str, str]] = set()
        self._stale: set[str] = set()
        self._notices: list[str] = []
        self._wake = asyncio.Event()
        self._answering = False  # the last statement succeeded: worth saying goodbye at shutdown

    # ------------------------------------------------------------------ the transports' interface

    async def joined(self, merchant: str, user: str) -> list[dict[str, Any]]:
        """Count a connection in; return the merchant's presence snapshot (the user included).

        The first connection of a merchant on this process waits (at most ``LOAD_WAIT``) for
        one batched read of the other processes' counts. Every call must be matched by one
        ``left`` (unless it raised or was cancelled, in which case it counted nothing).
        """
        if merchant not in self._remote:
            self._wanted[merchant] = self._wanted.get(merchant, 0) + 1
            try:
                await self._load(merchant)
            finally:
                self._wanted[merchant] -= 1
                if not self._wanted[merchant]:
                    del self._wanted[merchant]
        # From here to the return nothing awaits: the caller marks its sink before any
        # other message can be told to the room.
        before = self._total(merchant, user)
        local = self._local.setdefault(merchant, {})
        local[user] = local.get(user, 0) + 1
        self._changed(merchant, user)
        if before == 0:
            self._hub.tell(merchant, "presence_joined", {"userId": user})
        return self.snapshot(merchant)

    def left(self, merchant: str, user: str) -> None:
        """Count a connection out (its user leaves once its last connection is out)."""
        local = self._local.get(merchant)
        if not local or user not in local:
            return
        local[user] -= 1
        if not local[user]:
            del local[user]
            if not local:
                del self._local[merchant]
        self._changed(merchant, user)
        if self._total(merchant, user) == 0:
            self._hub.tell(merchant, "presence_left", {"userId": user})

    def snapshot(self, merchant: str) -> list[dict[str, Any]]:
        """``[{"userId","connections"}]`` as this process knows them now, sorted by user."""
        counts = dict(self._remote.get(merchant, {}))
        for user, n in self._local.get(merchant, {}).items():
            counts[user] = counts.get(user, 0) + n
        return [{"userId": user, "connections": n} for user, n in sorted(counts.items()) if n > 0]

    async def online(self, merchant: str) -> list[dict[str, Any]]:
        """The merchant's presence read from the database now (``GET /presence``)."""
        counts: Counts = {}
        for _merchant, user, n in await self._store.presence_counts([merchant], self.process_id):
            counts[user] = n
        for user, n in self._local.get(merchant, {}).items():
            counts[user] = counts.get(user, 0) + n
        return [{"userId": user, "connections": n} for user, n in sorted(counts.items())]

    # ------------------------------------------------------------------ the listener's interface

    def notified(self, payload: str) -> None:
        """A ``relay_presence`` notification (the listener's callback: it only enqueues)."""
        self._notices.append(payload)
        self._wake.set()

    def resync(self) -> None:
        """Read every tracked merchant again (after the listener reconnected: notifications
        sent while it was away are lost)."""
        self._stale |= self._remote.keys()
        self._wake.set()

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Batch writes and reads until ``stop``; then remove this process's counts."""
        loop = asyncio.get_running_loop()
        heartbeat = self._lease / 5
        next_beat = 0.0
        failures = FailureStreak("presence: database unavailable", base=0.2, cap=heartbeat)
        try:
            while not stop.is_set():
                try:
                    if loop.time() >= next_beat:
                        await self._beat()
                        next_beat = loop.time() + heartbeat
                    await self._flush()
                    await self._refresh()
                except DB_ERRORS as exc:
                    self._answering = False
                    await failures.pause(exc, stop)
                    continue
                self._answering = True
                failures.reset()
                await wait_any(self._wake, stop, timeout=max(next_beat - loop.time(), 0.0))
                await wait_any(stop, timeout=BATCH_INTERVAL)  # gather what else changes meanwhile
                self._wake.clear()
        finally:
            if self._answering:
                with contextlib.suppress(*DB_ERRORS, TimeoutError):
                    async with asyncio.timeout(2):
                        await self._leave()

    async def _beat(self) -> None:
        """Renew the lease (register again, with every count, if it had run out), and
        remove the processes whose lease ran out."""
        if await self._store.presence_register(self.process_id, self._lease, self._slot):
            if self._started:
                logger.warning("presence: this process's lease had run out; its counts are written again")
            self._unflushed |= {(m, u) for m, users in self._local.items() for u in users}
        # The first time, also the processes that served here before this one.
        slot = None if self._started else self._slot
        gone = await self._store.presence_remove(None, slot, self.process_id)
        self._started = True
        if gone:
            logger.info("presence: removed the connections of relay processes that stopped renewing")
            for notice in notices(self._id, gone):
                await self._store.notify(CHANNEL, notice)
            self._stale |= set(gone) & self._remote.keys()

    async def _flush(self) -> None:
        if not self._unflushed:
            return
        keys, self._unflushed = self._unflushed, set()
        counts = [(m, u, self._local.get(m, {}).get(u, 0)) for m, u in sorted(keys)]
        try:
            await self._store.presence_flush(
                self.process_id, counts, CHANNEL, notices(self._id, {m for m, _, _ in counts})
            )
        except asyncpg.ForeignKeyViolationError:
            self._unflushed |= keys
            await self._beat()  # the lease had run out: register, then write everything again
            self._wake.set()
        except BaseException:
            self._unflushed |= keys
            raise

    async def _refresh(self) -> None:
        self._take_notices()
        for merchant in [m for m in self._remote if m not in self._local and m not in self._wanted]:
            del self._remote[merchant]  # no connection here any more: stop tracking it
        wanted = set(self._loading) | (self._stale & self._remote.keys())
        self._stale.clear()
        if not wanted:
            return
        try:
            rows = await self._store.presence_counts(sorted(wanted), self.process_id)
        except BaseException:
            self._stale |= wanted
            raise
        fresh: dict[str, Counts] = {m: {} for m in wanted}
        for merchant, user, n in rows:
            fresh[merchant][user] = n
        for merchant, counts in fresh.items():
            if merchant in self._remote:
                self._apply(merchant, counts)
            elif merchant in self._wanted:
                self._remote[merchant] = counts
            future = self._loading.pop(merchant, None)
            if future is not None and not future.done():
                future.set_result(None)

    # ------------------------------------------------------------------ helpers

    def _total(self, merchant: str, user: str) -> int:
        return self._local.get(merchant, {}).get(user, 0) + self._remote.get(merchant, {}).get(user, 0)

    def _changed(self, merchant: str, user: str) -> None:
        self._unflushed.add((merchant, user))
        self._wake.set()

    async def _load(self, merchant: str) -> None:
        future = self._loading.get(merchant)
        if future is None:
            future = self._loading[merchant] = asyncio.get_running_loop().create_future()
            self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), LOAD_WAIT)
        if merchant not in self._remote:  # the database did not answer in time: read it later
            self._remote[merchant] = {}
            self._stale.add(merchant)

    def _apply(self, merchant: str, counts: Counts) -> None:
        """Take the other processes' fresh counts; tell the room who joined and who left."""
        before = self._remote.get(merchant, {})
        self._remote[merchant] = counts
        local = self._local.get(merchant, {})
        for user in sorted(before.keys() - counts.keys()):
            if not local.get(user):
                self._hub.tell(merchant, "presence_left", {"userId": user})
        for user in sorted(counts.keys() - before.keys()):
            if not local.get(user):
                self._hub.tell(merchant, "presence_joined", {"userId": user})

    def _take_notices(self) -> None:
        taken, self._notices = self._notices, []
        for payload in taken:
            try:
                notice = json.loads(payload)
                if notice.get("from") == self._id:
                    continue
                if notice.get("all"):
                    self._stale |= self._remote.keys()
                else:
                    self._stale |= {m for m in notice["merchants"] if isinstance(m, str)}
            except (ValueError, TypeError, KeyError, AttributeError):
                logger.warning("presence: malformed notification refused (payload %.200r)", payload)

    async def _leave(self) -> None:
        """At shutdown: remove this process and its counts at once, and say so."""
        gone = await self._store.presence_remove(self.process_id)
        for notice in notices(self._id, gone):
            await self._store.notify(CHANNEL, notice)


# ---------------------------------------------------------------------- for the transports


async def enter(presence: Presence, sink: Sink, user: str) -> dict[str, Any] | None:
    """Count ``sink``'s connection in; the ``presence`` message to send it (before anything
    else told to its room), or None when it closed meanwhile."""
    online = await presence.joined(sink.merchant_id, user)
    if sink.closed:
        presence.left(sink.merchant_id, user)
        return None
    sink.present = user
    return {"online": online}


def leave(presence: Presence, sink: Sink) -> None:
    """Count ``sink``'s connection out, if it was counted in (safe to call twice)."""
    user, sink.present = sink.present, None
    if user is not None:
        presence.left(sink.merchant_id, user)


def routes(presence: Presence, verifier: TokenVerifier | None) -> list[BaseRoute]:
    """``GET /presence``: ``{"online":[{"userId","connections"}]}`` for the token's merchant."""

    async def endpoint(request: Request) -> Response:
        claims = authenticate(request, verifier)
        if isinstance(claims, Response):
            return claims
        try:
            online = await presence.online(claims.merchant_id)
        except DB_ERRORS:
            return error(503, "the database is unavailable; try again")
        return JSONResponse(Online(online=[OnlineUser(**entry) for entry in online]).model_dump())

    return [Route("/presence", endpoint, methods=["GET"])]
