"""The event model: validate NOTIFY payloads and turn ``relay.events`` rows into events."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import WithJsonSchema

CHANNELS: tuple[str, ...] = ("booking_created", "booking_updated", "booking_deleted")
# An event's channel name, as the HTTP API's schemas show it.
ChannelName = Annotated[str, WithJsonSchema({"type": "string", "enum": list(CHANNELS)})]

# The contract's keys per channel (DESIGN.md "NOTIFY channels and payloads").
PAYLOAD_KEYS: dict[str, frozenset[str]] = {
    "booking_created": frozenset({"id", "merchantId", "status", "operation", "eventId"}),
    "booking_updated": frozenset({"id", "merchantId", "oldStatus", "newStatus", "operation", "eventId"}),
    "booking_deleted": frozenset({"id", "merchantId", "operation", "eventId"}),
}
OPERATIONS = {"booking_created": "INSERT", "booking_updated": "UPDATE", "booking_deleted": "DELETE"}


class MalformedNotification(ValueError):
    """A NOTIFY payload that does not follow the contract."""


def parse_notification(channel: str, payload: str) -> int:
    """Check a NOTIFY payload against the contract and return its ``eventId``.

    The payload is only a wake-up (the durable row is what gets delivered), but a
    payload that breaks the contract points at a foreign or broken trigger, so it is
    refused here and the caller logs and counts it.
    """
    if channel not in PAYLOAD_KEYS:
        raise MalformedNotification(f"unknown channel {channel!r}")
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise MalformedNotification(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MalformedNotification(f"expected a JSON object, got {type(data).__name__}")
    event_id = data.get("eventId")
    if not isinstance(event_id, int) or isinstance(event_id, bool) or event_id < 1:
        raise MalformedNotification("eventId missing or not a positive integer")
    if data.get("operation") != OPERATIONS[channel]:
        raise MalformedNotification(f"operation must be {OPERATIONS[channel]!r}")
    if data.get("truncated") is True:  # an oversized row: the trigger sent what fits
        return event_id
    missing = PAYLOAD_KEYS[channel] - data.keys()
    if missing:
        raise MalformedNotification(f"missing keys {sorted(missing)}")
    if not isinstance(data["merchantId"], str | None):
        raise MalformedNotification("merchantId must be a string")
    return event_id


@dataclass(frozen=True, slots=True)
class Event:
    """One committed booking change, with its position in visibility order."""

    position: int
    id: int
    channel: str
    merchant_id: str | None
    data: Mapping[str, Any]
    created_at: datetime

    @property
    def cursor(self) -> str:
        return encode_cursor(self.position)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Event:
        data = row["payload"]
        if isinstance(data, str):
            data = json.loads(data)
        return cls(
            position=row["event_position"],
            id=row["event_id"],
            channel=row["channel"],
            merchant_id=row["merchant_id"],
            data=data,
            created_at=row["created_at"],
        )


def encode_cursor(position: int) -> str:
    return str(position)


def decode_cursor(cursor: str) -> int:
    """Parse a cursor handed out earlier; raise ValueError for anything else."""
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 19 or int(cursor) > 2**63 - 1:
        raise ValueError(f"invalid cursor {cursor[:40]!r}")
    return int(cursor)
