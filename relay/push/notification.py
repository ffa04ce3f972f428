"""What a staff device shows for an event: the notification JSON, its Topic and Urgency."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from relay.push.vapid import b64url_encode

# 4096 bytes per push message (RFC 8291) minus the aes128gcm header (86), the AEAD
# tag (16) and the padding delimiter (1).
MAX_PLAINTEXT = 3993
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# Rungs of the degradation ladder: every string of the seed payload is cut to this
# many characters until the notification fits (None: as is).
_CAPS: tuple[int | None, ...] = (None, 512, 128, 32)
_MAX_URL = 512

# Per-channel templates; ``{id}`` etc. are fields of the seed payload.
TEMPLATES: dict[str, tuple[str, str]] = {
    "booking_created": ("New booking", "Booking {id} was created ({status})."),
    "booking_updated": ("Booking updated", "Booking {id}: {oldStatus} \u2192 {newStatus}."),
    "booking_deleted": ("Booking removed", "Booking {id} was removed."),
}
_FALLBACK = ("Booking changed", "Booking {id} changed.")


def topic_for(booking_id: str) -> str:
    """RFC 8030 Topic: the id when it is at most 32 base64url characters, else a hash of it."""
    if _TOPIC.match(booking_id):
        return booking_id
    return b64url_encode(hashlib.sha256(booking_id.encode("utf-8")).digest())[:32]


def urgency_for(channel: str) -> str:
    return "high" if channel == "booking_created" else "normal"


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _cut(value: Any, cap: int | None) -> Any:
    if cap is not None and isinstance(value, str) and len(value) > cap:
        return value[: cap - 1] + "\u2026"
    return value


class _Fields(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def _build(channel: str, data: Mapping[str, Any], cap: int | None) -> dict[str, Any]:
    seed = {key: _cut(value, cap) for key, value in data.items()}
    if cap is not None:
        seed["truncated"] = True
    booking_id = data.get("id")
    title, body = TEMPLATES.get(channel, _FALLBACK)
    fields = _Fields({k: str(v) for k, v in seed.items() if v is not None})
    notification: dict[str, Any] = {"title": title, "body": body.format_map(fields)}
    if isinstance(booking_id, str):
        notification["tag"] = f"booking-{topic_for(booking_id)}"
        url = "/?booking=" + quote(booking_id, safe="")
        notification["url"] = url if len(url) <= _MAX_URL else "/"
    else:
        notification["tag"] = "booking"
        notification["url"] = "/"
    notification["data"] = seed
    return notification


def render(channel: str, data: Mapping[str, Any], limit: int = MAX_PLAINTEXT) -> bytes:
    """The notification JSON ``{"title","body","tag","url","data"}``, at most ``limit`` bytes.

    Over-long seed fields are cut (and ``data.truncated`` set) rung by rung; if even the
    shortest rung does not fit (a payload with very many keys), only the event's id
    and the booking's id hash are kept. The result is always valid JSON.
    """
    for cap in _CAPS:
        encoded = _dumps(_build(channel, data, cap))
        if len(encoded) <= limit:
            return encoded
    title, _ = TEMPLATES.get(channel, _FALLBACK)
    booking_id = data.get("id")
    minimal = {
        "title": title,
        "body": "",
        "tag": f"booking-{topic_for(booking_id)}" if isinstance(booking_id, str) else "booking",
        "url": "/",
        "data": {
            "eventId": data.get("eventId") if isinstance(data.get("eventId"), int) else None,
            "truncated": True,
        },
    }
    return _dumps(minimal)
