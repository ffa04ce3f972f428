from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from websockets.asyncio.client import connect

from tests.integration.livekit import insert, live_settings, recv, running, token, ws_client, ws_url


async def test_ws_resume_with_since_delivers_every_event_once_in_order_across_out_of_order_commits(
    db_url: str,
) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with ws_client(relay, token(settings, "mA")) as ws:
            await insert(db_url, ("first", "mA"))
            cursor = (await recv(ws))["cursor"]
        # Disconnected: two transactions commit out of id order, plus unrelated merchant noise.
        late, early = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
        late_tx = late.transaction()
        await late_tx.start()
        await late.execute("""INSERT INTO "Booking" (id, "merchantId", status) VALUES ('late', 'mA', 'P')""")
        await early.execute(
            """INSERT INTO "Booking" (id, "merchantId", status) VALUES ('early', 'mA', 'P')"""
        )
        await insert(db_url, ("other", "mB"), ("second", "mA"))
        # The running relay sequences what has committed so far; only then does the
        # transaction holding the lowest id commit.
        sequenced = """SELECT count(*) FROM relay.events
                       WHERE booking_id IN ('early', 'second') AND position IS NOT NULL"""
        async with asyncio.timeout(5):
            while await early.fetchval(sequenced) < 2:
                await asyncio.sleep(0.01)
        await late_tx.commit()
        expected = ["early", "second", "late"]

        async def keep_writing() -> None:  # events committed while the replay runs
            for i in range(40):
                await early.execute(
                    """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'mA', 'P')""", f"live{i}"
                )
                await asyncio.sleep(0.002)

        expected += [f"live{i}" for i in range(40)]
        writer = asyncio.create_task(keep_writing())
        got: list[dict[str, Any]] = []
        async with connect(ws_url(relay, f"token={token(settings, 'mA')}&since={cursor}")) as ws:
            assert (await recv(ws))["type"] == "connected"
            assert (await recv(ws))["type"] == "presence"
            while len(got) < len(expected):
                got.append(await recv(ws))
            await writer
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)
        await late.close()
        await early.close()
        ids = [m["data"]["id"] for m in got]
        assert ids[:3] == ["early", "second", "late"]  # commit order, not id order
        assert ids == expected
        positions = [int(m["cursor"]) for m in got]
        assert positions == sorted(set(positions))


async def test_ws_resume_with_invalid_cursor_is_an_error(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with connect(ws_url(relay, f"token={token(settings, 'mA')}&since=abc")) as ws:
            assert (await recv(ws)) == {"type": "error", "message": "invalid cursor"}


async def test_ws_without_since_is_live_only(db_url: str) -> None:
    settings = live_settings(db_url)
    await insert(db_url, ("before", "mA"))
    conn = await asyncpg.connect(db_url)
    await conn.execute("SELECT relay.sequence_events()")  # already handed on before this relay started
    await conn.close()
    async with running(settings) as relay:
        async with ws_client(relay, token(settings, "mA")) as ws:
            await insert(db_url, ("after", "mA"))
            assert (await recv(ws))["data"]["id"] == "after"
