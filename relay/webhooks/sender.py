"""The webhook destination: signed POSTs (``signing``) with the shared SSRF-guarded client.

What a receiver's answer counts as is decided in :func:`outcome_for` alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import ClassVar

import aiohttp
import asyncpg

from relay.destinations import Delivery, Outcome
from relay.egress import EgressRefused
from relay.events import Event
from relay.retry import parse_retry_after, retrying
from relay.store import Store
from relay.webhooks.signing import body_for, signed_headers

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 15.0
BODY_CAP = 4096
CACHE_SECONDS = 1.0
BODIES_KEPT = 4096


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: int
    merchant_id: str
    url: str
    secrets: tuple[str, ...]
    enabled: bool
    failing: bool

    @classmethod
    def from_row(cls, row: asyncpg.Record, now: datetime) -> Endpoint:
        live = [row["secret"]]
        expires = row["previous_secret_expires_at"]
        if row["previous_secret"] and expires is not None and expires > now:
            live.append(row["previous_secret"])
        return cls(
            id=row["id"],
            merchant_id=row["merchant_id"],
            url=row["url"],
            secrets=tuple(live),
            enabled=row["enabled"],
            failing=row["failing_since"] is not None,
        )


def outcome_for(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """The one place that maps a receiver's answer to an outcome."""
    if 200 <= status < 300:
        return Outcome.success(status)
    text = body[:200].decode("utf-8", "replace").strip()
    if status == 410:
        return Outcome("gone", status, "receiver answered 410 Gone")
    if 300 <= status < 400:
        where = headers.get("location", "")
        return Outcome("retry", status, f"redirect to {where[:200]!r} not followed")
    retry_after = parse_retry_after(headers.get("retry-after")) if status in (429, 503) else None
    return Outcome("retry", status, f"HTTP {status}" + (f": {text}" if text else ""), retry_after)


class WebhookDestination:
    """Sends webhook deliveries with the shared (SSRF-guarded) client it is handed."""

    kind: ClassVar[str] = "webhook"

    def __init__(
        self,
        store: Store,
        client: aiohttp.ClientSession,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._timeout = timeout
        self._stop = stop
        self._cache: dict[int, tuple[float, Endpoint | None]] = {}
        self._bodies: dict[int, bytes] = {}  # by event id: every endpoint is sent the same body
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def endpoint(self, endpoint_id: int) -> Endpoint | None:
        """The endpoint, read at most once a second (a disable or rotation applies within 1 s)."""
        cached = self._cache.get(endpoint_id)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await self._store.endpoint(endpoint_id)
        endpoint = Endpoint.from_row(row, datetime.now(UTC)) if row is not None else None
        self._remember(endpoint_id, endpoint, now)
        return endpoint

    def _remember(self, endpoint_id: int, endpoint: Endpoint | None, now: float) -> None:
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[endpoint_id] = (now + CACHE_SECONDS, endpoint)

    async def load(self, deliveries: Sequence[Delivery]) -> None:
        """Read the endpoints of a claimed batch that are not cached, in one query."""
        now = time.monotonic()
        wanted = {
            d.destination_id
            for d in deliveries
            # read again what expires before its send could start
            if (cached := self._cache.get(d.destination_id)) is None or cached[0] <= now + CACHE_SECONDS / 2
        }
        if not wanted:
            return
        rows = await self._store.endpoints_by_id(sorted(wanted))
        found = {row["id"]: Endpoint.from_row(row, datetime.now(UTC)) for row in rows}
        for endpoint_id in wanted:
            self._remember(endpoint_id, found.get(endpoint_id), now)

    async def send(self, delivery: Delivery, event: Event) -> Outcome:
        # A database error here propagates: the dispatcher hands the delivery back
        # without using up an attempt.
        endpoint = await self.endpoint(delivery.destination_id)
        if endpoint is None:
            return Outcome("permanent", None, "endpoint deleted")
        if not endpoint.enabled:
            return Outcome("permanent", None, "endpoint disabled")
        body = self._bodies.get(event.id)
        if body is None:
            if len(self._bodies) >= BODIES_KEPT:
                self._bodies.clear()
            body = self._bodies[event.id] = body_for(event)
        headers = signed_headers(endpoint.secrets, event, body, time.time())
        outcome = await self._post(endpoint, headers, body)
        await self._track_streak(endpoint, outcome)
        return outcome

    async def _post(self, endpoint: Endpoint, headers: dict[str, str], body: bytes) -> Outcome:
        try:
            async with asyncio.timeout(self._timeout):
                async with self._client.post(
                    endpoint.url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._client_timeout,
                ) as response:
                    received = bytearray()
                    while len(received) < BODY_CAP:
                        chunk = await response.content.read(BODY_CAP - len(received))
                        if not chunk:
                            break
                        received += chunk
                    return outcome_for(response.status, response.headers, bytes(received))
        except EgressRefused as exc:
            return Outcome("retry", None, f"refused: {exc}")
        except TimeoutError:
            return Outcome("retry", None, f"timed out after {self._timeout:g} s")
        except (aiohttp.ClientError, ValueError) as exc:
            return Outcome("retry", None, f"{type(exc).__name__}: {exc}"[:300])

    async def _track_streak(self, endpoint: Endpoint, outcome: Outcome) -> None:
        """Keep ``failing_since``: set at the first failure of a streak, cleared by a success."""
        failed = outcome.kind != "success"
        if failed == endpoint.failing:
            return
        try:
            await retrying(
                lambda: self._store.mark_failing(endpoint.id, failed),
                what="recording the endpoint's failure streak",
                stop=self._stop,
            )
        except (asyncpg.PostgresError, OSError) as exc:
            logger.warning(
                "cannot record endpoint %s streak: %s", endpoint.id, exc, extra={"endpoint_id": endpoint.id}
            )
            return
        cached = self._cache.get(endpoint.id)
        if cached is not None and cached[1] is not None:
            self._cache[endpoint.id] = (cached[0], replace(cached[1], failing=failed))

    async def gone(self, delivery: Delivery, outcome: Outcome) -> None:
        reason = f"receiver answered {outcome.status} Gone" if outcome.status else "receiver is gone"
        endpoint_id = delivery.destination_id
        disabled = await retrying(
            lambda: self._store.disable_endpoint(endpoint_id, reason),
            what="disabling a gone endpoint",
            stop=self._stop,
        )
        if disabled:
            logger.warning(
                "webhook endpoint %s disabled: %s",
                endpoint_id,
                reason,
                extra={**delivery.log, "endpoint_id": endpoint_id},
            )
        self._cache.pop(endpoint_id, None)
