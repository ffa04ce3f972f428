"""Merchant webhook endpoints: registration, secrets, enable/disable, replay.

Shared by the CLI (``relay webhooks ...``), the HTTP routes and the scheduler. Every
function takes a pool or connection; none opens one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from relay.config import WEBHOOK_ENDPOINTS_PER_MERCHANT
from relay.db import q
from relay.egress import IPNetwork, validate_url
from relay.errors import RelayError
from relay.events import CHANNELS

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
DEFAULT_ROTATION_OVERLAP = 24 * 3600.0


class EndpointError(RelayError):
    """The webhook endpoint request is not valid."""


class EndpointLimitReached(RelayError):
    """The merchant already has as many endpoints as it may register."""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 24 random bytes (as Svix issues them)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` (Standard Webhooks)."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def parse_events(events: Iterable[str] | str | None) -> list[str] | None:
    """An event filter: channel names, or None for every channel."""
    if events is None:
        return None
    if not isinstance(events, str | list | tuple):
        raise EndpointError("events must be a list of channel names")
    items = [e.strip() for e in events.split(",")] if isinstance(events, str) else list(events)
    if not all(isinstance(e, str) for e in items):
        raise EndpointError("events must be a list of channel names")
    items = [e for e in items if e]
    if not items:
        return None
    unknown = sorted(set(items) - set(CHANNELS))
    if unknown:
        raise EndpointError(f"unknown event types {unknown}; known: {', '.join(CHANNELS)}")
    return sorted(set(items), key=CHANNELS.index)


def public(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """An endpoint as shown to users (never the secrets)."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": row["id"],
        "merchantId": row["merchant_id"],
        "url": row["url"],
        "events": list(row["events"]) if row["events"] is not None else None,
        "enabled": row["enabled"],
        "disabledReason": row["disabled_reason"],
        "failingSince": iso(row["failing_since"]),
        "createdAt": iso(row["created_at"]),
    }


async def add_endpoint(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    merchant_id: str,
    url: str,
    events: Iterable[str] | str | None = None,
    allow: Sequence[IPNetwork] = (),
    limit: int = WEBHOOK_ENDPOINTS_PER_MERCHANT,
) -> tuple[dict[str, Any], str]:
    """Register an endpoint; return it and its new secret.

    A merchant has at most ``limit`` endpoints, enabled or not (``EndpointLimitReached``
    past it); registrations of one merchant take turns, so concurrent ones cannot pass it.
    """
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as held:
            return await add_endpoint(
                held, merchant_id=merchant_id, url=url, events=events, allow=allow, limit=limit
            )
    if not isinstance(merchant_id, str) or not merchant_id:
        raise EndpointError("merchant is required")
    url = validate_url(url, allow)
    filters = parse_events(events)
    secret = new_secret()
    async with conn.transaction():
        await conn.execute(q("webhook_merchant_lock"), merchant_id)
        if await conn.fetchval(q("webhook_count"), merchant_id) >= limit:
            raise EndpointLimitReached(
                f"merchant {merchant_id} already has {limit} webhook endpoints "
                "(RELAY_WEBHOOK_ENDPOINTS_PER_MERCHANT); remove one first"
            )
        row = await conn.fetchrow(q("webhook_add"), merchant_id, url, filters, secret)
    logger.info("webhook endpoint %s added", row["id"], extra={"merchant_id": merchant_id})
    return public(row), secret


async def list_endpoints(
    conn: asyncpg.Connection | asyncpg.Pool, merchant_id: str | None
) -> list[dict[str, Any]]:
    return [public(r) for r in await conn.fetch(q("webhook_list"), merchant_id)]


async def delete_endpoint(pool: asyncpg.Pool, endpoint_id: int, merchant_id: str) -> bool:
    """Remove a merchant's endpoint; its undelivered deliveries are cancelled."""
    async with pool.acquire() as conn, conn.transaction():
        deleted = await conn.fetchval(q("webhook_delete"), endpoint_id, merchant_id)
        if deleted is None:
            return False
        await conn.execute(
            "UPDATE relay.deliveries SET state = 'cancelled', updated_at = now() "
            "WHERE channel = 'webhook' AND target_id = $1 AND state = 'pending'",
            endpoint_id,
        )
    return True


async def disable_endpoint(conn: asyncpg.Connection | asyncpg.Pool, endpoint_id: int, reason: str) -> bool:
    return await conn.fetchval(q("webhook_disable"), endpoint_id, reason) is not None


async def enable_endpoint(conn: asyncpg.Connection | asyncpg.Pool, endpoint_id: int) -> bool:
    return await conn.fetchval(q("webhook_enable"), endpoint_id) is not None


async def rotate_secret(
    conn: asyncpg.Connection | asyncpg.Pool, endpoint_id: int, overlap: float = DEFAULT_ROTATION_OVERLAP
) -> str | None:
    """A new secret; the old one keeps signing (second signature) for ``overlap`` seconds."""
    secret = new_secret()
    done = await conn.fetchval(q("webhook_rotate"), endpoint_id, secret, overlap)
    return secret if done is not None else None


async def replay(
    conn: asyncpg.Connection | asyncpg.Pool,
    delivery_ids: Sequence[int] | None = None,
    endpoint_id: int | None = None,
) -> list[int]:
    """Re-send failed deliveries (or the chosen ones, whatever their state) with fresh attempts."""
    ids = list(delivery_ids) if delivery_ids else None
    return [r["id"] for r in await conn.fetch(q("deliveries_replay_failed"), ids, endpoint_id)]


async def disable_failing_endpoints(pool: asyncpg.Pool, days: float) -> int:
    """Disable endpoints that have failed continuously for ``days``; return how many (scheduler job)."""
    rows = await pool.fetch(q("webhook_disable_failing"), float(days))
    for row in rows:
        logger.warning(
            "webhook endpoint %s disabled: failing for more than %s days",
            row["id"],
            days,
            extra={"merchant_id": row["merchant_id"]},
        )
    return len(rows)
