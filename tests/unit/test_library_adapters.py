"""The library internals Relay relies on, checked against the installed releases.

relay/live/wire.py (uvicorn's sans-I/O WebSocket protocol) and relay/live/eio.py
(python-engineio / python-socketio) are the only modules that reach past a library's
public API. When a release moves what they read, these tests fail naming it, instead of
live fan-out silently falling back to the slow path or breaking at run time.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import engineio
import socketio
import uvicorn
from socketio import packet as sio_packet
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from relay.live import eio
from relay.live.wire import (
    PROTOCOL_ATTRIBUTES,
    PROTOCOL_METHODS,
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
    assert isinstance(protocol.writable, asyncio.Event)
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


def test_engineio_sockets_still_have_what_the_adapter_reads() -> None:
    server = engineio.AsyncServer(async_mode="asgi")
    socket = engineio.async_socket.AsyncSocket(server, "sid")
    missing = [name for name in eio.SOCKET_ATTRIBUTES if not hasattr(socket, name)]
    assert missing == [], f"python-engineio: AsyncSocket lacks {missing}"
    adapted = eio.EngineSocket(socket)
    adapted.put("packet")
    assert (adapted.queued, adapted.closed, adapted.on_websocket) == (1, False, False)


def test_socketio_still_has_the_engine_hooks_and_session_lookups() -> None:
    server = socketio.AsyncServer(async_mode="asgi")
    for name in ("_handle_eio_connect", "_handle_eio_disconnect", "_send_packet"):
        assert callable(getattr(server, name, None)), f"python-socketio: AsyncServer.{name} is gone"
    for name in ("eio_sid_from_sid", "sid_from_eio_sid"):
        assert callable(getattr(server.manager, name, None)), f"python-socketio: manager.{name} is gone"
    assert isinstance(server.eio.sockets, dict)

    async def connected(_eio_sid: str, _environ: dict[str, Any]) -> None:
        return None

    eio.hook(server, connected=connected)
    assert eio.EngineSocket.of(server, "nobody", "/notifications") is None
    assert eio.EngineSocket.of_engine(server, None) is None
    assert eio.session_of(server, "nobody", "/notifications") is None
    assert eio.websocket_send(server, "nobody", "/notifications") is None


def test_engineio_sockets_can_still_be_ended_without_waiting() -> None:
    for name in ("send", "close"):
        assert callable(getattr(engineio.async_socket.AsyncSocket, name, None)), f"AsyncSocket.{name} is gone"
    assert "abort" in inspect.signature(engineio.async_socket.AsyncSocket.close).parameters
    assert isinstance(eio.eio_payload.Payload.max_decode_packets, int)


def test_an_event_packet_is_the_socketio_wire_format_with_the_offset_last() -> None:
    text, packet = eio.event_packet("/notifications", "booking_created", {"id": "b1"}, "42")
    assert text == '42/notifications,["booking_created",{"id":"b1"},"42"]'
    assert packet.encode() == text


async def test_the_connect_acknowledgement_carries_what_the_gateway_adds() -> None:
    server = socketio.AsyncServer(async_mode="asgi")
    sent: list[str] = []

    async def send(_eio_sid: str, data: str) -> None:
        sent.append(data)

    server.eio.send = send  # type: ignore[method-assign]
    eio.add_to_connect_ack(server, lambda sid: {"pid": f"pid-of-{sid}"})
    await server._send_packet("e1", sio_packet.Packet(sio_packet.CONNECT, {"sid": "s1"}, namespace="/n"))
    await server._send_packet("e1", sio_packet.Packet(sio_packet.EVENT, ["x", {"sid": "s1"}], namespace="/n"))
    assert sent == ['0/n,{"sid":"s1","pid":"pid-of-s1"}', '2/n,["x",{"sid":"s1"}]']
