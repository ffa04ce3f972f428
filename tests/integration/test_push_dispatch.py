"""Web Push end to end: booking write -> trigger -> dispatcher -> push channel -> push service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx

from relay import app
from relay.app import Relay
from relay.auth import mint_token
from relay.push.vapid import generate_key_pair
from tests.conftest import make_settings
from tests.pushservice import Browser, LocalPushService, Received

PRIVATE, _PUBLIC = generate_key_pair()
FAST = "0,100ms,100ms,100ms,100ms"


@asynccontextmanager
async def running(db_url: str, schedule: str = FAST) -> AsyncIterator[tuple[Relay, LocalPushService]]:
    settings = make_settings(
        db_url,
        jwt_secret="test-secret-test-secret-test-secret",
        vapid_private_key=PRIVATE,
        vapid_subject="mailto:ops@example.com",
        egress_allow="127.0.0.0/8",
        retry_schedule=schedule,
    )
    async with LocalPushService().running() as service, app.start(settings) as relay:
        assert relay.dispatcher is not None and relay.push is not None
        await relay.dispatcher.started.wait()
        yield relay, service


async def subscribe(
    relay: Relay,
    browser: Browser,
    endpoint: str,
    merchant: str = "m1",
    user: str = "u1",
    method: str = "POST",
) -> None:
    token = mint_token(relay.settings, merchant_id=merchant, user_id=user)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as http:
        headers = {"Authorization": f"Bearer {token}"}
        body = browser.subscription(endpoint)
        response = await http.request(method, "/push/subscriptions", json=body, headers=headers)
    assert response.status_code == (201 if method == "POST" else 204), response.text


async def write(db_url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


CREATE = """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, $2, 'PENDING')"""


async def arrival(service: LocalPushService) -> Received:
    return await asyncio.wait_for(service.received.get(), 10)


async def test_booking_reaches_the_subscribed_browser_and_not_another_merchants(db_url: str) -> None:
    mine, theirs = Browser(), Browser()
    async with running(db_url) as (relay, service):
        await subscribe(relay, mine, service.endpoint("mine"), "m1")
        await subscribe(relay, theirs, service.endpoint("theirs"), "m2")
        await write(db_url, CREATE, "b1", "m1")
        got = await arrival(service)
        assert got.path == "/push/mine"
        assert json.loads(mine.decrypt(got.body))["data"]["id"] == "b1"
        try:
            extra = await asyncio.wait_for(service.received.get(), 0.5)
        except TimeoutError:
            extra = None
        assert extra is None  # m2's device got nothing


async def test_410_marks_the_subscription_gone_and_later_events_are_not_sent(db_url: str) -> None:
    async with running(db_url) as (relay, service):
        await subscribe(relay, Browser(), service.endpoint())
        service.answer(410)
        await write(db_url, CREATE, "b1", "m1")
        await arrival(service)
        async with relay.pool.acquire() as conn:
            for _ in range(100):
                if await conn.fetchval("SELECT gone_since IS NOT NULL FROM relay.push_subscriptions"):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("subscription never marked gone")
        await write(db_url, CREATE, "b2", "m1")
        try:
            again = await asyncio.wait_for(service.received.get(), 1.0)
        except TimeoutError:
            again = None
        assert again is None


async def test_429_retry_after_2s_delays_the_next_attempt_at_least_2s(db_url: str) -> None:
    async with running(db_url) as (relay, service):
        await subscribe(relay, Browser(), service.endpoint())
        service.answer(429, {"Retry-After": "2"})
        await write(db_url, CREATE, "b1", "m1")
        first = await arrival(service)
        second = await arrival(service)
        assert second.at - first.at >= 2.0  # the schedule alone would retry after 100 ms


async def test_500_is_retried_then_succeeds(db_url: str) -> None:
    browser = Browser()
    async with running(db_url) as (relay, service):
        await subscribe(relay, browser, service.endpoint())
        service.answer(500)
        await write(db_url, CREATE, "b1", "m1")
        first, second = await arrival(service), await arrival(service)
        assert browser.decrypt(first.body) and browser.decrypt(second.body)
        async with relay.pool.acquire() as conn:
            for _ in range(100):
                row = await conn.fetchrow("SELECT state, attempts, last_status FROM relay.deliveries")
                if row is not None and row["state"] == "succeeded":
                    break
                await asyncio.sleep(0.05)
        assert row is not None
        assert (row["state"], row["attempts"], row["last_status"]) == ("succeeded", 2, 201)


async def test_another_merchant_posting_a_devices_endpoint_does_not_take_the_device_over(db_url: str) -> None:
    victim, intruder = Browser(), Browser()
    async with running(db_url) as (relay, service):
        endpoint = service.endpoint("victim")
        await subscribe(relay, victim, endpoint, "m_victim")
        # Merchant A's token, merchant B's endpoint, A's keys; then A deletes "its" subscription.
        await subscribe(relay, intruder, endpoint, "m_intruder", "u9")
        await subscribe(relay, intruder, endpoint, "m_intruder", "u9", method="DELETE")
        await write(db_url, CREATE, "b1", "m_victim")
        got = await arrival(service)
        assert got.path == "/push/victim"
        assert json.loads(victim.decrypt(got.body))["data"]["id"] == "b1"  # still B's keys
        await write(db_url, CREATE, "b2", "m_intruder")  # A has no subscription left
        await write(db_url, CREATE, "b3", "m_victim")
        got = await arrival(service)
        assert json.loads(victim.decrypt(got.body))["data"]["id"] == "b3"


async def test_one_browser_subscribed_for_two_merchants_receives_each_merchants_bookings(db_url: str) -> None:
    browser = Browser()
    async with running(db_url) as (relay, service):
        endpoint = service.endpoint("staff")
        await subscribe(relay, browser, endpoint, "m1", "u1")
        await subscribe(relay, browser, endpoint, "m2", "u1")
        await write(db_url, CREATE, "b1", "m1")
        await write(db_url, CREATE, "b2", "m2")
        got = {json.loads(browser.decrypt((await arrival(service)).body))["data"]["id"] for _ in range(2)}
        assert got == {"b1", "b2"}
        # Unsubscribing under one merchant leaves the other's subscription.
        await subscribe(relay, browser, endpoint, "m1", "u1", method="DELETE")
        await write(db_url, CREATE, "b3", "m1")
        await write(db_url, CREATE, "b4", "m2")
        got_next = json.loads(browser.decrypt((await arrival(service)).body))["data"]
        assert (got_next["id"], got_next["merchantId"]) == ("b4", "m2")
        try:
            extra = await asyncio.wait_for(service.received.get(), 0.5)
        except TimeoutError:
            extra = None
        assert extra is None
