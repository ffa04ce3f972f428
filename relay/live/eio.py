"""What Socket.IO fan-out needs from python-socketio and python-engineio beyond their public API.

The Engine.IO socket behind a Socket.IO session (its packet queue and upgrade state),
the ASGI ``send`` of a session on the websocket transport, an event's packet built once,
and a hook on Engine.IO disconnects. Every such detail of the two libraries is touched
here and nowhere else; ``tests/unit/test_library_adapters.py`` fails, naming the
attribute, when a release changes one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

# What the adapter reads of an Engine.IO socket (engineio.base_socket.BaseSocket.__init__).
SOCKET_ATTRIBUTES = ("queue", "upgrading", "upgraded", "closed")
# The environ keys engineio's ASGI driver fills in for every request.
SCOPE_KEY, SEND_KEY = "asgi.scope", "asgi.send"


def event_packet(namespace: str, name: str, data: object) -> tuple[str, Any]:
    """An event as Engine.IO text (``42/ns,["name",{...}]``) and as the packet its queue takes."""
    message = sio_packet.Packet(sio_packet.EVENT, data=[name, data], namespace=namespace)
    packet = eio_packet.Packet(eio_packet.MESSAGE, message.encode())
    text: str = packet.encode()
    return text, packet


class EngineSocket:
    """The Engine.IO socket of one Socket.IO session."""

    __slots__ = ("_socket",)

    def __init__(self, socket: Any) -> None:
        self._socket = socket

    @classmethod
    def of(cls, server: socketio.AsyncServer, sid: str, namespace: str) -> EngineSocket | None:
        socket = server.eio.sockets.get(server.manager.eio_sid_from_sid(sid, namespace))
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


def websocket_send(server: socketio.AsyncServer, sid: str, namespace: str) -> Any:
    """The ASGI ``send`` of the session's connection when it is a WebSocket, else None."""
    environ: dict[str, Any] = server.get_environ(sid, namespace) or {}
    scope = environ.get(SCOPE_KEY) or {}
    return environ.get(SEND_KEY) if scope.get("type") == "websocket" else None


def end_long_polls_on_disconnect(server: socketio.AsyncServer) -> None:
    """A client that closes over polling leaves a long-poll GET waiting ~45 s (and shutdown
    waiting for it); ending its Engine.IO queue after the disconnect answers it at once."""
    handle: Callable[[str, object], Awaitable[None]] = server._handle_eio_disconnect

    async def disconnect(eio_sid: str, reason: object = None) -> None:
        socket = server.eio.sockets.get(eio_sid)
        await handle(eio_sid, reason)
        if socket is not None:
            socket.queue.put_nowait(None)

    server.eio.on("disconnect", disconnect)
