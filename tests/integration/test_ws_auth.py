from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import make_settings
from tests.integration.livekit import SECRET, live_settings, recv, running, token, ws_client, ws_url


def _claims(**extra: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "sub": "u1",
        "merchantId": "mA",
        "exp": int(time.time()) + 60,
        "aud": "relay",
    }
    claims.update(extra)
    return claims


BAD_TOKENS = {
    "missing": None,
    "malformed": "not.a.jwt",
    "wrong signature": jwt.encode(_claims(), "another-secret-0123456789abcdef0123", algorithm="HS256"),
    "alg none": jwt.encode(_claims(), None, algorithm="none"),
    "expired": jwt.encode(_claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256"),
    "wrong audience": jwt.encode(_claims(aud="someone-else"), SECRET, algorithm="HS256"),
    "no merchantId": jwt.encode({"sub": "u1", "exp": int(time.time()) + 60, "aud": "relay"}, SECRET),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_ws_refuses_bad_token_with_4401(db_url: str, case: str) -> None:
    settings = live_settings(db_url, jwt_audience="relay")
    bad = BAD_TOKENS[case]
    async with running(settings) as relay:
        async with connect(ws_url(relay, f"token={bad}" if bad else "")) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401
        # the good token works on the same relay
        async with ws_client(relay, token(settings, "mA")):
            pass


async def test_ws_accepts_bearer_header_for_non_browser_clients(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        headers = {"Authorization": f"Bearer {token(settings, 'mA', user='u9')}"}
        async with connect(ws_url(relay, ""), additional_headers=headers) as ws:
            assert await recv(ws) == {"type": "connected", "userId": "u9", "merchantId": "mA"}


async def test_ws_socket_is_closed_with_4401_when_its_token_expires(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with ws_client(relay, token(settings, "mA", ttl=2)) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401
        assert "expired" in closed.value.rcvd.reason


async def test_ws_refuses_foreign_origin_and_allows_same_origin_and_configured_ones(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        url = ws_url(relay, f"token={token(settings, 'mA')}")
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        async with connect(url, origin=f"http://127.0.0.1:{relay.http_port}") as ws:  # type: ignore[arg-type]
            assert (await recv(ws))["type"] == "connected"
    settings = live_settings(db_url, allowed_origins="https://app.example")
    async with running(settings) as relay:
        url = ws_url(relay, f"token={token(settings, 'mA')}")
        async with connect(url, origin="https://app.example") as ws:  # type: ignore[arg-type]
            assert (await recv(ws))["type"] == "connected"
        with pytest.raises(InvalidStatus):
            async with connect(url, origin=f"http://127.0.0.1:{relay.http_port}"):  # type: ignore[arg-type]
                pass


async def test_ws_answers_503_while_jwt_is_off(db_url: str) -> None:
    async with running(make_settings(db_url)) as relay:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(relay, "token=x")):
                pass
        assert refused.value.response.status_code == 503
        assert b"RELAY_JWT_SECRET" in refused.value.response.body


async def test_ws_answers_binary_and_non_json_with_errors_and_closes_on_oversized_messages(
    db_url: str,
) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        async with ws_client(relay, token(settings, "mA")) as ws:
            await ws.send(b"\x00\x01")
            assert (await recv(ws))["type"] == "error"
            await ws.send("{not json")
            assert (await recv(ws))["type"] == "error"
            await ws.send('{"type":"shout"}')
            assert (await recv(ws))["type"] == "error"
            await ws.send("x" * 5000)
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
