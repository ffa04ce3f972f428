"""HTTP routes for Web Push: the VAPID public key, subscriptions, and the browser scripts."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import asyncpg
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay.config import IPNetwork, Settings
from relay.db import TRANSIENT_ERRORS, q
from relay.egress import EgressRefused, Resolver, literal_address, lookup, validate_url
from relay.errors import ConfigError
from relay.events import CHANNELS
from relay.http_auth import MAX_BODY, authenticate, error, read_json
from relay.vapid import VapidSigner, b64url_decode

if TYPE_CHECKING:
    from relay.app import Relay

logger = logging.getLogger(__name__)

PUSH_OFF = "Web Push is off: set RELAY_VAPID_PRIVATE_KEY and RELAY_VAPID_SUBJECT (see `relay vapid-keys`)"
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
    channels: list[str] | None = None

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
        if value is None:
            return None
        unknown = [c for c in value if c not in CHANNELS]
        if unknown:
            raise ValueError(f"unknown channel {unknown[0]!r}; expected some of {', '.join(CHANNELS)}")
        if not value:
            raise ValueError("must name at least one channel (omit it for all)")
        return sorted(set(value), key=CHANNELS.index)

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


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    found = []
    for item in exc.errors():
        name = ".".join(str(part) for part in item["loc"]) or "body"
        found.append({"field": name, "message": str(item["msg"]).removeprefix("Value error, ")})
    return found


def invalid(exc: ValidationError) -> JSONResponse:
    """422 naming every bad field: ``{"error": "keys.auth: must be 16 bytes", "errors": [...]}``."""
    errors = _field_errors(exc)
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse({"error": message, "errors": errors}, status_code=422)


async def endpoint_problem(
    endpoint: str, allow: list[IPNetwork], resolve: Resolver, dns_timeout: float
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


class LimitReached(Exception):
    """A tenant already has as many of something as its limit allows."""


async def store_subscription(
    conn: asyncpg.Connection, settings: Settings, merchant_id: str, user_id: str, sub: SubscriptionIn
) -> asyncpg.Record:
    """Create or update the merchant's row for this endpoint, within the limits.

    The row is the merchant's alone: another merchant's post of the same endpoint gets a
    row of its own. Under the same merchant, a post by another user moves the row to that
    user (the browser is now theirs). Live subscriptions count against
    ``push_subscriptions_per_merchant`` and, per user, ``push_subscriptions_per_user``;
    re-posting one already counted adds nothing. Raises :class:`LimitReached`.
    """
    async with conn.transaction():
        await conn.execute(q("push_subscription_lock"), merchant_id)
        quota = await conn.fetchrow(q("push_subscription_quota"), merchant_id, user_id, sub.endpoint)
        per_merchant = settings.push_subscriptions_per_merchant
        per_user = settings.push_subscriptions_per_user
        if not quota["endpoint_live"] and quota["merchant_live"] >= per_merchant:
            raise LimitReached(
                f"this merchant already has {per_merchant} push subscriptions "
                "(RELAY_PUSH_SUBSCRIPTIONS_PER_MERCHANT); remove one first"
            )
        if not quota["endpoint_live_for_user"] and quota["user_live"] >= per_user:
            raise LimitReached(
                f"this user already has {per_user} push subscriptions for this merchant "
                "(RELAY_PUSH_SUBSCRIPTIONS_PER_USER); remove one first"
            )
        row: asyncpg.Record = await conn.fetchrow(
            q("push_subscription_upsert"),
            merchant_id,
            user_id,
            sub.endpoint,
            sub.keys.p256dh,
            sub.keys.auth,
            sub.expires_at,
            sub.channels,
        )
        return row


def push_routes(relay: Relay) -> list[BaseRoute]:
    """The Web Push routes of ``build_app``."""
    settings: Settings = relay.settings
    public_key: str | None = None
    if settings.push_enabled:
        try:
            public_key = VapidSigner.from_settings(settings).public_key
        except ConfigError:
            public_key = None  # app start refuses this configuration; the route stays off

    async def vapid_public_key(_request: Request) -> Response:
        if public_key is None:
            return error(503, PUSH_OFF)
        return JSONResponse({"publicKey": public_key})

    async def subscriptions(request: Request) -> Response:
        try:
            return await _subscriptions(request)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            logger.warning("push subscriptions: database error (%s: %s)", type(exc).__name__, exc)
            return error(503, "database unavailable; try again")

    async def _subscriptions(request: Request) -> Response:
        if request.method not in ("POST", "DELETE"):
            response = error(405, "use POST to subscribe or DELETE to unsubscribe")
            response.headers["Allow"] = "POST, DELETE"
            return response
        if public_key is None:
            return error(503, PUSH_OFF)
        claims = authenticate(request, relay.verifier)
        if isinstance(claims, Response):
            return claims
        body = await read_json(request, MAX_BODY)
        if isinstance(body, Response):
            return body
        if request.method == "DELETE":
            try:
                gone = EndpointIn.model_validate(body)
            except ValidationError as exc:
                return invalid(exc)
            async with relay.pool.acquire() as conn:
                await conn.execute(
                    q("push_subscription_delete"), gone.endpoint, claims.merchant_id, claims.user_id
                )
            return Response(status_code=204)
        try:
            sub = SubscriptionIn.model_validate(body)
        except ValidationError as exc:
            return invalid(exc)
        problem = await endpoint_problem(
            sub.endpoint, settings.egress_allow, relay.resolver, settings.dns_timeout
        )
        if problem is not None:
            return JSONResponse(
                {"error": f"endpoint: {problem}", "errors": [{"field": "endpoint", "message": problem}]},
                status_code=422,
            )
        try:
            async with relay.pool.acquire() as conn:
                row = await store_subscription(conn, settings, claims.merchant_id, claims.user_id, sub)
        except LimitReached as exc:
            return error(409, str(exc))
        logger.info(
            "push subscription %s %s",
            row["id"],
            "created" if row["created"] else "updated",
            extra={"channel": "push", "merchant_id": claims.merchant_id},
        )
        return JSONResponse({"id": row["id"], "channels": sub.channels or list(CHANNELS)}, status_code=201)

    return [
        Route("/push/vapid-public-key", vapid_public_key, methods=["GET"]),
        # Every method, so a wrong one gets a JSON 405 rather than Starlette's plain text.
        Route("/push/subscriptions", subscriptions, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/sw.js", _static("sw.js", {"Service-Worker-Allowed": "/", "Cache-Control": "no-cache"})),
        Route("/static/push.js", _static("push.js", {"Cache-Control": "no-cache"})),
    ]


def _static(name: str, headers: dict[str, str]) -> Callable[[Request], Awaitable[Response]]:
    text = resources.files("relay").joinpath("static", name).read_bytes()

    async def serve(_request: Request) -> Response:
        return Response(text, media_type="text/javascript", headers=headers)

    return serve
