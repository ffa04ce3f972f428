"""Web Push (RFC 8030/8291/8292): encrypt with pywebpush, sign with py-vapid, POST with httpx."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
import httpx
from py_vapid import VapidException
from pywebpush import WebPusher, WebPushException

from relay.channels.base import Delivery, Outcome
from relay.channels.notification import render, topic_for, urgency_for
from relay.config import Settings
from relay.db import q, retrying
from relay.errors import PermanentError, RelayError
from relay.events import Event
from relay.vapid import VapidSigner, origin_of

logger = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600  # seconds a push service keeps a message for an offline device
MAX_RETRY_AFTER = 24 * 3600.0
PER_ORIGIN = 64
SEND_TIMEOUT = 15.0  # seconds a push service has to answer, however it trickles
_RETRY_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class Subscription:
    """What sending needs of a ``relay.push_subscriptions`` row."""

    id: int
    endpoint: str
    p256dh: str
    auth: str

    @property
    def info(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


@dataclass
class SendCosts:
    """Cumulative seconds spent per part of a send, for the benchmark and for tuning."""

    sends: int = 0
    encrypt: float = 0.0
    sign: float = 0.0
    http: float = 0.0
    signatures: int = 0

    def per_send_ms(self) -> dict[str, float]:
        n = max(self.sends, 1)
        return {
            "encrypt": 1000 * self.encrypt / n,
            "sign": 1000 * self.sign / n,
            "http": 1000 * self.http / n,
        }


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or HTTP-date), capped at 24 h."""
    if not value:
        return None
    value = value.strip()
    seconds: float
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def outcome_for(response: httpx.Response) -> Outcome:
    """The push service's answer, decided in one place (DESIGN.md "Web Push")."""
    status = response.status_code
    if 200 <= status < 300:
        return Outcome.success(status)
    reason = response.text.strip()[:300]
    detail = f"push service answered {status}" + (f": {reason}" if reason else "")
    if status in (404, 410):
        return Outcome("gone", status, detail)
    if status in _RETRY_STATUSES or status >= 500:
        return Outcome("retry", status, detail, parse_retry_after(response.headers.get("retry-after")))
    return Outcome("permanent", status, detail)  # 400, 403, 413 and anything unexpected


@dataclass
class WebPushSender:
    """Sends one notification to one subscription; knows nothing of the database."""

    signer: VapidSigner
    client: httpx.AsyncClient
    ttl: int = DEFAULT_TTL
    # Requests in flight per push service and process: enough to hide a push service's
    # round trip (64 / 50 ms = 1280/s), few enough not to flood it or the connection pool.
    per_origin: int = PER_ORIGIN
    timeout: float = SEND_TIMEOUT
    costs: SendCosts = field(default_factory=SendCosts)
    _gates: dict[str, asyncio.Semaphore] = field(default_factory=dict, repr=False)

    def _gate(self, endpoint: str) -> asyncio.Semaphore:
        origin = origin_of(endpoint)
        gate = self._gates.get(origin)
        if gate is None:
            gate = self._gates[origin] = asyncio.Semaphore(self.per_origin)
        return gate

    def prepare(self, subscription: Subscription, channel: str, data: Mapping[str, Any]) -> httpx.Request:
        """Encrypt and sign: the request to POST to the subscription's endpoint."""
        started = time.perf_counter()
        plaintext = render(channel, data)
        body = WebPusher(subscription.info).encode(plaintext, content_encoding="aes128gcm")["body"]
        encrypted = time.perf_counter()
        before = self.signer.signatures
        authorization = self.signer.header_for(subscription.endpoint)
        signed = time.perf_counter()
        self.costs.encrypt += encrypted - started
        self.costs.sign += signed - encrypted
        self.costs.signatures += self.signer.signatures - before
        headers = {
            "Authorization": authorization,
            "TTL": str(self.ttl),
            "Urgency": urgency_for(channel),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        booking_id = data.get("id")
        if isinstance(booking_id, str) and booking_id:
            headers["Topic"] = topic_for(booking_id)
        return self.client.build_request("POST", subscription.endpoint, content=body, headers=headers)

    async def send(self, subscription: Subscription, channel: str, data: Mapping[str, Any]) -> Outcome:
        try:
            request = self.prepare(subscription, channel, data)
        except (WebPushException, VapidException, ValueError) as exc:  # a row no browser made
            return Outcome("permanent", None, f"cannot encrypt or sign for this subscription: {exc}")
        async with self._gate(subscription.endpoint):
            return await self._post(request)

    async def _post(self, request: httpx.Request) -> Outcome:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.client.send(request)
        except TimeoutError:
            return Outcome("retry", None, f"push service did not answer within {self.timeout:g} s")
        except PermanentError as exc:
            return Outcome("permanent", None, str(exc))
        except RelayError as exc:  # e.g. the egress guard refused the destination: retried
            return Outcome("retry", None, str(exc), getattr(exc, "retry_after", None))
        except httpx.HTTPError as exc:
            return Outcome("retry", None, f"{type(exc).__name__}: {exc}")
        finally:
            self.costs.http += time.perf_counter() - started
            self.costs.sends += 1
        return outcome_for(response)


class WebPushChannel:
    """The ``push`` channel: one delivery per live subscription of the event's merchant."""

    name: ClassVar[str] = "push"
    plan_sql: ClassVar[str] = q("push_plan")

    def __init__(self, settings: Settings, pool: asyncpg.Pool, client: httpx.AsyncClient) -> None:
        # Raises ConfigError (one line naming the variable) for a malformed key or subject.
        self.signer = VapidSigner.from_settings(settings)
        self.pool = pool
        self.sender = WebPushSender(self.signer, client)

    @property
    def costs(self) -> SendCosts:
        return self.sender.costs

    async def send(self, delivery: Delivery, event: Event) -> Outcome:
        extra = {
            "event_id": event.id,
            "channel": self.name,
            "merchant_id": event.merchant_id,
            "delivery_id": delivery.id,
        }
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(q("push_subscription"), delivery.target_id)
        if row is None:
            return Outcome("permanent", None, "subscription removed")
        if row["gone_since"] is not None:
            return Outcome("permanent", None, "subscription gone")
        if row["expiration_time"] is not None and row["expiration_time"] <= datetime.now(UTC):
            return Outcome("permanent", None, "subscription expired")
        if row["merchant_id"] != event.merchant_id:  # re-subscribed under another merchant
            return Outcome("permanent", None, "subscription belongs to another merchant now")
        subscription = Subscription(row["id"], row["endpoint"], row["p256dh"], row["auth"])
        outcome = await self.sender.send(subscription, event.channel, event.data)
        if outcome.kind == "permanent":
            logger.warning("push refused permanently: %s", outcome.detail, extra=extra)
        elif outcome.kind != "success":
            logger.info("push %s: %s", outcome.kind, outcome.detail, extra=extra)
        success = outcome.kind == "success"
        # A steady stream of successes would rewrite the same row on every send: record
        # a success only when it changes something (a failure streak ends) or at most
        # once a minute (last_success_at is then accurate to the minute).
        if not (success and row["failure_count"] == 0 and row["recent_success"]):
            await self._record(subscription.id, success)
        return outcome

    async def target_gone(self, delivery: Delivery, outcome: Outcome) -> None:
        logger.info(
            "push subscription %s gone (%s)",
            delivery.target_id,
            outcome.detail,
            extra={"channel": self.name, "merchant_id": delivery.merchant_id, "delivery_id": delivery.id},
        )

        async def mark() -> None:
            async with self.pool.acquire() as conn:
                await conn.execute(q("push_subscription_gone"), delivery.target_id, delivery.id)

        await retrying(mark, what="marking a push subscription gone")

    async def _record(self, subscription_id: int, success: bool) -> None:
        """Subscription bookkeeping after a send; never raises, since the push went out and
        an error here must not make the dispatcher think it did not (a duplicate send)."""

        async def write() -> None:
            async with self.pool.acquire() as conn:
                await conn.execute(q("push_subscription_sent"), subscription_id, success)

        try:
            await retrying(write, what="recording a push attempt")
        except asyncpg.PostgresError as exc:
            logger.warning(
                "could not record push attempt on subscription %s: %s",
                subscription_id,
                exc,
                extra={"channel": self.name},
            )


async def prune_push_subscriptions(pool: asyncpg.Pool) -> int:
    """Delete subscriptions that are gone or expired, cancelling their pending deliveries."""
    async with pool.acquire() as conn:
        count: int = await conn.fetchval(q("push_prune"))
    if count:
        logger.info("pruned %d push subscriptions", count, extra={"channel": "push"})
    return count
