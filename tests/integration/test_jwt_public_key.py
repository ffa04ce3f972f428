"""With RELAY_JWT_PUBLIC_KEY, a token of a kind the key does not check is refused on every
token route (401 on /events, close 4401 on /ws, a refused Socket.IO connect), never a 500."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import aiohttp
import httpx
import jwt
import pytest
import socketio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay.app import Relay
from relay.config import Settings
from tests.conftest import make_settings
from tests.integration.livekit import running, ws_client, ws_url
from tests.jwtkeys import EC_PRIVATE, OTHER_RSA_PRIVATE, RSA_PRIVATE, RSA_PUBLIC, SECRET


def _claims() -> dict[str, object]:
    return {"sub": "u1", "merchantId": "m1", "exp": int(time.time()) + 120}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_keyed_with_the_public_key() -> str:
    """The algorithm-confusion forgery: HMAC over the token with the public key as secret."""
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(_claims()).encode())
    )
    signature = hmac.new(RSA_PUBLIC.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


BAD_TOKENS = {
    "HS256 keyed with the public key": _hs256_keyed_with_the_public_key(),
    "HS256 with a secret": jwt.encode(_claims(), SECRET, algorithm="HS256"),
    "ES256 from an EC key": jwt.encode(_claims(), EC_PRIVATE, algorithm="ES256"),
    "RS256 from another RSA key": jwt.encode(_claims(), OTHER_RSA_PRIVATE, algorithm="RS256"),
    "PS256 from the right key, not allowed": jwt.encode(_claims(), RSA_PRIVATE, algorithm="PS256"),
}


def _settings(db_url: str, allowed: str) -> Settings:
    settings = make_settings(db_url, jwt_public_key=RSA_PUBLIC, jwt_algorithms=["RS256"])
    if allowed == "RS256,HS256 past validation":
        # Start-up refuses this setting; the verifier still answers 401 if one got through.
        return settings.model_copy(update={"jwt_algorithms": ["RS256", "HS256"]})
    return settings


async def _socketio_refused(relay: Relay, token: str) -> bool:
    async with aiohttp.ClientSession() as session:
        client = socketio.AsyncClient(reconnection=False, http_session=session)
        try:
            await client.connect(
                f"http://127.0.0.1:{relay.http_port}",
                namespaces=["/notifications"],
                auth={"token": token},
                transports=["websocket"],
                wait_timeout=5,
            )
        except socketio.exceptions.ConnectionError:
            return True
        await client.disconnect()
        return False


@pytest.mark.parametrize("allowed", ["RS256", "RS256,HS256 past validation"])
async def test_tokens_of_a_kind_the_key_does_not_check_get_401_never_500(db_url: str, allowed: str) -> None:
    good = jwt.encode(_claims(), RSA_PRIVATE, algorithm="RS256")
    async with running(_settings(db_url, allowed)) as relay:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
            ok = await client.get("/events", headers={"Authorization": f"Bearer {good}"})
            assert ok.status_code == 200, ok.text
            for name, bad in BAD_TOKENS.items():
                refused = await client.get("/events", headers={"Authorization": f"Bearer {bad}"})
                assert refused.status_code == 401, (name, refused.status_code, refused.text)
                assert refused.json()["error"].startswith("invalid token"), name
        for name, bad in BAD_TOKENS.items():
            async with connect(ws_url(relay, f"token={bad}")) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401, name
            assert await _socketio_refused(relay, bad), name
        async with ws_client(relay, good):
            pass
        assert not await _socketio_refused(relay, good)
