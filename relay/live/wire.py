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

Incoming messages are bounded before they are decompressed or buffered: the
websockets parser stops inflating a message at the connection's limit (``max_size``
counts decompressed bytes, across fragments) and fails the connection with 1009;
every connection starts at ``config.ws_max_size`` (the limit for clients that have
not authenticated yet) and the application raises or lowers it per connection
(``RawSocket.limit_messages``). uvicorn's wsproto implementation, by contrast,
inflates a whole frame before it compares sizes.
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
from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

SCOPE_KEY = "relay.raw_send"
# What this module reads or drives of uvicorn's protocol (set in
# WebSocketsSansIOProtocol.__init__, or its methods overridden here).
PROTOCOL_ATTRIBUTES = (
    "transport",
    "handshake_complete",
    "close_sent",
    "disconnected",
    "writable",
    "conn",
    "queue",
    "read_paused",
    "close_timer",
    "close_timeout",
    "loop",
)
PROTOCOL_METHODS = ("data_received", "handle_parser_exception", "receive", "send", "stop_keepalive")
# Bytes read from a client handed to the parser at a time. A slice of compressed input
# inflates to at most ~1 MB (deflate's ratio is about 1:1000), and the next slice is
# parsed only once the application has taken every message of the previous one.
PARSE_SLICE = 1024


def text_frame(text: str) -> bytes:
    """A complete, unmasked, uncompressed WebSocket text frame (as a server sends it)."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


class LiveWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets protocol, with bounded reads and a lean permessage-deflate.

    * permessage-deflate holds no zlib state between messages (``server_no_context_takeover``,
      ``client_no_context_takeover``). With context takeover every connection keeps a
      compressor and a decompressor alive (about 37 KB together at uvicorn's settings)
      even while idle; live pages are idle nearly all the time and Relay's event frames
      are sent uncompressed anyway.
    * What a client sends is parsed ``PARSE_SLICE`` bytes at a time, and only while the
      application keeps up. uvicorn parses everything one read returns (up to 256 KiB)
      before it pauses reading: thousands of small compressed messages in one read would
      all be inflated at once, each within the size limit.
    * An idle connection keeps less: the handshake's request and response (their headers,
      about 4 KB) are dropped once it is accepted, and the queue of messages for the
      application and the writable flag are a list and a bool rather than an
      ``asyncio.Queue`` and an ``asyncio.Event`` (each deque under them takes 760 bytes;
      together about 3.5 KB). Measured with tracemalloc, an idle Socket.IO connection
      went from 22.7 KB of Python objects to about 15.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn uses put_nowait/get/empty and set/clear/wait of these, from the loop only.
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.unparsed = bytearray()
        self.failed = False  # the client broke the protocol; what it sends now is dropped
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

    def data_received(self, data: bytes) -> None:
        if not self.failed:
            self.unparsed += data
            self.parse_some()

    def parse_some(self) -> None:
        """Parse what was read, a slice at a time, until a slice yields something for the app."""
        while self.unparsed and (self.queue.empty() or self.close_sent):
            piece = bytes(self.unparsed[:PARSE_SLICE])
            del self.unparsed[:PARSE_SLICE]
            super().data_received(piece)
            if self.failed or self.transport.is_closing():
                self.unparsed.clear()
                return
        if self.unparsed and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def handle_parser_exception(self) -> None:
        """The client broke a rule (e.g. a message over its limit: 1009): send the close
        frame, half-close, and drop whatever else the client sends until it closes.

        uvicorn closes the socket at once instead; with the client's data still unread the
        kernel resets the connection, and the close frame and its code are lost.
        """
        close = self.conn.close_sent
        code, reason = (close.code, close.reason) if close is not None else (1006, "")
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = self.failed = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    async def receive(self) -> ASGIReceiveEvent:
        message = await self.queue.get()
        if self.queue.empty():
            self.parse_some()
        if self.read_paused and self.queue.empty() and not self.unparsed:
            self.read_paused = False
            self.transport.resume_reading()
        return message

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if self.handshake_complete and self.response is not None:  # nothing reads the handshake now
            self.request.headers.clear()  # (the parser's generator keeps the request for good)
            self.request = self.response = None  # type: ignore[assignment]
        if self.close_sent and self.unparsed:  # the client's close frame may be waiting in there
            self.parse_some()


class Inbox:
    """A queue with one consumer, in a list: what uvicorn needs of ``asyncio.Queue``."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Flag:
    """What uvicorn needs of ``asyncio.Event`` for its ``writable`` flag (set to begin with)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter


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

    def put(self, frame: bytes, limit: int) -> bool:
        """The fan-out's one call per client: write ``frame`` if the connection is open; False
        (nothing written) when the client leaves more than ``limit`` bytes unread."""
        if self.buffered > limit:
            return False
        if self.open:
            self.write(frame)
        return True

    async def drained(self) -> None:
        """Wait until the server would write again (its buffer below the low-water mark)."""
        await self._protocol.writable.wait()

    def stop_pings(self) -> None:
        """No more WebSocket pings from the server on this connection (uvicorn's keepalive: a
        timer, a ping and a pong every ``ws_ping_interval``), for a protocol that has a
        heartbeat of its own."""
        self._protocol.stop_keepalive()

    def limit_messages(self, size: int) -> None:
        """Refuse (close 1009) any later message over ``size`` bytes once decompressed."""
        self._protocol.conn.max_message_size = size

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
