"""The feed is the only caller of the sequencer: readers (GET /events, /ws replay) read by
position and never queue on the sequencer's advisory lock themselves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import httpx

from tests.integration.livekit import insert, live_settings, recv, running, token, ws_client

# What relay.sequence_events() takes, held here by a session of our own.
SEQUENCER_LOCK = "SELECT pg_advisory_lock(hashtext('relay.sequencer'))"


@contextlib.asynccontextmanager
async def sequencer_held(db_url: str) -> AsyncIterator[None]:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(SEQUENCER_LOCK)
        yield
    finally:
        await conn.close()


async def test_polling_answers_with_what_is_sequenced_while_the_sequencer_is_busy(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        tok = token(settings, "mA")
        async with ws_client(relay, tok) as ws:
            await insert(db_url, ("first", "mA"))
            assert (await recv(ws))["data"]["id"] == "first"  # sequenced by the feed
        async with sequencer_held(db_url), httpx.AsyncClient() as client:
            await insert(db_url, ("stuck", "mA"))  # cannot be sequenced while the lock is held
            response = await asyncio.wait_for(
                client.get(
                    f"http://127.0.0.1:{relay.http_port}/events",
                    headers={"Authorization": f"Bearer {tok}"},
                ),
                20,
            )
        assert response.status_code == 200
        assert [e["data"]["id"] for e in response.json()["events"]] == ["first"]


async def test_ws_replay_sends_what_is_sequenced_while_the_sequencer_is_busy(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        tok = token(settings, "mA")
        async with ws_client(relay, tok) as ws:
            await insert(db_url, ("first", "mA"), ("second", "mA"))
            cursor = (await recv(ws))["cursor"]
            assert (await recv(ws))["data"]["id"] == "second"
        lock = await asyncpg.connect(db_url)
        try:
            await lock.execute(SEQUENCER_LOCK)
            await insert(db_url, ("stuck", "mA"))
            async with ws_client(relay, tok, since=cursor) as resumed:
                assert (await recv(resumed, 20))["data"]["id"] == "second"
                await lock.close()  # the feed sequences the held-back event: it arrives live
                assert (await recv(resumed, 20))["data"]["id"] == "stuck"
        finally:
            await lock.close()
