"""The webhook message and its Standard Webhooks signature.

Body ``{"type","timestamp","data"}``; headers ``webhook-id`` (``evt_<eventId>``, the
same for every endpoint and every retry), ``webhook-timestamp`` and
``webhook-signature`` (one ``v1,`` signature per live secret, so both the old and
the new one during a rotation).
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import secrets
from collections.abc import Sequence
from datetime import UTC

from relay.events import Event

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 24 random bytes (as Svix issues them)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


@functools.lru_cache(maxsize=4096)
def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` (Standard Webhooks)."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.digest(secret_key(secret), to_sign, "sha256")
    return "v1," + base64.b64encode(digest).decode("ascii")


def message_id(event: Event) -> str:
    return f"evt_{event.id}"


def body_for(event: Event) -> bytes:
    timestamp = event.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    message = {"type": event.channel, "timestamp": timestamp, "data": dict(event.data)}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(live_secrets: Sequence[str], event: Event, body: bytes, now: float) -> dict[str, str]:
    msg_id = message_id(event)
    timestamp = int(now)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in live_secrets),
    }
