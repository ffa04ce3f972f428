"""Signed webhook deliveries reach a real receiver, per endpoint and per merchant."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay import app
from relay.store import Store
from relay.webhooks.endpoints import add_endpoint, rotate_secret
from tests.conftest import make_settings
from tests.webhook_receiver import LOOPBACK, Received, booking, running, running_dispatcher, write_bookings

ALLOW = "127.0.0.0/8"


def verify(secret: str, item: Received) -> object:
    return Webhook(secret).verify(item.body, item.headers)


async def test_every_delivery_verifies_with_standardwebhooks_and_a_tampered_body_does_not(
    db_url: str,
) -> None:
    settings = make_settings(db_url, egress_allow=ALLOW)
    async with running() as receiver, app.start(settings, serve_http=False) as relay:
        assert relay.dispatcher is not None
        await relay.dispatcher.started.wait()
        _endpoint, secret = await add_endpoint(
            relay.store, merchant_id="m1", url=receiver.url(), allow=settings.egress_allow
        )
        await write_bookings(
            db_url,
            booking("b1", "m1"),
            """UPDATE "Booking" SET status = 'CONFIRMED' WHERE id = 'b1'""",
            """DELETE FROM "Booking" WHERE id = 'b1'""",
        )
        got = [await receiver.get() for _ in range(3)]
        conn = await asyncpg.connect(db_url)
        event_ids = [r["id"] for r in await conn.fetch("SELECT id FROM relay.events ORDER BY id")]
        await conn.close()

    by_type = {item.json["type"]: item for item in got}
    assert set(by_type) == {"booking_created", "booking_updated", "booking_deleted"}
    for item, event_id in zip(sorted(got, key=lambda i: i.webhook_id), sorted(event_ids), strict=True):
        payload = verify(secret, item)
        assert isinstance(payload, dict)
        assert set(payload) == {"type", "timestamp", "data"}
        assert item.webhook_id == f"evt_{payload['data']['eventId']}"
        assert item.webhook_id == f"evt_{event_id}"
        assert item.headers["content-type"] == "application/json"
    assert by_type["booking_updated"].json["data"] == {
        "id": "b1",
        "merchantId": "m1",
        "oldStatus": "PENDING",
        "newStatus": "CONFIRMED",
        "operation": "UPDATE",
        "eventId": by_type["booking_updated"].json["data"]["eventId"],
    }
    tampered = by_type["booking_created"].body.replace(b"PENDING", b"PAID")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, by_type["booking_created"].headers)


async def test_rotation_signs_with_both_secrets_until_the_old_one_expires(db_url: str) -> None:
    settings = make_settings(db_url, egress_allow=ALLOW)
    async with running() as receiver, app.start(settings, serve_http=False) as relay:
        assert relay.dispatcher is not None
        await relay.dispatcher.started.wait()
        endpoint, old = await add_endpoint(
            relay.store, merchant_id="m1", url=receiver.url(), allow=settings.egress_allow
        )
        new = await rotate_secret(relay.store, endpoint["id"], overlap=1.5)
        assert new is not None and new != old
        await write_bookings(db_url, booking("b1", "m1"))
        during = await receiver.get()
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        assert verify(old, during) and verify(new, during)

        await asyncio.sleep(2.6)  # the overlap ends (and the endpoint cache, 1 s, expires)
        await write_bookings(db_url, booking("b2", "m1"))
        after = await receiver.get()
        assert len(after.headers["webhook-signature"].split(" ")) == 1
        assert verify(new, after)
        with pytest.raises(WebhookVerificationError):
            verify(old, after)


async def test_a_merchant_endpoint_receives_only_its_merchant_and_chosen_events(db_url: str) -> None:
    settings = make_settings(db_url, egress_allow=ALLOW)
    async with running() as receiver, app.start(settings, serve_http=False) as relay:
        assert relay.dispatcher is not None
        await relay.dispatcher.started.wait()
        await add_endpoint(relay.store, merchant_id="A", url=receiver.url("/a"), allow=settings.egress_allow)
        await add_endpoint(relay.store, merchant_id="B", url=receiver.url("/b"), allow=settings.egress_allow)
        await add_endpoint(
            relay.store,
            merchant_id="A",
            url=receiver.url("/a-deleted"),
            events=["booking_deleted"],
            allow=settings.egress_allow,
        )
        await write_bookings(
            db_url,
            booking("a1", "A"),
            booking("b1", "B"),
            booking("b2", "B"),
            """DELETE FROM "Booking" WHERE id = 'a1'""",
        )
        got = [await receiver.get() for _ in range(5)]
        assert await receiver.nothing_within(0.5)

    seen = sorted((item.path, item.json["data"]["id"], item.json["type"]) for item in got)
    assert seen == [
        ("/a", "a1", "booking_created"),
        ("/a", "a1", "booking_deleted"),
        ("/a-deleted", "a1", "booking_deleted"),
        ("/b", "b1", "booking_created"),
        ("/b", "b2", "booking_created"),
    ]


async def test_events_committed_before_the_first_relay_start_are_delivered(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        async with running() as receiver:
            await add_endpoint(Store(conn), merchant_id="m1", url=receiver.url(), allow=LOOPBACK)
            await write_bookings(db_url, booking("early1", "m1"), booking("early2", "m1"))
            async with running_dispatcher(db_url) as _dispatcher:
                got = sorted([(await receiver.get()).json["data"]["id"] for _ in range(2)])
    finally:
        await conn.close()
    assert got == ["early1", "early2"]


async def test_a_claimed_batch_reads_its_endpoints_in_one_query_not_one_per_delivery(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    one, batch = Store.endpoint, Store.endpoints_by_id

    async def read_one(self: Store, endpoint_id: int) -> object:
        reads.append("one")
        return await one(self, endpoint_id)

    async def read_batch(self: Store, endpoint_ids: list[int]) -> object:
        reads.append("batch")
        return await batch(self, endpoint_ids)

    monkeypatch.setattr(Store, "endpoint", read_one)
    monkeypatch.setattr(Store, "endpoints_by_id", read_batch)
    settings = make_settings(db_url, egress_allow=ALLOW)
    async with running() as receiver, app.start(settings, serve_http=False) as relay:
        assert relay.dispatcher is not None
        await relay.dispatcher.started.wait()
        for i in range(10):
            await add_endpoint(
                relay.store, merchant_id="m1", url=receiver.url(f"/e{i}"), allow=settings.egress_allow
            )
        await write_bookings(db_url, booking("b1", "m1"))
        got = [await receiver.get() for _ in range(10)]
    assert len(got) == 10
    # ten deliveries, claimed together: one read of their ten endpoints
    assert reads == ["batch"]
