"""The event model: sources and their event names, NOTIFY payload checks, events and cursors.

A *source* is a table whose row changes become events: the built-in ``booking``
(``"Booking"``, the seed's trigger and payloads) and every table ``relay attach`` added.
A source ``NAME`` has three event names, which are also its NOTIFY channels:
``NAME_created``, ``NAME_updated``, ``NAME_deleted``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import WithJsonSchema

ENTITY = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
VERBS: dict[str, str] = {"created": "INSERT", "updated": "UPDATE", "deleted": "DELETE"}
# Where relay processes hear that a source was attached or detached (relay.attach_source()).
SOURCES_CHANNEL = "relay_sources"
# Where the poller (capture mode poll) wakes every relay process after it sequenced events.
WAKE_CHANNEL = "relay_wake"

BOOKING = "booking"
CHANNELS: tuple[str, ...] = ("booking_created", "booking_updated", "booking_deleted")
# An event's name (its channel), as the HTTP API's schemas show it: which names exist is up
# to the attached sources (`relay sources`); a name no source has is refused with 422.
ChannelName = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^[a-z][a-z0-9_]{0,29}_(created|updated|deleted)$",
            "examples": list(CHANNELS),
        }
    ),
]
# An item of a webhook or push filter: an event name, or NAME_* for every event of source NAME.
EventFilter = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[a-z][a-z0-9_]{0,29}_(created|updated|deleted|\*)$",
            "description": "An event name, or NAME_* for every event of source NAME.",
            "examples": [*CHANNELS, "booking_*"],
        }
    ),
]

# The contract's keys per channel (DESIGN.md "NOTIFY channels and payloads"): the booking
# channels keep the seed's exact keys; every other source's carry the generic ones
# (DESIGN.md "Sources"), plus its --fields.
PAYLOAD_KEYS: dict[str, frozenset[str]] = {
    "booking_created": frozenset({"id", "merchantId", "status", "operation", "eventId"}),
    "booking_updated": frozenset({"id", "merchantId", "oldStatus", "newStatus", "operation", "eventId"}),
    "booking_deleted": frozenset({"id", "merchantId", "operation", "eventId"}),
}
GENERIC_KEYS: dict[str, frozenset[str]] = {
    "created": frozenset({"id", "merchantId", "operation", "eventId"}),
    "updated": frozenset({"id", "merchantId", "operation", "eventId", "changes"}),
    "deleted": frozenset({"id", "merchantId", "operation", "eventId"}),
}


def split_channel(channel: str) -> tuple[str, str] | None:
    """``payment_created`` -> (``payment``, ``created``); None for anything else."""
    entity, _, verb = channel.rpartition("_")
    if verb not in VERBS or not ENTITY.match(entity):
        return None
    return entity, verb


@dataclass(frozen=True, slots=True)
class Source:
    """One row of ``relay.sources``."""

    entity: str
    table: str  # as the user wrote it
    tenant_column: str
    key: str
    watch: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(f"{self.entity}_{verb}" for verb in VERBS)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Source:
        """A ``relay.sources`` row (as the store's queries name its columns)."""
        return cls(
            row["entity"],
            row["table_name"],
            row["tenant_column"],
            row["key_column"],
            tuple(row["watch"]),
            tuple(row["fields"]),
        )

    def public(self) -> dict[str, Any]:
        """As `relay sources` prints it (DESIGN.md "Sources")."""
        return {
            "table": self.table,
            "entity": self.entity,
            "tenantColumn": self.tenant_column,
            "key": self.key,
            "watch": list(self.watch),
            "fields": list(self.fields),
        }


BOOKING_SOURCE = Source(BOOKING, "Booking", "merchantId", "id", ("status",), ("status",))


class Sources:
    """The sources a relay process knows, and so the event names it accepts.

    One catalog per process, refreshed by the listener from ``relay.sources`` (on the
    ``relay_sources`` NOTIFY, on every reconnect, and every few seconds); everything
    else reads it. Until the first read it holds the built-in booking source.
    """

    def __init__(self, sources: Iterable[Source] = (BOOKING_SOURCE,)) -> None:
        self._sources: tuple[Source, ...] = ()
        self._channels: tuple[str, ...] = ()
        self._set: frozenset[str] = frozenset()
        self.replace(sources)

    def replace(self, sources: Iterable[Source]) -> None:
        self._sources = tuple(sorted(sources, key=lambda s: (s.entity != BOOKING, s.entity)))
        self._channels = tuple(c for s in self._sources for c in s.channels)
        self._set = frozenset(self._channels)

    @property
    def sources(self) -> tuple[Source, ...]:
        return self._sources

    @property
    def channels(self) -> tuple[str, ...]:
        """Every event name, booking's first."""
        return self._channels

    def __contains__(self, channel: object) -> bool:
        return channel in self._set


class MalformedNotification(ValueError):
    """A NOTIFY payload that does not follow the contract."""


class EventFilterError(ValueError):
    """An event filter names events no source has."""


def parse_notification(channel: str, payload: str, known: Container[str] = CHANNELS) -> int:
    """Check a NOTIFY payload against the contract and return its ``eventId``.

    ``known`` holds the event names of the attached sources (booking's by default). The
    payload is only a wake-up (the durable row is what gets delivered), but a payload
    that breaks the contract points at a foreign or broken trigger, so it is refused
    here and the caller logs and counts it.
    """
    parts = split_channel(channel)
    if channel not in known or parts is None:
        raise MalformedNotification(f"unknown channel {channel!r}")
    verb = parts[1]
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise MalformedNotification(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MalformedNotification(f"expected a JSON object, got {type(data).__name__}")
    event_id = data.get("eventId")
    if not isinstance(event_id, int) or isinstance(event_id, bool) or event_id < 1:
        raise MalformedNotification("eventId missing or not a positive integer")
    if data.get("operation") != VERBS[verb]:
        raise MalformedNotification(f"operation must be {VERBS[verb]!r}")
    if data.get("truncated") is True:  # an oversized row: the trigger sent what fits
        return event_id
    missing = PAYLOAD_KEYS.get(channel, GENERIC_KEYS[verb]) - data.keys()
    if missing:
        raise MalformedNotification(f"missing keys {sorted(missing)}")
    if not isinstance(data["merchantId"], str | None):
        raise MalformedNotification("merchantId must be a string")
    if "changes" in data and channel not in PAYLOAD_KEYS and not isinstance(data["changes"], dict):
        raise MalformedNotification("changes must be an object")
    return event_id


def parse_event_filter(events: Iterable[str] | str | None, known: Collection[str]) -> list[str] | None:
    """A webhook or push filter: event names of ``known`` and ``NAME_*`` wildcards (every
    event of source NAME); None for every event.

    Raises EventFilterError naming what is unknown.
    """
    if events is None:
        return None
    if not isinstance(events, str | list | tuple):
        raise EventFilterError("expected a list of event names")
    if isinstance(events, str):  # the CLI's comma list: blanks between commas are skipped
        items = [e for e in (e.strip() for e in events.split(",")) if e]
    else:
        items = list(events)
        if not all(isinstance(e, str) and e for e in items):
            raise EventFilterError("expected a list of event names")
    if not items:
        return None
    unknown = sorted(
        {e for e in items if e not in known and not (e.endswith("_*") and f"{e[:-2]}_created" in known)}
    )
    if unknown:
        shown = ", ".join(repr(e[:64]) for e in unknown[:5])
        raise EventFilterError(
            f"unknown event types {shown}; known: {', '.join(known)}, "
            "or NAME_* for every event of source NAME"
        )
    order = {name: float(i) for i, name in enumerate(known)}

    def rank(item: str) -> float:  # known order; a wildcard just before its source's names
        return order[item] if item in order else order[f"{item[:-2]}_created"] - 0.5

    return sorted(set(items), key=rank)


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change of a source, with its position in visibility order."""

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
