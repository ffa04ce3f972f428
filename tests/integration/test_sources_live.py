"""Every path carries every source: /ws, /events, signed webhooks and Web Push deliver an
attached table's events exactly as they deliver bookings, per merchant; a running relay
follows attach and detach without a restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from relay.app import Relay
from relay.push.vapid import generate_key_pair
from relay.store import Store
from relay.webhooks.endpoints import add_endpoint
from tests.integration.livekit import live_settings, nothing_more, recv, running, token, ws_client
from tests.integration.sourcekit import (
    SNAKE,
    TABLES,
    Table,
    event_ids,
    execute,
    lifecycle,
    prepare,
    relay_cli,
)
from tests.pushservice import Browser, LocalPushService
from tests.webhook_receiver import Receiver
from tests.webhook_receiver import running as receiving

ALLOW = "127.0.0.0/8"
FOLLOW_WITHIN = 5.0  # the contract: a running relay picks up a new or removed source within 5 s


async def events_page(relay: Relay, tok: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as http:
        response = await http.get("/events", headers={"Authorization": f"Bearer {tok}"})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def webhooks(receiver: Receiver, count: int) -> list[tuple[str, dict[str, Any]]]:
    got = [await receiver.get() for _ in range(count)]
    return sorted(((item.path, item.json) for item in got), key=lambda x: x[1]["data"]["eventId"])


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
async def test_ws_events_and_verified_webhooks_carry_the_source_and_merchant_b_sees_none(
    db_url: str, table: Table
) -> None:
    await prepare(db_url, table)
    settings = live_settings(db_url, egress_allow=ALLOW)
    mine, theirs = table.merchants
    key = table.keys[0]
    async with receiving() as receiver, running(settings) as relay:
        _e, secret = await add_endpoint(
            relay.store,
            merchant_id=mine,
            url=receiver.url("/a"),
            events=[f"{table.entity}_*"],
            allow=relay.settings.egress_allow,
        )
        await add_endpoint(
            relay.store, merchant_id=theirs, url=receiver.url("/b"), allow=relay.settings.egress_allow
        )
        async with (
            ws_client(relay, token(settings, mine)) as ws_a,
            ws_client(relay, token(settings, theirs)) as ws_b,
        ):
            await lifecycle(db_url, table, key, mine)
            ids = await event_ids(db_url, table.entity)
            assert len(ids) == 3  # the update of unwatched columns only is no event
            expected = [
                (table.channel("created"), table.created(key, mine, ids[0])),
                (table.channel("updated"), table.updated(key, mine, ids[1])),
                (table.channel("deleted"), table.deleted(key, mine, ids[2])),
            ]
            seen = [await recv(ws_a) for _ in expected]
            assert [(m["type"], m["channel"], m["data"]) for m in seen] == [
                ("event", c, d) for c, d in expected
            ]
            await nothing_more(ws_b)

            hooks = await webhooks(receiver, 3)
            assert [(path, body["type"], body["data"]) for path, body in hooks] == [
                ("/a", channel, data) for channel, data in expected
            ]
            for item in receiver.all:
                assert Webhook(secret).verify(item.body, item.headers)["data"]["merchantId"] == mine
                assert item.webhook_id == f"evt_{item.json['data']['eventId']}"
            assert await receiver.nothing_within(0.3)

            page = await events_page(relay, token(settings, mine))
            assert [(e["channel"], e["data"]) for e in page] == expected
            assert [e["cursor"] for e in page] == [m["cursor"] for m in seen]
            assert await events_page(relay, token(settings, theirs)) == []


async def test_a_row_without_a_tenant_is_recorded_and_reaches_no_merchant(db_url: str) -> None:
    await prepare(db_url, SNAKE)
    settings = live_settings(db_url, egress_allow=ALLOW)
    async with receiving() as receiver, running(settings) as relay:
        for merchant in SNAKE.merchants:
            await add_endpoint(
                relay.store,
                merchant_id=merchant,
                url=receiver.url(f"/{merchant}"),
                allow=relay.settings.egress_allow,
            )
        async with (
            ws_client(relay, token(settings, "mA")) as ws_a,
            ws_client(relay, token(settings, "mB")) as ws_b,
        ):
            await execute(db_url, (SNAKE.insert, ("1", None)), (SNAKE.insert, ("2", "mA")))  # type: ignore[arg-type]
            marker = await recv(ws_a)
            assert marker["data"]["id"] == "2"  # the tenantless row went nowhere
            await nothing_more(ws_b, 0.3)
            assert (await receiver.get()).json["data"]["id"] == "2"
            assert await receiver.nothing_within(0.5)
            assert [e["data"]["id"] for e in await events_page(relay, token(settings, "mA"))] == ["2"]
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT merchant_id, payload->>'id' AS id FROM relay.events ORDER BY id")
        assert [(r["merchant_id"], r["id"]) for r in rows] == [(None, "1"), ("mA", "2")]
        assert await conn.fetchval("SELECT count(*) FROM relay.deliveries") == 1
    finally:
        await conn.close()


async def test_a_source_attached_while_relay_runs_reaches_clients_within_5s(db_url: str) -> None:
    await prepare(db_url, SNAKE, attach=False)
    settings = live_settings(db_url, reconcile_interval=60.0)  # no reconciliation pass would help
    async with running(settings) as relay, ws_client(relay, token(settings, "mA")) as ws:
        result = await asyncio.to_thread(
            relay_cli,
            "attach", "billing.payments", "--entity", "payment", "--tenant-column", "merchant_id",
            "--key", "payment_no", "--watch", "state", "--fields", "amount_cents",
            database_url=db_url,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        await execute(db_url, (SNAKE.insert, ("1", "mA")))
        message = await recv(ws, FOLLOW_WITHIN)
        assert (message["channel"], message["data"]["id"]) == ("payment_created", "1")
        assert json.loads(result.stdout)["entity"] == "payment"
        # The listener LISTENs to the new event names, so the next change is a NOTIFY wake-up.
        assert "payment_updated" in relay.listener.sources
        await execute(db_url, (SNAKE.watched, ("1",)))
        assert (await recv(ws, FOLLOW_WITHIN))["data"]["changes"] == SNAKE.changes
        assert (await ws_answer(ws, {"type": "subscribe", "channel": "payment_updated"}))[
            "type"
        ] == "subscribed"


async def ws_answer(ws: Any, message: dict[str, str]) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    return await recv(ws)


async def test_a_source_added_without_its_notify_is_followed_by_the_periodic_read(db_url: str) -> None:
    """A relay that missed the relay_sources NOTIFY (a source written by hand here) still
    follows it: the sources are read again every few seconds."""
    await prepare(db_url, SNAKE, attach=False)
    settings = live_settings(db_url, reconcile_interval=60.0)
    async with running(settings) as relay, ws_client(relay, token(settings, "mA")) as ws:
        await execute(
            db_url,
            (
                """INSERT INTO relay.sources (entity, table_oid, table_name, tenant_column, key_column)
                   VALUES ('payment', 'billing.payments', 'billing.payments', 'merchant_id', 'payment_no')""",
                (),
            ),
            ("SELECT relay.install_source('payment')", ()),
        )
        async with asyncio.timeout(FOLLOW_WITHIN):
            while "payment_created" not in relay.listener.sources:
                await asyncio.sleep(0.05)
        await execute(db_url, (SNAKE.insert, ("1", "mA")))
        assert (await recv(ws, FOLLOW_WITHIN))["channel"] == "payment_created"


async def test_detach_stops_new_events_and_delivers_those_recorded_before(db_url: str) -> None:
    await prepare(db_url, SNAKE)
    settings = live_settings(db_url, egress_allow=ALLOW, reconcile_interval=60.0)
    async with receiving() as receiver, running(settings) as relay:
        await add_endpoint(
            relay.store, merchant_id="mA", url=receiver.url(), allow=relay.settings.egress_allow
        )
        async with ws_client(relay, token(settings, "mA")) as ws:
            conn = await asyncpg.connect(db_url)
            try:
                async with conn.transaction():  # the event commits with its source's detach
                    await conn.execute(SNAKE.insert, "1", "mA")
                    await conn.fetchrow("SELECT * FROM relay.detach_source('billing.payments')")
                await conn.execute(SNAKE.watched, "1")
                await conn.execute(SNAKE.insert, "2", "mA")
            finally:
                await conn.close()
            assert (await recv(ws))["data"]["id"] == "1"
            assert (await receiver.get()).json["data"]["id"] == "1"
            async with asyncio.timeout(FOLLOW_WITHIN):
                while "payment_created" in relay.listener.sources:
                    await asyncio.sleep(0.05)
            await nothing_more(ws, 0.3)
            assert await receiver.nothing_within(0.3)
            assert [e["data"]["id"] for e in await events_page(relay, token(settings, "mA"))] == ["1"]


PUSH_KEY, _PUBLIC = generate_key_pair()


@asynccontextmanager
async def push_relay(db_url: str) -> AsyncIterator[tuple[Relay, LocalPushService]]:
    settings = live_settings(
        db_url, vapid_private_key=PUSH_KEY, vapid_subject="mailto:ops@example.com", egress_allow=ALLOW
    )
    async with LocalPushService().running() as service, running(settings) as relay:
        yield relay, service


async def test_web_push_has_a_default_title_and_body_per_event(db_url: str) -> None:
    await execute(
        db_url,
        (
            "CREATE TABLE payments (id text PRIMARY KEY, merchant_id text, status text, amount_cents int)",
            (),
        ),
        ("SELECT relay.attach_source('payments', 'payment', 'merchant_id', 'id', '{status}', '{}')", ()),
    )
    browser = Browser()
    async with push_relay(db_url) as (relay, service):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as http:
            response = await http.post(
                "/push/subscriptions",
                json=browser.subscription(service.endpoint("mine"), channels=["payment_*"]),
                headers={"Authorization": f"Bearer {token(relay.settings, 'mA')}"},
            )
        assert response.status_code == 201, response.text
        assert response.json()["channels"] == ["payment_*"]
        await execute(
            db_url,
            ("INSERT INTO payments VALUES ('p_0', NULL, 'PENDING', 100)", ()),  # no tenant: nobody's
            ("""INSERT INTO "Booking" VALUES ('b1', 'mA', 'PENDING')""", ()),  # filtered out
            ("INSERT INTO payments VALUES ('p_1', 'mA', 'PENDING', 100)", ()),
            ("UPDATE payments SET amount_cents = 200 WHERE id = 'p_1'", ()),  # not watched
            ("UPDATE payments SET status = 'PAID' WHERE id = 'p_1'", ()),
            ("DELETE FROM payments WHERE id = 'p_1'", ()),
        )
        notes = []
        for _ in range(3):
            got = await asyncio.wait_for(service.received.get(), 10)
            assert got.headers["topic"] == "p_1"
            notes.append(json.loads(browser.decrypt(got.body)))
        notes.sort(key=lambda n: n["data"]["eventId"])
        assert [(n["title"], n["body"]) for n in notes] == [
            ("New payment", "Payment p_1 was created"),
            ("Payment updated", "Payment p_1: PAID"),
            ("Payment removed", "Payment p_1 was removed"),
        ]
        assert [(n["tag"], n["url"]) for n in notes] == [("payment-p_1", "/?payment=p_1")] * 3
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(service.received.get(), 0.5)


async def test_webhook_filters_take_event_names_and_wildcards_in_the_cli_and_the_api(db_url: str) -> None:
    await prepare(db_url, SNAKE)
    await execute(
        db_url,
        ("CREATE TABLE billing.refunds (id text PRIMARY KEY, merchant_id text, amount integer)", ()),
        (
            "SELECT relay.attach_source('billing.refunds', 'payment_refund', 'merchant_id', 'id', '{}', '{}')",  # noqa: E501
            (),
        ),
    )
    settings = live_settings(db_url, egress_allow=ALLOW)
    added = await asyncio.to_thread(
        relay_cli, "webhooks", "add", "--merchant", "mA", "--url", "https://hooks.example.com/x",
        "--events", "payment_*,booking_created", database_url=db_url,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    cli_endpoint = int(added.stdout.splitlines()[0].removeprefix("id="))
    refused = await asyncio.to_thread(
        relay_cli, "webhooks", "add", "--merchant", "mA", "--url", "https://a.example.com/",
        "--events", "refund_*", database_url=db_url,
    )  # fmt: skip
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "unknown event types 'refund_*'" in refused.stderr
    async with receiving() as receiver, running(settings) as relay:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as http:
            auth = {"Authorization": f"Bearer {token(settings, 'mA')}"}
            payments = await http.post(
                "/webhooks", json={"url": receiver.url("/payments"), "events": ["payment_*"]}, headers=auth
            )
            refunds = await http.post(
                "/webhooks",
                json={"url": receiver.url("/refunds"), "events": ["payment_refund_created"]},
                headers=auth,
            )
            unknown = await http.post(
                "/webhooks", json={"url": receiver.url(), "events": ["nope_*"]}, headers=auth
            )
        assert payments.status_code == 201 and payments.json()["events"] == ["payment_*"]
        assert refunds.status_code == 201, refunds.text
        assert unknown.status_code == 422 and "nope_*" in unknown.json()["error"]
        listed = await relay.store.endpoints("mA")
        assert [list(e["events"]) for e in listed if e["id"] == cli_endpoint] == [
            ["booking_created", "payment_*"]
        ]
        await relay.store.disable_endpoint(cli_endpoint, "test: the CLI's endpoint points nowhere")
        await execute(
            db_url,
            ("INSERT INTO billing.refunds VALUES ('r1', 'mA', 5)", ()),
            (SNAKE.insert, ("1", "mA")),
            (SNAKE.watched, ("1",)),
        )
        got = sorted((item.path, item.json["type"]) for item in [await receiver.get() for _ in range(3)])
        assert got == [
            ("/payments", "payment_created"),
            ("/payments", "payment_updated"),
            ("/refunds", "payment_refund_created"),
        ]  # payment_* is the payment source's events only, not payment_refund's
        assert await receiver.nothing_within(0.5)


async def test_subscribing_on_ws_to_an_unknown_event_name_is_refused(db_url: str) -> None:
    await prepare(db_url, SNAKE)
    settings = live_settings(db_url)
    async with running(settings) as relay, ws_client(relay, token(settings, "mA")) as ws:
        async with asyncio.timeout(FOLLOW_WITHIN):
            while "payment_created" not in relay.listener.sources:
                await asyncio.sleep(0.05)
        assert (await ws_answer(ws, {"type": "subscribe", "channel": "invoice_created"}))["type"] == "error"
        assert (await ws_answer(ws, {"type": "subscribe", "channel": "payment_deleted"}))[
            "type"
        ] == "subscribed"
        await execute(db_url, (SNAKE.insert, ("1", "mA")), (SNAKE.delete, ("1",)))
        message = await recv(ws)
        assert message["channel"] == "payment_deleted"  # narrowed to the one event name
        await nothing_more(ws, 0.3)
        conn = await asyncpg.connect(db_url)
        try:
            assert len(await Store(conn).sources()) == 2
        finally:
            await conn.close()
