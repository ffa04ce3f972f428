"""With every logger at DEBUG (libraries included), no credential reaches the log output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from relay import logs
from relay.webhooks.endpoints import add_endpoint
from tests.integration.livekit import live_settings, running, token
from tests.webhook_receiver import booking, write_bookings
from tests.webhook_receiver import running as receiving

# Another uvicorn.Config in the suite (log_level=..., its default log_config) leaves levels,
# handlers and propagate=False on these; Relay's own server configures none of them.
LIBRARIES = (
    *("uvicorn", "uvicorn.error", "uvicorn.access", "engineio", "engineio.server", "socketio"),
    *("socketio.server", "httpx", "httpcore", "websockets"),
)


@pytest.fixture
def debug_log(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """Relay's own logging set-up, in the format asked for, with everything at DEBUG."""
    root = logging.getLogger()
    loggers = [logging.getLogger(name) for name in LIBRARIES]
    saved = root.handlers[:], root.level, [(lg.level, lg.propagate, lg.handlers[:]) for lg in loggers]
    logs.setup(request.param, level=logging.DEBUG)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.propagate = True
        logger.handlers[:] = []
    stream = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for logger, (level, propagate, handlers) in zip(loggers, saved[2], strict=True):
            logger.setLevel(level)
            logger.propagate = propagate
            logger.handlers[:] = handlers


@pytest.mark.parametrize("debug_log", ["text", "json"], indirect=True)
async def test_no_credential_in_debug_logs_of_live_clients_and_outgoing_requests(
    db_url: str, debug_log: io.StringIO
) -> None:
    settings = live_settings(db_url, egress_allow="127.0.0.0/8")
    tok = token(settings, "m1")
    async with receiving() as receiver, running(settings) as relay:
        base = f"127.0.0.1:{relay.http_port}"
        async with connect(f"ws://{base}/ws?token={tok}") as ws:
            assert json.loads(await ws.recv())["type"] == "connected"
        async with connect(f"ws://{base}/socket.io/?EIO=4&transport=websocket&token={tok}") as sio:
            await sio.recv()
            await sio.send("40/notifications," + json.dumps({"token": tok}))
            assert str(await sio.recv()).startswith("40/notifications,{")
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://{base}/socket.io/?EIO=4&transport=polling&token={tok}")
            assert answer.status_code == 200
        # a webhook URL that is a secret itself
        await add_endpoint(
            relay.store,
            merchant_id="m1",
            url=receiver.url("/hooks/sk_live_path?sig=sk_live_query"),
            allow=settings.egress_allow,
        )
        await write_bookings(db_url, booking("b1", "m1"))
        await receiver.get()
    output = debug_log.getvalue()
    assert "WebSocket /ws?token=[redacted]" in output  # the lines are there, scrubbed
    assert "HTTP Request: POST http://127.0.0.1:" in output
    for secret in (tok, tok.split(".")[2], "sk_live_path", "sk_live_query"):
        assert secret not in output
