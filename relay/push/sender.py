"""Web Push (RFC 8030/8291/8292): encrypt with pywebpush, sign with py-vapid, POST with the
shared SSRF-guarded aiohttp session (``relay.egress.build_client``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import aiohttp
import asyncpg
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
LOADED_SECONDS = 2.0  # a subscription read with its batch is used by sends starting within this
RECENT_SUCCESS = 60.0  # seconds a recorded success stands for the next ones (last_success_at's accuracy)


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


@dataclass(frozen=True, slots=True)
class PushRequest:
    """An encrypted, signed notification, ready to POST."""

    url: str
    body: bytes
    headers: dict[str, str]


def outcome_for(status: int, headers: Mapping[str, str], text: str = "") -> Outcome:
    """The push service's answer, decided in one place (DESIGN.md "Web Push")."""
    if 200 <= status < 300:
        return Outcome.success(status)
    reason = text.strip()[:300]
    detail = f"push service answered {status}" + (f": {reason}" if reason else "")
    if status in (404, 410):
        return Outcome("gone", status, detail)
    if status in _RETRY_STATUSES or status >= 500:
        return Outcome("retry", status, detail, parse_retry_after(headers.get("retry-after")))
    return Outcome("permanent", status, detail)  # 400, 403, 413 and anything unexpected


@dataclass
class WebPushSender:
    """Sends one notification to one subscription; knows nothing of the database."""

    signer: VapidSigner
    client: aiohttp.ClientSession
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

    def prepare(self, subscription: Subscription, channel: str, data: Mapping[str, Any]) -> PushRequest:
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
        return PushRequest(subscription.endpoint, body, headers)

    async def send(self, subscription: Subscription, channel: str, data: Mapping[str, Any]) -> Outcome:
        try:
            request = self.prepare(subscription, channel, data)
        except (WebPushException, VapidException, ValueError) as exc:  # a row no browser made
            return Outcome("permanent", None, f"cannot encrypt or sign for this subscription: {exc}")
        async with self._gate(subscription.endpoint):
            return await self._post(request)

    async def _post(self, request: PushRequest) -> Outcome:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.post(
                    request.url,
                    data=request.body,
                    headers=request.headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as response:
                    text = ""
                    if not 200 <= response.status < 300:
                        text = (await response.content.read(2048)).decode("utf-8", "replace")
                    return outcome_for(response.status, response.headers, text)
        except TimeoutError:
            return Outcome("retry", None, f"push service did not answer within {self.timeout:g} s")
        except EgressRefused as exc:  # the destination resolves to a blocked address: retried
            return Outcome("retry", None, str(exc))
        except (aiohttp.ClientError, ValueError) as exc:
            return Outcome("retry", None, f"{type(exc).__name__}: {exc}")


class WebPushDestination:
    """The ``push`` destination: one delivery per live subscription of the event's merchant."""

    kind: ClassVar[str] = "push"

    def __init__(self, store: Store, sender: WebPushSender) -> None:
        self._store = store
        self.sender = sender
        # Rows read for a claimed batch (with when), used by its sends (a batch often holds
        # several events for one subscription); dropped when the subscription is gone.
        self._loaded: dict[int, tuple[float, asyncpg.Record | None]] = {}
        # The last attempt this process recorded per subscription: (success, when).
        self._recorded: dict[int, tuple[bool, float]] = {}

    async def load(self, deliveries: Sequence[Delivery]) -> None:
        """Read the subscriptions of a claimed batch in one query."""
        ids = sorted({d.destination_id for d in deliveries})
        rows = {row["id"]: row for row in await self._store.subscriptions(ids)}
        if len(self._loaded) > 10_000:
            self._loaded.clear()
        now = time.monotonic()
        for subscription_id in ids:
            self._loaded[subscription_id] = (now, rows.get(subscription_id))

    async def send(self, delivery: Delivery, event: Event) -> Outcome:
        log = {**delivery.log, "subscription_id": delivery.destination_id}
        loaded = self._loaded.get(delivery.destination_id)
        if loaded is not None and loaded[0] > time.monotonic() - LOADED_SECONDS:
            row = loaded[1]
        else:
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
        if self._needs_record(row, success):
            await self._record(subscription.id, success)
        return outcome

    def _needs_record(self, row: asyncpg.Record, success: bool) -> bool:
        """A steady stream of successes would rewrite the same row on every send: record a
        success only when it changes something (a failure streak ends) or at most once a
        minute (last_success_at is then accurate to the minute). What this process recorded
        last is newer than a row read with a batch."""
        if not success:
            return True
        recorded = self._recorded.get(row["id"])
        if recorded is not None:
            last_success, at = recorded
            return not (last_success and time.monotonic() - at < RECENT_SUCCESS)
        return not (row["failure_count"] == 0 and row["recent_success"])

    async def gone(self, delivery: Delivery, outcome: Outcome) -> None:
        subscription_id = delivery.destination_id
        logger.info(
            "push subscription %s gone (%s)",
            subscription_id,
            outcome.detail,
            extra={**delivery.log, "subscription_id": subscription_id},
        )
        self._loaded.pop(subscription_id, None)  # the next sends read it again (and stop)
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
            if len(self._recorded) > 10_000:
                self._recorded.clear()
            self._recorded[subscription_id] = (success, time.monotonic())
        except asyncpg.PostgresError as exc:
            logger.warning(
                "could not record push attempt on subscription %s: %s",
                subscription_id,
                exc,
                extra={"destination": self.kind, "subscription_id": subscription_id},
            )
