"""uvicorn's WebSocket protocol, adapted: direct frame writes to an accepted WebSocket, for
fan-out without one await per client. The only module that touches uvicorn's (or the
websockets library's) internals; ``tests/unit/test_library_adapters.py`` fails, naming
the attribute, when a release changes one.

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
import logging
import socket
from collections.abc import Awaitable
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

SCOPE_KEY = "relay.raw_send"
# What RawSocket reads of uvicorn's protocol (set in WebSocketsSansIOProtocol.__init__).
PROTOCOL_ATTRIBUTES = ("transport", "handshake_complete", "close_sent", "disconnected", "writable", "conn")


def text_frame(text: str) -> bytes:
    """A complete, unmasked, uncompressed WebSocket text frame (as a server sends it)."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


class LiveWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets protocol with a permessage-deflate that holds no zlib state
    between messages (``server_no_context_takeover``, ``client_no_context_takeover``).

    With context takeover every connection keeps a compressor and a decompressor
    alive (about 37 KB together at uvicorn's settings) even while idle; live pages are
    idle nearly all the time and Relay's event frames are sent uncompressed anyway.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if config.ws_per_message_deflate:
            deflate = ServerPerMessageDeflateFactory(
                server_no_context_takeover=True,
                client_no_context_takeover=True,
                server_max_window_bits=12,
                client_max_window_bits=12,
                compress_settings={"memLevel": 5},
            )
            self.conn = ServerProtocol(
                extensions=[deflate], max_size=config.ws_max_size, logger=logging.getLogger("uvicorn.error")
            )


class ServerWithoutSignals(uvicorn.Server):
    """uvicorn without its own signal handling: the relay decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


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
        if not isinstance(protocol, WebSocketsSansIOProtocol):
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
    def writable(self) -> bool:
        """False while the server holds its own writes back (buffer above the high-water mark)."""
        return bool(self._protocol.writable.is_set())

    @property
    def buffered(self) -> int:
        """Bytes accepted for this client but not yet taken by the kernel."""
        return self._transport.get_write_buffer_size()

    def write(self, frame: bytes) -> None:
        self._transport.write(frame)

    async def close_then_abort(self, send_close: Awaitable[object], grace: float) -> None:
        """Send the close frame through the server (at most ``grace`` s: a stalled client keeps
        the transport paused), then drop the connection if it is still there ``grace`` s later."""
        try:
            async with asyncio.timeout(grace):
                await send_close
        except (TimeoutError, RuntimeError, OSError):
            pass
        finally:
            asyncio.get_running_loop().call_later(grace, self._transport.abort)

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
