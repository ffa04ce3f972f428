from __future__ import annotations

import asyncpg

from tests.integration.livekit import insert, live_settings, nothing_more, recv, running, token, ws_client


async def test_ws_client_receives_own_merchant_events_and_never_another_merchants(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with ws_client(relay, token(settings, "mA")) as a, ws_client(relay, token(settings, "mB")) as b:
            assert [s.direct for s in relay.hub.sinks("mA")] == [True]  # frames written straight out
            await insert(db_url, ("b-b1", "mB"), ("b-a1", "mA"))
            got_a = await recv(a)
            assert got_a["type"] == "event"
            assert got_a["channel"] == "booking_created"
            assert got_a["data"]["id"] == "b-a1"
            assert got_a["data"]["merchantId"] == "mA"
            assert got_a["data"]["operation"] == "INSERT"
            assert isinstance(got_a["cursor"], str)
            got_b = await recv(b)
            assert got_b["data"]["id"] == "b-b1"
            await nothing_more(a)
            await nothing_more(b)


async def test_ws_subscribe_to_another_merchants_room_is_refused_and_changes_nothing(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with ws_client(relay, token(settings, "mA")) as a:
            await a.send('{"type":"subscribe","channel":"merchant:mB"}')
            reply = await recv(a)
            assert reply["type"] == "error"
            assert "merchant" in reply["message"]
            await insert(db_url, ("b-b1", "mB"))
            await nothing_more(a)
            await a.send('{"type":"subscribe","channel":"merchant:mA"}')
            assert await recv(a) == {"type": "subscribed", "channel": "merchant:mA"}


async def test_ws_subscribe_to_a_channel_narrows_the_stream_and_unsubscribe_leaves_it(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with ws_client(relay, token(settings, "mA")) as a:
            await a.send('{"type":"subscribe","channel":"booking_updated"}')
            assert await recv(a) == {"type": "subscribed", "channel": "booking_updated"}
            await insert(db_url, ("b1", "mA"))
            await nothing_more(a)
            conn = await asyncpg.connect(db_url)
            await conn.execute("""UPDATE "Booking" SET status = 'CONFIRMED' WHERE id = 'b1'""")
            got = await recv(a)
            assert (got["channel"], got["data"]["newStatus"]) == ("booking_updated", "CONFIRMED")
            await a.send('{"type":"unsubscribe","channel":"booking_updated"}')
            assert await recv(a) == {"type": "unsubscribed", "channel": "booking_updated"}
            await conn.execute("""UPDATE "Booking" SET status = 'DONE' WHERE id = 'b1'""")
            await conn.close()
            await nothing_more(a)


async def test_ws_negotiates_permessage_deflate_without_context_takeover_and_events_still_decode(
    db_url: str,
) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with ws_client(relay, token(settings, "mA"), compression="deflate") as a:
            assert a.response is not None
            extensions = a.response.headers["Sec-WebSocket-Extensions"]
            assert "permessage-deflate" in extensions
            assert "server_no_context_takeover" in extensions
            assert "client_no_context_takeover" in extensions
            await a.send('{"type":"subscribe","channel":"booking_created"}')  # compressed both ways
            assert await recv(a) == {"type": "subscribed", "channel": "booking_created"}
            await insert(db_url, ("b1", "mA"), ("b2", "mA"))  # prebuilt frames, uncompressed
            assert [(await recv(a))["data"]["id"] for _ in range(2)] == ["b1", "b2"]
            await a.send('{"type":"unsubscribe","channel":"booking_created"}')
            assert await recv(a) == {"type": "unsubscribed", "channel": "booking_created"}
