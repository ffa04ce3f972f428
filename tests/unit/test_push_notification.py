from __future__ import annotations

import base64
import hashlib
import json

import pytest

from relay.push.notification import MAX_PLAINTEXT, render, topic_for, urgency_for


def _created(booking_id: str = "b1", status: str = "PENDING") -> dict[str, object]:
    return {"id": booking_id, "merchantId": "m1", "status": status, "operation": "INSERT", "eventId": 7}


def test_notification_carries_title_body_tag_url_and_seed_payload() -> None:
    note = json.loads(render("booking_created", _created()))
    assert note["title"] == "New booking"
    assert "b1" in note["body"] and "PENDING" in note["body"]
    assert note["tag"] == "booking-b1"
    assert note["url"] == "/?booking=b1"
    assert note["data"] == _created()


def test_updated_template_names_both_statuses() -> None:
    data = {
        "id": "b1",
        "merchantId": "m1",
        "oldStatus": "PENDING",
        "newStatus": "CONFIRMED",
        "operation": "UPDATE",
        "eventId": 8,
    }
    note = json.loads(render("booking_updated", data))
    assert "PENDING" in note["body"] and "CONFIRMED" in note["body"]


@pytest.mark.parametrize(
    "booking_id, status",
    [
        ("x" * 100_000, "PENDING"),  # over-long id
        ("b1", "S" * 100_000),  # over-long status
        ('"\\\u0000' * 20_000, "\U0001f600" * 20_000),  # escapes and 4-byte characters blow up in JSON
    ],
)
def test_overlong_booking_field_stays_within_3993_bytes(booking_id: str, status: str) -> None:
    encoded = render("booking_created", _created(booking_id, status))
    assert len(encoded) <= MAX_PLAINTEXT
    note = json.loads(encoded)  # still valid JSON
    assert note["title"] == "New booking"
    assert note["data"]["truncated"] is True
    assert note["data"]["eventId"] == 7
    assert note["tag"] == f"booking-{topic_for(booking_id)}"


def test_payload_too_big_for_every_rung_degrades_to_minimal_valid_json() -> None:
    data: dict[str, object] = {f"k{i}": "v" * 40 for i in range(500)}
    data.update(_created())
    encoded = render("booking_created", data)
    assert len(encoded) <= MAX_PLAINTEXT
    note = json.loads(encoded)
    assert note["data"] == {"eventId": 7, "truncated": True}


def test_topic_is_the_booking_id_when_short_base64url() -> None:
    assert topic_for("clx9A_b-12") == "clx9A_b-12"
    assert topic_for("a" * 32) == "a" * 32


@pytest.mark.parametrize("booking_id", ["a" * 33, "booking 1", "b/1", "b\u00e9"])
def test_topic_hashes_long_or_non_base64url_ids(booking_id: str) -> None:
    digest = base64.urlsafe_b64encode(hashlib.sha256(booking_id.encode()).digest()).decode().rstrip("=")
    assert topic_for(booking_id) == digest[:32]
    assert len(topic_for(booking_id)) == 32


def test_urgency_is_high_only_for_new_bookings() -> None:
    assert urgency_for("booking_created") == "high"
    assert urgency_for("booking_updated") == "normal"
    assert urgency_for("booking_deleted") == "normal"


def test_an_attached_source_gets_a_default_title_and_body_per_event() -> None:
    base = {"id": "p_1", "merchantId": "m1", "eventId": 9}
    created = json.loads(render("payment_created", {**base, "operation": "INSERT", "amount": 5}))
    assert (created["title"], created["body"]) == ("New payment", "Payment p_1 was created")
    assert (created["tag"], created["url"]) == ("payment-p_1", "/?payment=p_1")
    one = {**base, "operation": "UPDATE", "changes": {"status": {"old": "PENDING", "new": "PAID"}}}
    paid = json.loads(render("payment_updated", one))
    assert (paid["title"], paid["body"]) == ("Payment updated", "Payment p_1: PAID")
    two = {
        **base,
        "operation": "UPDATE",
        "changes": {"status": {"old": "A", "new": "B"}, "cents": {"old": 1, "new": 2}},
    }
    assert json.loads(render("order_item_updated", two))["body"] == "Order item p_1: status B, cents 2"
    gone = json.loads(render("order_item_deleted", {**base, "operation": "DELETE"}))
    assert (gone["title"], gone["body"]) == ("Order item removed", "Order item p_1 was removed")
    assert urgency_for("payment_created") == "high" and urgency_for("payment_updated") == "normal"


def test_a_huge_change_is_cut_to_fit_like_any_seed_field() -> None:
    changes = {"note": {"old": "x" * 50_000, "new": "y" * 50_000}}
    data = {"id": "p_1", "merchantId": "m1", "operation": "UPDATE", "eventId": 9, "changes": changes}
    encoded = render("payment_updated", data)
    assert len(encoded) <= MAX_PLAINTEXT
    note = json.loads(encoded)
    assert note["title"] == "Payment updated" and note["body"].startswith("Payment p_1: yyy")
    assert note["data"]["truncated"] is True and note["data"]["eventId"] == 9
