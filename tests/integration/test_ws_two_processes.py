from __future__ import annotations

from tests.integration.livekit import insert, live_settings, recv, running, token, ws_client
from tests.integration.test_socketio_gateway import sio_client


async def test_clients_on_two_relays_sharing_one_database_each_receive_every_event(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as one, running(settings) as two:
        assert one.http_port != two.http_port
        tok = token(settings, "mA")
        async with (
            ws_client(one, tok) as a,
            ws_client(two, tok) as b,
            sio_client(one, tok, transports=["websocket"]) as c,
            sio_client(two, tok, transports=["websocket"]) as d,
        ):
            assert (await c.next())[0] == (await d.next())[0] == "connected"
            await insert(db_url, ("b1", "mA"), ("b2", "mA"), ("b3", "mA"))
            for ws in (a, b):
                assert [(await recv(ws))["data"]["id"] for _ in range(3)] == ["b1", "b2", "b3"]
            for sio in (c, d):
                assert [(await sio.next())[1]["id"] for _ in range(3)] == ["b1", "b2", "b3"]
