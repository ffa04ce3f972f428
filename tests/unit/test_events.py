"""NOTIFY payload validation and cursors."""

from __future__ import annotations

import json

import pytest

from relay.events import (
    BOOKING_SOURCE,
    CHANNELS,
    EventFilterError,
    MalformedNotification,
    Source,
    Sources,
    decode_cursor,
    encode_cursor,
    parse_event_filter,
    parse_notification,
    split_channel,
)

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


PAYMENTS = Source("payment", "billing.payments", "merchant_id", "payment_no", ("state",), ("amount_cents",))


def test_an_attached_sources_generic_payloads_are_accepted_on_its_channels_only() -> None:
    known = Sources([BOOKING_SOURCE, PAYMENTS])
    created = {"id": "1", "merchantId": "m1", "operation": "INSERT", "eventId": 3, "amount_cents": 5}
    updated = {"id": "1", "merchantId": None, "operation": "UPDATE", "eventId": 4, "changes": {}}
    deleted = {"id": "1", "merchantId": "m1", "operation": "DELETE", "eventId": 5}
    assert parse_notification("payment_created", json.dumps(created), known) == 3
    assert parse_notification("payment_updated", json.dumps(updated), known) == 4
    assert parse_notification("payment_deleted", json.dumps(deleted), known) == 5
    with pytest.raises(MalformedNotification, match="unknown channel"):
        parse_notification("payment_created", json.dumps(created))  # booking's channels only
    with pytest.raises(MalformedNotification, match="changes"):
        parse_notification(
            "payment_updated", json.dumps({k: v for k, v in updated.items() if k != "changes"}), known
        )
    with pytest.raises(MalformedNotification, match="operation"):
        parse_notification("payment_deleted", json.dumps(created), known)
    with pytest.raises(MalformedNotification, match="missing keys"):  # booking keeps its seed keys
        parse_notification("booking_created", json.dumps(created), known)


def test_the_catalog_lists_booking_first_and_follows_replacements() -> None:
    catalog = Sources()
    assert catalog.channels == CHANNELS and "payment_created" not in catalog
    catalog.replace([PAYMENTS, BOOKING_SOURCE])
    assert catalog.channels == (*CHANNELS, "payment_created", "payment_updated", "payment_deleted")
    assert "payment_deleted" in catalog
    catalog.replace([BOOKING_SOURCE])
    assert "payment_deleted" not in catalog


def test_event_filters_take_known_names_and_wildcards_of_known_sources() -> None:
    known = Sources([BOOKING_SOURCE, PAYMENTS]).channels
    assert parse_event_filter(None, known) is None
    assert parse_event_filter(" , ", known) is None
    assert parse_event_filter("payment_*,booking_deleted,booking_created", known) == [
        "booking_created",
        "booking_deleted",
        "payment_*",
    ]
    assert parse_event_filter(["payment_updated", "booking_*"], known) == ["booking_*", "payment_updated"]
    assert parse_event_filter("booking_created,,", known) == ["booking_created"]  # the CLI's comma list
    for bad in (
        ["refund_*"],
        ["payment"],
        ["*"],
        ["payment_refund_created"],
        "payments_*",
        [7],
        [""],
        {"a": 1},
    ):
        with pytest.raises(EventFilterError):
            parse_event_filter(bad, known)  # type: ignore[arg-type]


def test_split_channel_names_the_source_and_verb() -> None:
    assert split_channel("payment_refund_updated") == ("payment_refund", "updated")
    assert split_channel("booking_created") == ("booking", "created")
    for bad in ("created", "Payment_created", "payment_archived", "_created", "payment-x_created"):
        assert split_channel(bad) is None
