from __future__ import annotations

import asyncio

import asyncpg

from relay import app
from relay.config import Settings


async def test_insert_reaches_consumer(settings: Settings, db_url: str) -> None:
    got: asyncio.Queue[object] = asyncio.Queue()
    async with app.start(settings, serve_http=False) as relay:
        relay.feed.subscribe(lambda events: [got.put_nowait(e) for e in events])
        await relay.feed.started.wait()
        await relay.listener.connected.wait()
        conn = await asyncpg.connect(db_url)
        await conn.execute(
            """INSERT INTO "Booking" (id, "merchantId", status) VALUES ('b1', 'm1', 'PENDING')"""
        )
        await conn.close()
        event = await asyncio.wait_for(got.get(), 5)
        assert event.data["id"] == "b1"  # type: ignore[attr-defined]
