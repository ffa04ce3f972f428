"""Merchant webhook endpoints: registration, secrets, enable/disable, replay.

Shared by the CLI (``relay webhooks ...``), the HTTP routes and the scheduler. Every
function takes the store it works on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from relay.config import WEBHOOK_ENDPOINTS_PER_MERCHANT
from relay.egress import IPNetwork, validate_url
from relay.errors import RelayError
from relay.events import CHANNELS, EventFilterError, Sources, parse_event_filter
from relay.store import Store
from relay.webhooks.signing import new_secret

logger = logging.getLogger(__name__)

DEFAULT_ROTATION_OVERLAP = 24 * 3600.0


class EndpointError(RelayError):
    """The webhook endpoint request is not valid."""


class EndpointLimitReached(RelayError):
    """The merchant already has as many endpoints as it may register."""


def parse_events(events: Iterable[str] | str | None, known: Sequence[str] = CHANNELS) -> list[str] | None:
    """An event filter: event names of ``known`` (the attached sources') and ``NAME_*``
    wildcards, or None for every event."""
    try:
        return parse_event_filter(events, known)
    except EventFilterError as exc:
        raise EndpointError(str(exc)) from None


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
    store: Store,
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
    if not isinstance(merchant_id, str) or not merchant_id:
        raise EndpointError("merchant is required")
    url = validate_url(url, allow)
    filters = None if events is None else parse_events(events, Sources(await store.sources()).channels)
    secret = new_secret()
    row = await store.add_endpoint(merchant_id, url, filters, secret, limit)
    if row is None:
        raise EndpointLimitReached(
            f"merchant {merchant_id} already has {limit} webhook endpoints "
            "(RELAY_WEBHOOK_ENDPOINTS_PER_MERCHANT); remove one first"
        )
    logger.info(
        "webhook endpoint %s added", row["id"], extra={"merchant_id": merchant_id, "endpoint_id": row["id"]}
    )
    return public(row), secret


async def list_endpoints(store: Store, merchant_id: str | None) -> list[dict[str, Any]]:
    return [public(r) for r in await store.endpoints(merchant_id)]


async def rotate_secret(
    store: Store, endpoint_id: int, overlap: float = DEFAULT_ROTATION_OVERLAP
) -> str | None:
    """A new secret; the old one keeps signing (second signature) for ``overlap`` seconds."""
    secret = new_secret()
    return secret if await store.rotate_secret(endpoint_id, secret, overlap) else None


async def disable_failing_endpoints(store: Store, days: float) -> int:
    """Disable endpoints that have failed continuously for ``days``; return how many (scheduler job)."""
    rows = await store.disable_failing_endpoints(days)
    for row in rows:
        logger.warning(
            "webhook endpoint %s disabled: failing for more than %s days",
            row["id"],
            days,
            extra={"merchant_id": row["merchant_id"], "endpoint_id": row["id"]},
        )
    return len(rows)
