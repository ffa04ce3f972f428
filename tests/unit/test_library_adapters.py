"""The library internals Relay relies on, checked against the installed releases.

relay/live/wire.py (uvicorn's sans-I/O WebSocket protocol, and the websockets library's
frames under it) is the only module that reaches past a library's public API. When a
release moves what it reads, these tests fail naming it, instead of live fan-out silently
falling back to the slow path or breaking at run time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from relay.live.wire import (
    PROTOCOL_ATTRIBUTES,
    PROTOCOL_METHODS,
    Flag,
    Inbox,
    LiveWebSocketProtocol,
    RawSocket,
    ServerWithoutSignals,
    text_frame,
)


async def _noop_app(scope: Any, receive: Any, send: Any) -> None:
    return None


def _protocol() -> LiveWebSocketProtocol:
    config = uvicorn.Config(_noop_app, ws=LiveWebSocketProtocol, lifespan="off", log_config=None)
    config.load()
    return LiveWebSocketProtocol(config, ServerState(), {}, asyncio.get_running_loop())


async def test_uvicorns_websocket_protocol_still_has_what_wire_reads_and_overrides() -> None:
    protocol = _protocol()
    missing = [name for name in PROTOCOL_ATTRIBUTES if not hasattr(protocol, name)]
    methods = [
        name for name in PROTOCOL_METHODS if not callable(getattr(WebSocketsSansIOProtocol, name, None))
    ]
    assert missing + methods == [], (
        f"uvicorn {uvicorn.__version__}: WebSocketsSansIOProtocol lacks {missing + methods}"
    )
    assert hasattr(protocol.conn, "max_message_size"), "websockets: ServerProtocol.max_message_size is gone"
    # what Inbox and Flag stand in for, and no other methods of theirs than those provided
    plain = WebSocketsSansIOProtocol(protocol.config, ServerState(), {}, asyncio.get_running_loop())
    assert isinstance(plain.writable, asyncio.Event) and isinstance(plain.queue, asyncio.Queue)
    assert isinstance(protocol.writable, Flag) and isinstance(protocol.queue, Inbox)
    assert isinstance(protocol.conn, ServerProtocol)
    assert protocol.handshake_complete is False and protocol.close_sent is False


async def test_raw_socket_recognises_the_send_of_uvicorns_protocol_and_nothing_else() -> None:
    protocol = _protocol()
    assert isinstance(RawSocket.of(protocol.send), RawSocket)
    assert RawSocket.of(_noop_app) is None
    assert issubclass(LiveWebSocketProtocol, WebSocketsSansIOProtocol)


async def test_the_deflate_extension_keeps_no_context_between_messages() -> None:
    (factory,) = _protocol().conn.available_extensions
    assert factory.server_no_context_takeover and factory.client_no_context_takeover


def test_uvicorn_still_lets_the_relay_own_the_signals() -> None:
    assert callable(getattr(uvicorn.Server, "capture_signals", None)), (
        "uvicorn.Server.capture_signals is gone"
    )
    assert ServerWithoutSignals.capture_signals is not uvicorn.Server.capture_signals


def test_a_prebuilt_frame_is_what_a_websocket_client_parses() -> None:
    reader = StreamReader()
    reader.feed_data(text_frame("caf\u00e9"))
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    assert (frame.opcode, frame.data.decode()) == (Opcode.TEXT, "caf\u00e9")


async def test_the_inbox_hands_messages_over_in_order_and_waits_for_the_next() -> None:
    inbox = Inbox()
    inbox.put_nowait({"type": "websocket.connect"})
    assert inbox.qsize() == 1 and not inbox.empty()
    assert await inbox.get() == {"type": "websocket.connect"}
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})
    assert await asyncio.wait_for(waiting, 1) == {"type": "websocket.disconnect", "code": 1000}
    assert inbox.qsize() == 1


async def test_the_flag_holds_writers_while_cleared() -> None:
    flag = Flag()
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 1)
    flag.clear()
    waiting = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not waiting.done() and not flag.is_set()
    flag.set()
    await asyncio.wait_for(waiting, 1)
