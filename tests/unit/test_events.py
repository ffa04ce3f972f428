"""NOTIFY payload validation and cursors."""

from __future__ import annotations

import json

import pytest

from relay.events import MalformedNotification, decode_cursor, encode_cursor, parse_notification

CREATED = {"id": "b1", "merchantId": "m1", "status": "PENDING", "operation": "INSERT", "eventId": 7}


def test_contract_payloads_are_accepted() -> None:
    assert parse_notification("booking_created", json.dumps(CREATED)) == 7
    updated = {
        "id": "b",
        "merchantId": "m",
        "oldStatus": "A",
        "newStatus": "B",
        "operation": "UPDATE",
        "eventId": 8,
    }
    assert parse_notification("booking_updated", json.dumps(updated)) == 8
    deleted = {"id": "b", "merchantId": "m", "operation": "DELETE", "eventId": 9}
    assert parse_notification("booking_deleted", json.dumps(deleted)) == 9
    truncated = {"merchantId": "m", "operation": "INSERT", "eventId": 10, "truncated": True}
    assert parse_notification("booking_created", json.dumps(truncated)) == 10


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        ("booking_created", "not json"),
        ("booking_created", "[]"),
        ("booking_created", "null"),
        ("booking_created", json.dumps({**CREATED, "eventId": "7"})),
        ("booking_created", json.dumps({**CREATED, "eventId": True})),
        ("booking_created", json.dumps({**CREATED, "eventId": 0})),
        ("booking_created", json.dumps({k: v for k, v in CREATED.items() if k != "status"})),
        ("booking_created", json.dumps({**CREATED, "merchantId": 5})),
        ("booking_deleted", json.dumps(CREATED)),
        ("booking_archived", json.dumps(CREATED)),
    ],
)
def test_broken_payloads_are_refused(channel: str, payload: str) -> None:
    with pytest.raises(MalformedNotification):
        parse_notification(channel, payload)


def test_cursors_round_trip_and_garbage_is_refused() -> None:
    assert decode_cursor(encode_cursor(12345)) == 12345
    for bad in ["", "-1", "abc", "1e5", "١٢", "9" * 20]:
        with pytest.raises(ValueError):
            decode_cursor(bad)
