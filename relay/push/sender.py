"""Web Push (RFC 8030/8291/8292): encrypt with pywebpush, sign with py-vapid, POST with httpx."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
import httpx
from py_vapid import VapidException
from pywebpush import WebPusher, WebPushException

from relay.destinations import Delivery, Outcome
from relay.egress import EgressRefused
from relay.events import Event
from relay.push.notification import render, topic_for, urgency_for
from relay.push.vapid import VapidSigner, origin_of
from relay.retry import parse_retry_after, retrying
from relay.store import Store

logger = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600  # seconds a push service keeps a message for an offline device
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
    _gates: dict[str, asyncio.Semaphore] = field(default_factory=dict, repr=False)

    def _gate(self, endpoint: str) -> asyncio.Semaphore:
        origin = origin_of(endpoint)
        gate = self._gates.get(origin)
        if gate is None:
            gate = self._gates[origin] = asyncio.Semaphore(self.per_origin)
        return gate

    def encrypt(self, subscription: Subscription, channel: str, data: Mapping[str, Any]) -> bytes:
        """The notification for ``subscription``, encrypted (``aes128gcm``, RFC 8291)."""
        plaintext = render(channel, data)
        encoded = WebPusher(subscription.info).encode(plaintext, content_encoding="aes128gcm")
        body: bytes = encoded["body"]
        return body

    def prepare(self, subscription: Subscription, channel: str, data: Mapping[str, Any]) -> httpx.Request:
        """Encrypt and sign: the request to POST to the subscription's endpoint."""
        body = self.encrypt(subscription, channel, data)
        headers = {
            "Authorization": self.signer.header_for(subscription.endpoint),
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
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.client.send(request)
        except TimeoutError:
            return Outcome("retry", None, f"push service did not answer within {self.timeout:g} s")
        except EgressRefused as exc:  # the destination resolves to a blocked address: retried
            return Outcome("retry", None, str(exc))
        except httpx.HTTPError as exc:
            return Outcome("retry", None, f"{type(exc).__name__}: {exc}")
        return outcome_for(response)


class WebPushDestination:
    """The ``push`` destination: one delivery per live subscription of the event's merchant."""

    kind: ClassVar[str] = "push"

    def __init__(self, store: Store, sender: WebPushSender) -> None:
        self._store = store
        self.sender = sender

    async def send(self, delivery: Delivery, event: Event) -> Outcome:
        log = {**delivery.log, "subscription_id": delivery.destination_id}
        row = await self._store.subscription(delivery.destination_id)
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
            logger.warning("push refused permanently: %s", outcome.detail, extra=log)
        elif outcome.kind != "success":
            logger.info("push %s: %s", outcome.kind, outcome.detail, extra=log)
        success = outcome.kind == "success"
        # A steady stream of successes would rewrite the same row on every send: record
        # a success only when it changes something (a failure streak ends) or at most
        # once a minute (last_success_at is then accurate to the minute).
        if not (success and row["failure_count"] == 0 and row["recent_success"]):
            await self._record(subscription.id, success)
        return outcome

    async def gone(self, delivery: Delivery, outcome: Outcome) -> None:
        subscription_id = delivery.destination_id
        logger.info(
            "push subscription %s gone (%s)",
            subscription_id,
            outcome.detail,
            extra={**delivery.log, "subscription_id": subscription_id},
        )
        await retrying(
            lambda: self._store.subscription_gone(subscription_id, delivery.id),
            what="marking a push subscription gone",
        )

    async def _record(self, subscription_id: int, success: bool) -> None:
        """Subscription bookkeeping after a send; never raises, since the push went out and
        an error here must not make the dispatcher think it did not (a duplicate send)."""
        try:
            await retrying(
                lambda: self._store.subscription_sent(subscription_id, success),
                what="recording a push attempt",
            )
        except asyncpg.PostgresError as exc:
            logger.warning(
                "could not record push attempt on subscription %s: %s",
                subscription_id,
                exc,
                extra={"destination": self.kind, "subscription_id": subscription_id},
            )
