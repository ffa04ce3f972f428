"""Direct frame writes to an accepted WebSocket, for fan-out without one await per client.

uvicorn's websockets (sans-I/O) protocol writes each outgoing frame with one
synchronous ``transport.write``; writing a prebuilt, unmasked, uncompressed text
frame to the same transport is therefore a valid frame between two others (an
uncompressed message is allowed and leaves permessage-deflate state untouched,
RFC 7692 section 6). Only the hot path (events) goes this way; everything else
(handshake, replies, close, pings) stays with the server.

The ASGI ``send`` callable handed to the outermost app is the protocol's bound
method; ``CaptureSend`` records it in the scope so that handlers behind
middleware that wraps ``send`` can still find the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

SCOPE_KEY = "relay.raw_send"

try:  # uvicorn's default WebSocket implementation when `websockets` is installed
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - another server: every write goes through ASGI
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]


class RawSocket:
    """The transport under one accepted uvicorn WebSocket."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._transport: asyncio.WriteTransport = protocol.transport

    @classmethod
    def of(cls, send: object) -> RawSocket | None:
        """The connection behind an ASGI ``send``, or None when it is not one we can write to."""
        protocol = getattr(send, "__self__", None)
        if WebSocketsSansIOProtocol is None or not isinstance(protocol, WebSocketsSansIOProtocol):
            return None
        return cls(protocol)

    @classmethod
    def of_scope(cls, scope: Scope) -> RawSocket | None:
        return cls.of(scope.get(SCOPE_KEY))

    @property
    def open(self) -> bool:
        p = self._protocol
        return bool(p.handshake_complete and not p.close_sent and not p.disconnected) and not (
            self._transport.is_closing()
        )

    @property
    def buffered(self) -> int:
        """Bytes accepted for this client but not yet taken by the kernel."""
        return self._transport.get_write_buffer_size()

    def write(self, frame: bytes) -> None:
        self._transport.write(frame)

    def limit_kernel_buffer(self, size: int) -> None:
        """Cap the kernel's send buffer (no autotuning to megabytes) so a stalled client shows."""
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


class CaptureSend:
    """ASGI middleware: remember the server's own ``send`` for WebSocket scopes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SCOPE_KEY] = send
        await self.app(scope, receive, send)
