from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay import app, metrics
from relay.config import Settings


def with_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture
async def listen_role(db_url: str) -> AsyncIterator[str]:
    """A login role for the listen connection only, which the test can lock out."""
    role = f"relay_listen_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(db_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        yield role
    finally:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def wait_for_status(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    async def poll() -> httpx.Response:
        while True:
            response = await client.get(path)
            if response.status_code == status:
                return response
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(poll(), 15)


async def test_healthz_answers_while_alive(settings: Settings) -> None:
    async with app.start(settings) as relay:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
            response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_503_while_listener_is_down_and_200_after_it_reconnects(
    settings: Settings, db_url: str, listen_role: str
) -> None:
    settings = settings.model_copy(update={"listen_database_url": with_user(db_url, listen_role)})
    admin = await asyncpg.connect(db_url)
    try:
        async with app.start(settings) as relay:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
                await asyncio.wait_for(relay.listener.connected.wait(), 10)
                assert (await wait_for_status(client, "/readyz", 200)).json() == {"status": "ready"}
                reconnects = counter("relay_listener_reconnects_total")
                down_seconds = counter("relay_listener_disconnected_seconds_total")

                await admin.execute(f'ALTER ROLE "{listen_role}" NOLOGIN')
                killed = await admin.fetchval("SELECT pg_terminate_backend($1)", relay.listener.backend_pid)
                assert killed

                down = await wait_for_status(client, "/readyz", 503)
                assert down.json()["problems"] == ["listener not connected"]
                await asyncio.sleep(1.5)  # reconnect attempts are refused meanwhile
                assert (await client.get("/readyz")).status_code == 503

                await admin.execute(f'ALTER ROLE "{listen_role}" LOGIN')
                await wait_for_status(client, "/readyz", 200)
                assert relay.listener.connected.is_set()
    finally:
        await admin.close()
    assert counter("relay_listener_reconnects_total") == reconnects + 1
    assert counter("relay_listener_disconnected_seconds_total") - down_seconds >= 1.5


def counter(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_parse_and_counters_move_when_events_flow(settings: Settings, db_url: str) -> None:
    created = ("relay_events_received_total", (("channel", "booking_created"),))
    updated = ("relay_events_received_total", (("channel", "booking_updated"),))
    handed_on = ("relay_events_handed_on_total", ())
    handed: asyncio.Queue[int] = asyncio.Queue()
    async with app.start(settings) as relay:
        relay.feed.subscribe(lambda events: [handed.put_nowait(e.id) for e in events])
        await asyncio.wait_for(relay.feed.started.wait(), 10)
        await asyncio.wait_for(relay.listener.connected.wait(), 10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
            first = await client.get("/metrics")
            assert first.status_code == 200
            assert first.headers["content-type"].startswith("text/plain")
            before = samples(first.text)

            conn = await asyncpg.connect(db_url)
            try:
                for i in range(3):
                    await conn.execute(
                        """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'm1', 'PENDING')""",
                        f"b{i}",
                    )
                await conn.execute("""UPDATE "Booking" SET status = 'CONFIRMED' WHERE id = 'b0'""")
            finally:
                await conn.close()
            for _ in range(4):
                await asyncio.wait_for(handed.get(), 5)
            after = samples((await client.get("/metrics")).text)

    assert after[created] - before.get(created, 0) == 3
    assert after[updated] - before.get(updated, 0) == 1
    assert after[handed_on] - before[handed_on] == 4
    assert after[("relay_listener_connected", ())] == 1
    assert 0 <= after[("relay_notify_queue_usage", ())] < 1
    # The queue-depth job has run at start-up: the gauges exist, empty.
    assert after[("relay_deliveries_pending", (("channel", "webhook"), ("state", "pending")))] == 0
    for name in (
        "relay_notifications_malformed_total",
        "relay_listener_reconnects_total",
        "relay_listener_disconnected_seconds_total",
        "relay_events_recovered_total",
    ):
        assert (name, ()) in after, name
