"""Push subscriptions: what a browser may register, and the pruning of dead ones."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from relay.config import IPNetwork, Settings
from relay.egress import EgressRefused, Resolver, literal_address, lookup, validate_url
from relay.errors import RelayError
from relay.events import EventFilter, EventFilterError, parse_event_filter
from relay.push.vapid import b64url_decode
from relay.store import Store

logger = logging.getLogger(__name__)

MAX_ENDPOINT = 2048
MAX_EXPIRATION_MS = 253402300799000  # 9999-12-31, as PushSubscription.expirationTime (ms)


class SubscriptionKeys(BaseModel):
    p256dh: str
    auth: str

    @field_validator("p256dh")
    @classmethod
    def _p256dh(cls, value: str) -> str:
        try:
            raw = b64url_decode(value)
        except ValueError:
            raise ValueError("must be base64url") from None
        if len(raw) != 65 or raw[0] != 4:
            raise ValueError(f"must be a 65-byte uncompressed P-256 point (got {len(raw)} bytes)")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            raise ValueError("is not a point on the P-256 curve") from None
        return value

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: str) -> str:
        try:
            raw = b64url_decode(value)
        except ValueError:
            raise ValueError("must be base64url") from None
        if len(raw) != 16:
            raise ValueError(f"must be 16 bytes (got {len(raw)})")
        return value


class SubscriptionIn(BaseModel):
    """A browser ``PushSubscription.toJSON()`` plus an optional ``channels`` filter."""

    model_config = ConfigDict(extra="ignore")

    endpoint: Annotated[str, Field(max_length=MAX_ENDPOINT)]
    keys: SubscriptionKeys
    expirationTime: Annotated[float, Field(ge=0, le=MAX_EXPIRATION_MS)] | None = None
    channels: list[EventFilter] | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an https URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials")
        try:
            parts.port  # noqa: B018 - raises for a malformed port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[str] | None) -> list[str] | None:
        """The shape only: the names are checked against the attached sources (``known``)."""
        if value is not None and not value:
            raise ValueError("must name at least one channel (omit it for all)")
        return value

    def channel_filter(self, known: Sequence[str]) -> list[str] | None:
        """``channels`` as stored: event names of ``known`` and ``NAME_*`` wildcards.
        Raises ValueError naming what is unknown."""
        try:
            return parse_event_filter(self.channels, known)
        except EventFilterError as exc:
            raise ValueError(str(exc).replace("event types", "channels")) from None

    @property
    def expires_at(self) -> datetime | None:
        if self.expirationTime is None:
            return None
        return datetime.fromtimestamp(self.expirationTime / 1000, UTC)


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    endpoint: Annotated[str, Field(min_length=1, max_length=MAX_ENDPOINT)]

    @field_validator("endpoint")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


async def endpoint_problem(
    endpoint: str, allow: Sequence[IPNetwork], resolve: Resolver, dns_timeout: float
) -> str | None:
    """Why the egress guard refuses an endpoint: a literal non-public address outside
    RELAY_EGRESS_ALLOW, or plain http to a host that does not resolve inside it. A host
    name is looked up with ``resolve``, abandoned after ``dns_timeout`` seconds."""
    try:
        validate_url(endpoint, allow)
    except EgressRefused as exc:
        return str(exc)
    parts = urlsplit(endpoint)
    if parts.scheme == "https":
        return None
    refused = "must be an https URL (http only to hosts inside RELAY_EGRESS_ALLOW)"
    host = parts.hostname or ""
    literal = literal_address(host)
    if literal is None and (host == "localhost" or host.endswith(".localhost")):
        literal = ipaddress.ip_address("127.0.0.1")  # RFC 6761, as validate_url
    if literal is not None:
        addresses = [literal]
    else:
        try:
            resolved = await lookup(resolve, host, parts.port or 80, dns_timeout)
        except OSError:
            return refused + "; the host does not resolve"
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolved]
    if not addresses or not all(any(a in net for net in allow) for a in addresses):
        return refused
    return None


class LimitReached(RelayError):
    """A tenant already has as many of something as its limit allows."""


async def store_subscription(
    store: Store, settings: Settings, merchant_id: str, user_id: str, sub: SubscriptionIn
) -> tuple[int, bool]:
    """Create or update the merchant's row for this endpoint, within the limits; return its
    id and whether it is new.

    The row is the merchant's alone: another merchant's post of the same endpoint gets a
    row of its own. Under the same merchant, a post by another user moves the row to that
    user (the browser is now theirs). Live subscriptions count against
    ``push_subscriptions_per_merchant`` and, per user, ``push_subscriptions_per_user``;
    re-posting one already counted adds nothing. Raises :class:`LimitReached`.
    """
    per_merchant, per_user = settings.push_subscriptions_per_merchant, settings.push_subscriptions_per_user
    stored = await store.upsert_subscription(
        merchant_id,
        user_id,
        sub.endpoint,
        sub.keys.p256dh,
        sub.keys.auth,
        sub.expires_at,
        sub.channels,
        per_merchant=per_merchant,
        per_user=per_user,
    )
    if stored == "merchant":
        raise LimitReached(
            f"this merchant already has {per_merchant} push subscriptions "
            "(RELAY_PUSH_SUBSCRIPTIONS_PER_MERCHANT); remove one first"
        )
    if stored == "user":
        raise LimitReached(
            f"this user already has {per_user} push subscriptions for this merchant "
            "(RELAY_PUSH_SUBSCRIPTIONS_PER_USER); remove one first"
        )
    return stored


async def prune_subscriptions(store: Store) -> int:
    """Delete subscriptions that are gone or expired, cancelling their pending deliveries
    (scheduler job)."""
    count = await store.prune_subscriptions()
    if count:
        logger.info("pruned %d push subscriptions", count, extra={"destination": "push"})
    return count
