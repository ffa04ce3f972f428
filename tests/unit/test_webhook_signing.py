"""Signing, message format and the mapping of receiver answers to outcomes."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from relay.events import Event
from relay.webhooks.endpoints import EndpointError, parse_events
from relay.webhooks.sender import outcome_for
from relay.webhooks.signing import body_for, new_secret, signed_headers

EVENT = Event(
    position=7,
    id=42,
    channel="booking_created",
    merchant_id="m1",
    data={"id": "b1", "merchantId": "m1", "status": "PENDING", "operation": "INSERT", "eventId": 42},
    created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
)


def test_secrets_are_whsec_and_signatures_verify_with_standardwebhooks() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = body_for(EVENT)
    headers = signed_headers([secret], EVENT, body, time.time())
    assert headers["webhook-id"] == "evt_42"
    payload = Webhook(secret).verify(body, headers)
    assert payload == {
        "type": "booking_created",
        "timestamp": "2026-01-02T03:04:05.678000Z",
        "data": EVENT.data,
    }


def test_the_webhook_id_and_body_are_the_same_on_every_attempt() -> None:
    secrets = [new_secret()]
    first = signed_headers(secrets, EVENT, body_for(EVENT), 1000)
    later = signed_headers(secrets, EVENT, body_for(EVENT), 5000)
    assert first["webhook-id"] == later["webhook-id"]
    assert first["webhook-signature"] != later["webhook-signature"]  # the timestamp is signed too


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (200, {}, "success", None),
        (204, {}, "success", None),
        (299, {}, "success", None),
        (301, {"location": "https://elsewhere"}, "retry", None),
        (302, {}, "retry", None),
        (400, {}, "retry", None),
        (404, {}, "retry", None),
        (410, {}, "gone", None),
        (429, {"retry-after": "120"}, "retry", 120.0),
        (503, {"retry-after": "7"}, "retry", 7.0),
        (500, {"retry-after": "7"}, "retry", None),
        (429, {"retry-after": "soon"}, "retry", None),
    ],
)
def test_receiver_answers_map_to_outcomes(
    status: int, headers: dict[str, str], kind: str, retry_after: float | None
) -> None:
    outcome = outcome_for(status, httpx.Headers(headers), b"")
    assert (outcome.kind, outcome.status, outcome.retry_after) == (kind, status, retry_after)


def test_event_filters_name_known_channels_only() -> None:
    assert parse_events(None) is None
    assert parse_events("booking_deleted, booking_created") == ["booking_created", "booking_deleted"]
    with pytest.raises(EndpointError, match="unknown event types"):
        parse_events(["booking_exploded"])
