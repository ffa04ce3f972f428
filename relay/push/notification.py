"""What a staff device shows for an event: the notification JSON, its Topic and Urgency.

Bookings keep their own texts; every other source gets a default title and body per
event, made from its entity name (``payment_updated``: "Payment updated",
"Payment p_1: PAID").
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from relay.events import BOOKING, split_channel
from relay.push.vapid import b64url_encode

# 4096 bytes per push message (RFC 8291) minus the aes128gcm header (86), the AEAD
# tag (16) and the padding delimiter (1).
MAX_PLAINTEXT = 3993
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# Rungs of the degradation ladder: every string of the seed payload is cut to this
# many characters until the notification fits (None: as is).
_CAPS: tuple[int | None, ...] = (None, 512, 128, 32)
_MAX_URL = 512

# The booking texts; ``{id}`` etc. are fields of the seed payload.
TEMPLATES: dict[str, tuple[str, str]] = {
    "booking_created": ("New booking", "Booking {id} was created ({status})."),
    "booking_updated": ("Booking updated", "Booking {id}: {oldStatus} \u2192 {newStatus}."),
    "booking_deleted": ("Booking removed", "Booking {id} was removed."),
}
# Every other source's, by verb: ``{noun}`` is its entity name in words ("order item").
GENERIC: dict[str, tuple[str, str]] = {
    "created": ("New {noun}", "{Noun} {id} was created"),
    "updated": ("{Noun} updated", "{Noun} {id}: {changes}"),
    "deleted": ("{Noun} removed", "{Noun} {id} was removed"),
}
_FALLBACK = ("Booking changed", "Booking {id} changed.")


def topic_for(booking_id: str) -> str:
    """RFC 8030 Topic: the id when it is at most 32 base64url characters, else a hash of it."""
    if _TOPIC.match(booking_id):
        return booking_id
    return b64url_encode(hashlib.sha256(booking_id.encode("utf-8")).digest())[:32]


def urgency_for(channel: str) -> str:
    return "high" if channel.endswith("_created") else "normal"


def _entity(channel: str) -> str:
    parts = split_channel(channel)
    return parts[0] if parts is not None else BOOKING


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _changes(changes: Any) -> str:
    """``{"status": {"old": "PENDING", "new": "PAID"}}`` -> ``PAID``; several: ``status PAID, ...``."""
    if not isinstance(changes, dict) or not changes:
        return "changed"
    new = {k: v.get("new") if isinstance(v, dict) else v for k, v in changes.items()}
    if len(new) == 1:
        return _show(next(iter(new.values())))
    return ", ".join(f"{column} {_show(value)}" for column, value in new.items())


def texts(channel: str, data: Mapping[str, Any]) -> tuple[str, str]:
    """A notification's title and body, for a person: the booking texts, or the defaults
    of the source's verb (``New payment``, ``Payment p_1: PAID``)."""
    fields = _Fields({k: str(v) for k, v in data.items() if v is not None})
    if channel in TEMPLATES:
        title, body = TEMPLATES[channel]
        return title, body.format_map(fields)
    parts = split_channel(channel)
    if parts is None:
        title, body = _FALLBACK
        return title, body.format_map(fields)
    noun = parts[0].replace("_", " ")
    words = {"noun": noun, "Noun": noun[:1].upper() + noun[1:], "id": fields["id"]}
    title, body = GENERIC[parts[1]]
    return title.format_map(words), body.format_map({**words, "changes": _changes(data.get("changes"))})


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _cut(value: Any, cap: int | None) -> Any:
    if cap is not None and isinstance(value, str) and len(value) > cap:
        return value[: cap - 1] + "\u2026"
    if cap is not None and isinstance(value, dict):  # an attached source's "changes"
        return {_cut(k, cap): _cut(v, cap) for k, v in value.items()}
    if cap is not None and isinstance(value, list):
        return [_cut(v, cap) for v in value]
    return value


class _Fields(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def _build(channel: str, data: Mapping[str, Any], cap: int | None) -> dict[str, Any]:
    seed = {key: _cut(value, cap) for key, value in data.items()}
    if cap is not None:
        seed["truncated"] = True
    key = data.get("id")
    entity = _entity(channel)
    title, body = texts(channel, seed)
    notification: dict[str, Any] = {"title": title, "body": body}
    if isinstance(key, str):
        notification["tag"] = f"{entity}-{topic_for(key)}"
        url = f"/?{entity}=" + quote(key, safe="")
        notification["url"] = url if len(url) <= _MAX_URL else "/"
    else:
        notification["tag"] = entity
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
    title, _ = texts(channel, {})
    key, entity = data.get("id"), _entity(channel)
    minimal = {
        "title": title,
        "body": "",
        "tag": f"{entity}-{topic_for(key)}" if isinstance(key, str) else entity,
        "url": "/",
        "data": {
            "eventId": data.get("eventId") if isinstance(data.get("eventId"), int) else None,
            "truncated": True,
        },
    }
    return _dumps(minimal)
