"""The push channel against a real database and a push service on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from relay.db import create_pool
from relay.destinations import Delivery
from relay.egress import build_client
from relay.events import Event
from relay.push.notification import topic_for
from relay.push.sender import WebPushDestination, WebPushSender
from relay.push.subscriptions import prune_subscriptions
from relay.push.vapid import VapidSigner, generate_key_pair
from relay.store import Store, q
from tests.conftest import make_settings
from tests.pushservice import Browser, LocalPushService, verify_vapid
from tests.webhook_receiver import LOOPBACK

PRIVATE, PUBLIC = generate_key_pair()
SUBJECT = "mailto:ops@example.com"


@dataclass
class Env:
    destination: WebPushDestination
    store: Store
    service: LocalPushService
    conn: asyncpg.Connection
    planned: int = 0  # position up to which deliveries were planned
    seen: int = 0  # position of the last event book() returned

    async def subscribe(
        self, browser: Browser, merchant: str = "m1", name: str = "sub", channels: list[str] | None = None
    ) -> int:
        keys = browser.subscription(self.service.endpoint(name))["keys"]
        sub_id: int = await self.conn.fetchval(
            """INSERT INTO relay.push_subscriptions (merchant_id, user_id, endpoint, p256dh, auth, channels)
               VALUES ($1, 'u1', $2, $3, $4, $5) RETURNING id""",
            merchant,
            self.service.endpoint(name),
            keys["p256dh"],
            keys["auth"],
            channels,
        )
        return sub_id

    async def book(self, sql: str, *args: object) -> list[Event]:
        """Run a booking write; return the new events (after sequencing)."""
        await self.conn.execute(sql, *args)
        events = [Event.from_row(r) for r in await self.conn.fetch(q("advance"), self.seen, 1000)]
        self.seen = max([self.seen, *(e.position for e in events)])
        return events

    async def plan(self) -> list[Delivery]:
        """Plan push deliveries for the new events; return every pending push delivery."""
        last = await self.conn.fetchval(q("max_position"))
        await self.conn.execute(q("push_plan"), self.planned, last)
        self.planned = last
        rows = await self.conn.fetch(
            """SELECT id, event_id, channel AS kind, target_id AS destination_id, merchant_id, attempts
               FROM relay.deliveries
               WHERE channel = 'push' AND state = 'pending' ORDER BY id"""
        )
        return [Delivery(**dict(r)) for r in rows]

    async def subscription(self, sub_id: int) -> asyncpg.Record:
        return await self.conn.fetchrow("SELECT * FROM relay.push_subscriptions WHERE id = $1", sub_id)


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[Env]:
    settings = make_settings(db_url, vapid_private_key=PRIVATE, vapid_subject=SUBJECT)
    pool = await create_pool(db_url)
    conn = await asyncpg.connect(db_url)
    try:
        async with build_client(LOOPBACK, timeout=5) as client, LocalPushService().running() as service:
            sender = WebPushSender(VapidSigner.from_settings(settings), client)
            store = Store(pool)
            yield Env(WebPushDestination(store, sender), store, service, conn)
    finally:
        await conn.close()
        await pool.close()


CREATE = """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, $2, 'PENDING')"""


async def nothing_received(service: LocalPushService, wait: float = 0.3) -> bool:
    try:
        await asyncio.wait_for(service.received.get(), wait)
    except TimeoutError:
        return True
    return False


async def test_push_is_encrypted_for_the_browser_and_vapid_signed_for_the_push_service(env: Env) -> None:
    browser = Browser()
    await env.subscribe(browser)
    [event] = await env.book(CREATE, "clx9booking1", "m1")
    [delivery] = await env.plan()
    outcome = await env.destination.send(delivery, event)
    assert outcome.kind == "success" and outcome.status == 201

    got = await asyncio.wait_for(env.service.received.get(), 5)
    assert got.method == "POST" and got.path == "/push/sub"
    note = json.loads(browser.decrypt(got.body))
    assert note["title"] == "New booking" and note["tag"] == "booking-clx9booking1"
    assert note["url"] == "/?booking=clx9booking1"
    assert note["data"] == dict(event.data)
    claims, k = verify_vapid(got.headers["authorization"])
    assert claims["aud"] == env.service.origin
    assert claims["sub"] == SUBJECT
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600
    assert k == PUBLIC
    assert got.headers["content-encoding"] == "aes128gcm"
    assert int(got.headers["ttl"]) > 0
    assert got.headers["urgency"] == "high"
    assert got.headers["topic"] == "clx9booking1"
    row = await env.subscription(delivery.destination_id)
    assert row["last_success_at"] is not None and row["failure_count"] == 0


async def test_update_is_normal_urgency_and_long_id_topic_is_hashed(env: Env) -> None:
    browser = Browser()
    await env.subscribe(browser, channels=["booking_updated"])
    long_id = "booking/" + "x" * 40
    await env.book(CREATE, long_id, "m1")
    [event] = await env.book("""UPDATE "Booking" SET status = 'CONFIRMED' WHERE id = $1""", long_id)
    [delivery] = await env.plan()  # the channels filter left out the INSERT
    assert delivery.event_id == event.id
    assert (await env.destination.send(delivery, event)).kind == "success"
    got = await asyncio.wait_for(env.service.received.get(), 5)
    assert got.headers["urgency"] == "normal"
    assert got.headers["topic"] == topic_for(long_id) and len(got.headers["topic"]) == 32
    assert json.loads(browser.decrypt(got.body))["data"]["newStatus"] == "CONFIRMED"


async def test_overlong_booking_field_is_delivered_within_the_push_size_limit(env: Env) -> None:
    browser = Browser()
    await env.subscribe(browser)
    [event] = await env.book(CREATE, "b" * 50_000, "m1")
    [delivery] = await env.plan()
    assert (await env.destination.send(delivery, event)).kind == "success"
    got = await asyncio.wait_for(env.service.received.get(), 5)
    assert len(got.body) <= 4096
    plaintext = browser.decrypt(got.body)
    assert len(plaintext) <= 3993
    assert json.loads(plaintext)["data"]["truncated"] is True


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_subscription_is_marked_and_gets_no_further_sends(env: Env, status: int) -> None:
    sub_id = await env.subscribe(Browser())
    [first] = await env.book(CREATE, "b1", "m1")
    [second] = await env.book(CREATE, "b2", "m1")
    deliveries = await env.plan()
    assert len(deliveries) == 2
    env.service.answer(status, body=b"subscription expired")
    outcome = await env.destination.send(deliveries[0], first)
    assert outcome.kind == "gone" and outcome.status == status
    await env.destination.gone(deliveries[0], outcome)  # what the dispatcher does for "gone"
    await env.service.received.get()

    row = await env.subscription(sub_id)
    assert row["gone_since"] is not None and row["failure_count"] == 1
    state = await env.conn.fetchval("SELECT state FROM relay.deliveries WHERE id = $1", deliveries[1].id)
    assert state == "cancelled"
    # Even a delivery already claimed is not sent, and new events plan nothing for it.
    assert (await env.destination.send(deliveries[1], second)).kind == "permanent"
    [third] = await env.book(CREATE, "b3", "m1")
    assert [d for d in await env.plan() if d.event_id == third.id] == []
    assert await nothing_received(env.service)


async def test_429_is_retried_no_sooner_than_retry_after(env: Env) -> None:
    await env.subscribe(Browser())
    [event] = await env.book(CREATE, "b1", "m1")
    [delivery] = await env.plan()
    env.service.answer(429, {"Retry-After": "2"})
    outcome = await env.destination.send(delivery, event)
    assert (outcome.kind, outcome.status, outcome.retry_after) == ("retry", 429, 2.0)


async def test_500_is_retried_then_succeeds(env: Env) -> None:
    sub_id = await env.subscribe(Browser())
    [event] = await env.book(CREATE, "b1", "m1")
    [delivery] = await env.plan()
    env.service.answer(500, body=b"try later")
    failed = await env.destination.send(delivery, event)
    assert failed.kind == "retry" and failed.status == 500 and "try later" in failed.detail
    assert (await env.subscription(sub_id))["failure_count"] == 1
    assert (await env.destination.send(delivery, event)).kind == "success"
    row = await env.subscription(sub_id)
    assert row["failure_count"] == 0 and row["last_success_at"] is not None


@pytest.mark.parametrize("status", [400, 403, 413])
async def test_400_403_413_are_permanent_with_the_push_services_reason(
    env: Env, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    await env.subscribe(Browser())
    [event] = await env.book(CREATE, "b1", "m1")
    [delivery] = await env.plan()
    env.service.answer(status, body=b'{"reason":"VapidPkHashMismatch"}')
    outcome = await env.destination.send(delivery, event)
    assert outcome.kind == "permanent" and outcome.status == status
    assert "VapidPkHashMismatch" in outcome.detail
    assert any("VapidPkHashMismatch" in r.getMessage() for r in caplog.records)


async def test_unreachable_push_service_is_retried(env: Env) -> None:
    await env.subscribe(Browser())
    await env.conn.execute("UPDATE relay.push_subscriptions SET endpoint = 'http://127.0.0.1:9/push/x'")
    [event] = await env.book(CREATE, "b1", "m1")
    [delivery] = await env.plan()
    outcome = await env.destination.send(delivery, event)
    assert outcome.kind == "retry" and outcome.status is None


async def test_subscription_gets_only_its_merchants_events_and_honours_its_channels_filter(env: Env) -> None:
    mine = await env.subscribe(Browser(), merchant="m1", name="all")
    created_only = await env.subscribe(Browser(), merchant="m1", name="created", channels=["booking_created"])
    theirs = await env.subscribe(Browser(), merchant="m2", name="other")
    await env.book(CREATE, "b1", "m1")
    await env.book("""UPDATE "Booking" SET status = 'DONE' WHERE id = 'b1'""")
    await env.book("""DELETE FROM "Booking" WHERE id = 'b1'""")
    await env.book(CREATE, "b2", "m2")
    planned = await env.plan()
    channels = {
        (
            d.destination_id,
            await env.conn.fetchval("SELECT channel FROM relay.events WHERE id = $1", d.event_id),
        )
        for d in planned
    }
    assert channels == {
        (mine, "booking_created"),
        (mine, "booking_updated"),
        (mine, "booking_deleted"),
        (created_only, "booking_created"),
        (theirs, "booking_created"),
    }
    assert all(d.merchant_id == ("m2" if d.destination_id == theirs else "m1") for d in planned)
    again = await env.conn.execute(q("push_plan"), 0, env.planned)
    assert again == "INSERT 0 0"  # planning twice creates no duplicates


async def test_prune_deletes_gone_and_expired_subscriptions_and_cancels_their_deliveries(env: Env) -> None:
    live = await env.subscribe(Browser(), name="live")
    gone = await env.subscribe(Browser(), name="gone")
    expiring = await env.subscribe(Browser(), name="expiring")
    await env.book(CREATE, "b1", "m1")
    planned = await env.plan()
    assert len(planned) == 3
    await env.conn.execute("UPDATE relay.push_subscriptions SET gone_since = now() WHERE id = $1", gone)
    await env.conn.execute(
        "UPDATE relay.push_subscriptions SET expiration_time = now() - interval '1 s' WHERE id = $1", expiring
    )
    assert await prune_subscriptions(env.store) == 2
    left = await env.conn.fetch("SELECT id FROM relay.push_subscriptions")
    assert [r["id"] for r in left] == [live]
    states = dict(await env.conn.fetch("SELECT target_id, state FROM relay.deliveries"))
    assert states == {live: "pending", gone: "cancelled", expiring: "cancelled"}


async def test_a_corrupt_subscription_row_is_a_permanent_failure_not_a_crash(env: Env) -> None:
    await env.subscribe(Browser())
    await env.conn.execute("UPDATE relay.push_subscriptions SET p256dh = 'AAAA'")  # not a browser's key
    [event] = await env.book(CREATE, "b1", "m1")
    [delivery] = await env.plan()
    outcome = await env.destination.send(delivery, event)
    assert outcome.kind == "permanent" and "cannot encrypt" in outcome.detail
    assert await nothing_received(env.service)


async def test_a_batchs_sends_to_one_subscription_rewrite_its_row_only_when_something_changes(
    env: Env,
) -> None:
    sub_id = await env.subscribe(Browser())
    events = [(await env.book(CREATE, f"b{i}", "m1"))[0] for i in range(6)]
    deliveries = await env.plan()
    await env.destination.load(deliveries)  # one read for the batch, used by all six sends

    async def send(i: int) -> tuple[str, int, int]:
        outcome = await env.destination.send(deliveries[i], events[i])
        row = await env.conn.fetchrow(
            "SELECT xmin::text::bigint AS version, failure_count FROM relay.push_subscriptions WHERE id = $1",
            sub_id,
        )
        return outcome.kind, row["version"], row["failure_count"]

    first = await send(0)
    assert first[0] == "success"  # the first success is written (none was before)
    assert [await send(1), await send(2)] == [first, first]  # a minute's successes are not
    env.service.answer(500)
    failed = await send(3)
    assert failed[0] == "retry" and failed[2] == 1
    ended = await send(4)  # the batch's row still says failure_count 0: the streak's end is written
    assert ended[0] == "success" and ended[2] == 0 and ended[1] != failed[1]
    assert await send(5) == ended
