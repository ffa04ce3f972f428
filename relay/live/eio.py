"""What the Socket.IO gateway needs from python-socketio and python-engineio beyond their
public API: the Engine.IO socket behind a session (its packet queue and upgrade state), the
ASGI ``send`` of a session on the websocket transport, hooks on Engine.IO connects and
disconnects, an event's packet built once, and the checks of a client's packets before the
libraries parse them. Every such detail is touched here and nowhere else;
``tests/unit/test_library_adapters.py`` fails, naming the attribute, when a release changes one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from socketio import packet as sio_packet

# What the adapter reads of an Engine.IO socket (engineio.base_socket.BaseSocket.__init__).
SOCKET_ATTRIBUTES = ("queue", "upgrading", "upgraded", "closed")
# The environ keys engineio's ASGI driver fills in for every request.
SCOPE_KEY, SEND_KEY = "asgi.scope", "asgi.send"
# Engine.IO packets a client sends; the upgrade probe ("2probe") only on a WebSocket.
CLIENT_PACKETS = (eio_packet.CLOSE, eio_packet.PONG, eio_packet.MESSAGE, eio_packet.UPGRADE)
DECODE_ERRORS = (ValueError, RecursionError)  # RecursionError: JSON nested past the parser's limit

Connected = Callable[[str, dict[str, Any]], Awaitable[None]]
Disconnected = Callable[[str, object], Awaitable[None]]


def event_packet(namespace: str, name: str, *args: object) -> tuple[str, Any]:
    """An event as Engine.IO text (``42/ns,["name",{...},...]``) and as the packet its queue takes."""
    message = sio_packet.Packet(sio_packet.EVENT, data=[name, *args], namespace=namespace)
    packet = eio_packet.Packet(eio_packet.MESSAGE, message.encode())
    text: str = packet.encode()
    return text, packet


class EngineSocket:
    """The Engine.IO socket of one session."""

    __slots__ = ("_socket",)

    def __init__(self, socket: Any) -> None:
        self._socket = socket

    @classmethod
    def of(cls, server: socketio.AsyncServer, sid: str, namespace: str) -> EngineSocket | None:
        """The socket of Socket.IO session ``sid`` in ``namespace``."""
        return cls.of_engine(server, server.manager.eio_sid_from_sid(sid, namespace))

    @classmethod
    def of_engine(cls, server: socketio.AsyncServer, eio_sid: str | None) -> EngineSocket | None:
        socket = server.eio.sockets.get(eio_sid) if eio_sid else None
        return cls(socket) if socket is not None else None

    @property
    def closed(self) -> bool:
        return bool(self._socket.closed)

    @property
    def queued(self) -> int:
        """Packets waiting in the library's queue for this client."""
        return int(self._socket.queue.qsize())

    @property
    def on_websocket(self) -> bool:
        """True once the session runs on the websocket transport and is not mid-upgrade."""
        return bool(self._socket.upgraded and not self._socket.upgrading)

    def put(self, packet: Any) -> None:
        self._socket.queue.put_nowait(packet)

    async def end(self) -> None:
        """Close the session whatever its transport, without waiting on the client.

        (``AsyncServer.disconnect`` waits until the client has read its CLOSE packet: for
        a long-polling client that never polls again, for ever.)
        """
        if self._socket.closed:
            return
        await self._socket.send(eio_packet.Packet(eio_packet.CLOSE))  # for a client that listens
        await self._socket.close(wait=False, abort=True)  # the disconnect handlers run; see hook()


def websocket_send(server: socketio.AsyncServer, sid: str, namespace: str) -> Any:
    """The ASGI ``send`` of the session's connection when it is a WebSocket, else None."""
    environ: dict[str, Any] = server.get_environ(sid, namespace) or {}
    scope = environ.get(SCOPE_KEY) or {}
    return environ.get(SEND_KEY) if scope.get("type") == "websocket" else None


def session_of(server: socketio.AsyncServer, eio_sid: str | None, namespace: str) -> str | None:
    """The Socket.IO session an Engine.IO session has in ``namespace``, if it connected it."""
    return server.manager.sid_from_eio_sid(eio_sid, namespace) if eio_sid else None


def scope_of(environ: dict[str, Any]) -> dict[str, Any]:
    scope: dict[str, Any] = environ.get(SCOPE_KEY) or {}
    return scope


def hook(server: socketio.AsyncServer, *, connected: Connected) -> None:
    """Run ``connected(eio_sid, environ)`` after socketio has handled an Engine.IO connect, and
    end a disconnected session's queue: a client that closes over polling leaves a long-poll
    GET waiting ~45 s (and shutdown waiting for it); ending the queue answers it at once."""
    handle_connect: Connected = server._handle_eio_connect
    handle_disconnect: Disconnected = server._handle_eio_disconnect

    async def on_connect(eio_sid: str, environ: dict[str, Any]) -> None:
        await handle_connect(eio_sid, environ)
        await connected(eio_sid, environ)

    async def on_disconnect(eio_sid: str, reason: object = None) -> None:
        socket = server.eio.sockets.get(eio_sid)
        await handle_disconnect(eio_sid, reason)
        if socket is not None:
            socket.queue.put_nowait(None)

    server.eio.on("connect", on_connect)
    server.eio.on("disconnect", on_disconnect)


def add_to_connect_ack(server: socketio.AsyncServer, extra: Callable[[str], dict[str, Any]]) -> None:
    """Add ``extra(sid)`` to the data of the CONNECT acknowledgement socketio sends for
    session ``sid`` (``{"sid": ...}``): socketio has no way to put a recovery ``pid`` there."""
    send_packet: Callable[[str, Any], Awaitable[None]] = server._send_packet

    async def send(eio_sid: str, packet: Any) -> None:
        data = packet.data
        if packet.packet_type == sio_packet.CONNECT and isinstance(data, dict) and "sid" in data:
            packet.data = {**data, **extra(data["sid"])}
        await send_packet(eio_sid, packet)

    server._send_packet = send


def packet_problem(data: object, *, websocket: bool) -> str | None:
    """Why one Engine.IO packet from a client is refused, or None when Relay takes it.

    engineio and socketio raise on such packets deep inside (some outside any handler,
    logging a traceback per packet, some twice); checking them first turns each into one
    refusal. Binary data is refused: Relay's protocol has none.
    """
    if not isinstance(data, str):
        return "binary data"
    try:
        packet = eio_packet.Packet(encoded_packet=data)
    except DECODE_ERRORS:
        return "not an Engine.IO packet"
    kind = packet.packet_type
    if packet.binary:
        return "binary data"
    if websocket and kind == eio_packet.PING and packet.data == "probe":
        return None
    if kind not in CLIENT_PACKETS or (kind == eio_packet.UPGRADE and not websocket):
        return f"unexpected Engine.IO packet type {kind}"
    if kind != eio_packet.MESSAGE:
        return None
    if not isinstance(packet.data, str):  # every Socket.IO packet starts with a digit
        return "not a Socket.IO packet"
    try:
        message = sio_packet.Packet(encoded_packet=packet.data)
    except DECODE_ERRORS:
        return "not a Socket.IO packet"
    kind, args = message.packet_type, message.data
    if (
        (kind == sio_packet.CONNECT and (args is None or isinstance(args, dict)))
        or kind == sio_packet.DISCONNECT
        or (kind == sio_packet.EVENT and isinstance(args, list) and args and isinstance(args[0], str))
        or (kind == sio_packet.ACK and isinstance(args, list))
    ):
        return None
    return f"unexpected Socket.IO packet (type {kind})"


def payload_problem(body: bytes) -> str | None:
    """Why a long-polling POST body is refused, or None."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return "not UTF-8"
    packets = text.split("\x1e")
    if len(packets) > eio_payload.Payload.max_decode_packets:
        return "too many packets"
    for packet in packets:
        problem = packet_problem(packet, websocket=False)
        if problem is not None:
            return problem
    return None
