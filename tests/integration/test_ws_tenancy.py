from __future__ import annotations

from livekit import insert, live_settings, nothing_more, recv, running, token, ws_client


async def test_ws_client_receives_own_merchant_events_and_never_another_merchants(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with ws_client(relay, token(settings, "mA")) as a, ws_client(relay, token(settings, "mB")) as b:
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
