"""Socket.IO at ``/socket.io/``, namespace ``/notifications``: the seed's NestJS gateway, kept.

Clients connect with ``auth: {token}`` (or ``Authorization: Bearer``), get
``connected {userId, merchantId}``, then ``booking_created`` / ``booking_updated`` /
``booking_deleted`` with the seed payloads; ``subscribe`` / ``unsubscribe`` follow
the /ws tenant rule and answer ``subscribed`` / ``unsubscribed`` or ``error``.

Hostile input is stopped in front of engineio (``Gateway.__call__``): a long-polling
POST over its limit is answered 413 without reading it, a packet that engineio or
socketio would fail on is refused with one log line (the connection is closed), and
an Engine.IO session that has not connected ``/notifications`` with a valid token
within ``RELAY_AUTH_TIMEOUT`` seconds is closed. Until then a client may send at most
``UNAUTHENTICATED_MAX_MESSAGE`` bytes at a time, ``MAX_MESSAGE`` afterwards.

Fan-out: the Engine.IO packet of an event (``42/notifications,["booking_created",{...}]``)
is built once per room. A client on the websocket transport whose Engine.IO queue
is empty gets the prebuilt frame written straight to its connection; any other
client (polling, upgrading, or with packets still queued) gets the same packet
put on its Engine.IO queue, so per-client order is kept either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import socketio
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from socketio import packet as sio_packet
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay import metrics
from relay.auth import AuthError
from relay.channels.websocket import CLOSE_POLICY, CLOSE_TOO_SLOW, OFF_MESSAGE
from relay.events import Event
from relay.http_auth import error
from relay.live import UNAUTHENTICATED_MAX_MESSAGE, Encoded, Hub, Interest, Sink
from relay.logs import Throttled
from relay.wire import RawSocket

if TYPE_CHECKING:
    from relay.app import Relay

logger = logging.getLogger(__name__)

NAMESPACE = "/notifications"
PATH = "/socket.io/"
# The largest message (a WebSocket message, or a long-polling POST body) once connected.
MAX_MESSAGE = 64 * 1024
# Engine.IO packets a client sends; the upgrade probe ("2probe") only on a WebSocket.
CLIENT_PACKETS = (eio_packet.CLOSE, eio_packet.PONG, eio_packet.MESSAGE, eio_packet.UPGRADE)
DECODE_ERRORS = (ValueError, RecursionError)  # RecursionError: JSON nested past the parser's limit


class SocketIOTransport:
    name = "socketio"

    def encode(self, event: Event) -> Encoded:
        message = sio_packet.Packet(
            sio_packet.EVENT, data=[event.channel, dict(event.data)], namespace=NAMESPACE
        )
        packet = eio_packet.Packet(eio_packet.MESSAGE, message.encode())
        return Encoded.of(packet.encode(), packet)


TRANSPORT = SocketIOTransport()


class SioSink(Sink):
    def __init__(self, hub: Hub, interest: Interest, server: socketio.AsyncServer, sid: str) -> None:
        super().__init__(hub, TRANSPORT, interest)
        self.sid = sid
        self._server = server
        environ: dict[str, Any] = server.get_environ(sid, NAMESPACE) or {}
        self._eio = server.eio.sockets.get(server.manager.eio_sid_from_sid(sid, NAMESPACE))
        scope = environ.get("asgi.scope") or {}
        self._send = environ.get("asgi.send") if scope.get("type") == "websocket" else None
        self._raw = RawSocket.of(self._send)
        if self._raw is not None:
            self._raw.limit_kernel_buffer(hub.socket_buffer)
            self._raw.limit_messages(MAX_MESSAGE)
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def direct(self) -> bool:
        return self._raw is not None

    def write(self, encoded: Encoded) -> None:
        eio = self._eio
        if eio is None or eio.closed:
            self.closed = True
            self.hub.leave(self)
            return
        raw = self._raw
        queued = eio.queue.qsize()
        # The client's backlog in bytes, roughly: the transport's buffer and the library's queue.
        backlog = (raw.buffered if raw is not None else 0) + queued * len(encoded.frame)
        if backlog > self.hub.max_buffer or queued >= self.hub.max_pending:
            self.fall_behind()
        elif (
            # Straight to the connection only when nothing the library queued (or holds back
            # while the transport is paused) could be overtaken: per-client order is kept.
            raw is not None
            and eio.upgraded
            and not eio.upgrading
            and not queued
            and raw.writable
            and raw.open
        ):
            raw.write(encoded.frame)
        else:
            eio.queue.put_nowait(encoded.packet)

    def overflow(self) -> None:
        send, raw = self._send, self._raw
        if send is not None and raw is not None:
            message = {"type": "websocket.close", "code": CLOSE_TOO_SLOW, "reason": "too slow"}
            self.hub.spawn(lambda: raw.close_then_abort(send(message), self.hub.close_grace))
        else:
            self.hub.spawn(lambda: self._server.disconnect(self.sid, namespace=NAMESPACE))


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


class Gateway:
    """The Socket.IO server of one relay, and the ASGI app that guards it."""

    def __init__(self, relay: Relay, app: ASGIApp) -> None:
        self.relay = relay
        origins = relay.settings.allowed_origins
        self.server = server = socketio.AsyncServer(
            async_mode="asgi",
            # None: same origin only
            cors_allowed_origins=("*" if "*" in origins else origins) if origins else None,
            max_http_buffer_size=MAX_MESSAGE,
            # Loggers rather than False: with False each library adds a handler of its own,
            # and every line it logs comes out twice.
            logger=logging.getLogger("socketio.server"),
            engineio_logger=logging.getLogger("engineio.server"),
        )
        self.app: ASGIApp = socketio.ASGIApp(server, other_asgi_app=app, socketio_path="socket.io")
        self.sinks: dict[str, SioSink] = {}
        self.gauge = metrics.ws_connections.labels(transport="socketio")
        self.refusals = {reason: Throttled(logger) for reason in ("malformed", "too_large", "auth_timeout")}
        self._handle_eio_connect = server._handle_eio_connect
        self._handle_eio_disconnect = server._handle_eio_disconnect
        server.eio.on("connect", self.eio_connect)
        server.eio.on("disconnect", self.eio_disconnect)
        server.on("connect", self.connect, namespace=NAMESPACE)
        server.on("disconnect", self.disconnect, namespace=NAMESPACE)
        server.on("subscribe", self.subscribe, namespace=NAMESPACE)
        server.on("unsubscribe", self.unsubscribe, namespace=NAMESPACE)
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to stop
            relay.live.spawn(self.disconnect_all_on_stop)

    # Socket.IO handlers

    async def connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        relay, hub, server = self.relay, self.relay.live, self.server
        if relay.verifier is None:
            raise socketio.exceptions.ConnectionRefusedError(OFF_MESSAGE)
        token = auth.get("token") if isinstance(auth, dict) else None
        if not token:
            scheme, _, value = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        try:
            claims = relay.verifier.verify(token if isinstance(token, str) else None)
        except AuthError as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        sink = SioSink(hub, Interest(claims.merchant_id), server, sid)
        self.sinks[sid] = sink
        hub.join(sink)
        self.gauge.inc()
        hello = {"userId": claims.user_id, "merchantId": claims.merchant_id}

        async def greet() -> None:
            # After this handler returns the library queues the namespace CONNECT; greeting
            # from a task puts `connected` after it, as the NestJS gateway's handleConnection did.
            await server.emit("connected", hello, to=sid, namespace=NAMESPACE)
            sink.go_live()

        hub.spawn(greet)
        sink.expiry = asyncio.get_running_loop().call_later(
            max(claims.seconds_left, 0.0),
            lambda: hub.spawn(lambda: server.disconnect(sid, namespace=NAMESPACE)),
        )

    async def disconnect(self, sid: str, *_reason: object) -> None:
        sink = self.sinks.pop(sid, None)
        if sink is None:
            return
        sink.closed = True
        sink.hub.leave(sink)
        if sink.expiry is not None:
            sink.expiry.cancel()
        self.gauge.dec()

    async def change(self, kind: str, sid: str, data: object) -> None:
        sink = self.sinks.get(sid)
        if sink is None:
            return
        channel = data.get("channel") if isinstance(data, dict) else data
        method = sink.interest.subscribe if kind == "subscribe" else sink.interest.unsubscribe
        problem = method(channel)
        if problem is not None:
            await self.server.emit("error", {"message": problem}, to=sid, namespace=NAMESPACE)
        else:
            await self.server.emit(f"{kind}d", {"channel": channel}, to=sid, namespace=NAMESPACE)

    async def subscribe(self, sid: str, data: object = None) -> None:
        await self.change("subscribe", sid, data)

    async def unsubscribe(self, sid: str, data: object = None) -> None:
        await self.change("unsubscribe", sid, data)

    async def disconnect_all_on_stop(self) -> None:
        await self.relay.stop.wait()
        for sid in list(self.sinks):
            await self.server.disconnect(sid, namespace=NAMESPACE)

    # Engine.IO sessions

    async def eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        await self._handle_eio_connect(eio_sid, environ)
        asyncio.get_running_loop().call_later(
            self.relay.settings.auth_timeout, self.check_authenticated, eio_sid, environ
        )

    async def eio_disconnect(self, eio_sid: str, reason: object = None) -> None:
        # A client that closes over polling leaves a long-poll GET waiting ~45 s (and
        # shutdown waiting for it); ending its Engine.IO queue answers it at once.
        socket = self.server.eio.sockets.get(eio_sid)
        await self._handle_eio_disconnect(eio_sid, reason)
        if socket is not None:
            socket.queue.put_nowait(None)

    def authenticated(self, eio_sid: str | None) -> bool:
        """True once the session has connected /notifications with a valid token."""
        sid = self.server.manager.sid_from_eio_sid(eio_sid, NAMESPACE) if eio_sid else None
        return sid in self.sinks

    def check_authenticated(self, eio_sid: str, environ: dict[str, Any]) -> None:
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is not None and not socket.closed and not self.authenticated(eio_sid):
            self.refuse("auth_timeout", environ.get("asgi.scope", {}), "no valid CONNECT in time")
            self.relay.live.spawn(lambda: self.end_session(eio_sid))

    async def end_session(self, eio_sid: str) -> None:
        """Close an Engine.IO session whatever its transport, without waiting on the client.

        (``AsyncServer.disconnect`` waits until the client has read its CLOSE packet: for
        a long-polling client that never polls again, for ever.)
        """
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return
        await socket.send(eio_packet.Packet(eio_packet.CLOSE))  # for a client that listens
        await socket.close(wait=False, abort=True)  # the disconnect handlers; eio_disconnect
        # then ends the queue, which answers a waiting long-poll and stops the WebSocket writer

    def refuse(self, reason: str, scope: Scope, detail: str) -> None:
        metrics.live_refused.labels(transport="socketio", reason=reason).inc()
        client = scope.get("client") or ("?", 0)
        self.refusals[reason].warning("Socket.IO: refused %s from %s: %s", reason, client[0], detail)

    # The guard in front of engineio

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not (path.rstrip("/") + "/").startswith(PATH):
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        eio_sid = query.get("sid", [None])[0]
        if scope["type"] == "websocket":
            await self.app(scope, self.checked_frames(scope, receive, send, eio_sid), send)
        elif scope.get("method") == "POST":
            await self.post(scope, receive, send, eio_sid)
        else:
            await self.app(scope, receive, send)

    def checked_frames(self, scope: Scope, receive: Receive, send: Send, eio_sid: str | None) -> Receive:
        """``receive`` for engineio that refuses malformed packets (closing with 1008)."""
        raw = RawSocket.of(send)
        if raw is not None and self.authenticated(eio_sid):
            raw.limit_messages(MAX_MESSAGE)  # the upgrade of a connected long-polling session

        async def checked() -> Message:
            message = await receive()
            if message["type"] != "websocket.receive":
                return message
            text = message.get("text")
            problem = packet_problem(text if text is not None else message.get("bytes"), websocket=True)
            if problem is None:
                return message
            self.refuse("malformed", scope, problem)
            with contextlib.suppress(RuntimeError, OSError):
                await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": "malformed packet"})
            return {"type": "websocket.disconnect", "code": CLOSE_POLICY}

        return checked

    async def post(self, scope: Scope, receive: Receive, send: Send, eio_sid: str | None) -> None:
        """A long-polling POST: bounded, checked, then handed to engineio."""
        limit = MAX_MESSAGE if self.authenticated(eio_sid) else UNAUTHENTICATED_MAX_MESSAGE
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await error(400, "invalid Content-Length")(scope, receive, send)
            return
        too_large = declared is not None and int(declared) > limit
        body = b"" if too_large else await read_body(receive, limit)
        if body is None:
            return  # the client went away
        if too_large or len(body) > limit:
            self.refuse("too_large", scope, f"a POST over {limit} bytes")
            await error(413, f"request body over {limit} bytes")(scope, receive, send)
            return
        problem = payload_problem(body)
        if problem is not None:
            self.refuse("malformed", scope, problem)
            if eio_sid is not None:
                await self.end_session(eio_sid)
            await error(400, f"malformed packet: {problem}")(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        # engineio reads as many bytes as Content-Length says (none for a chunked body)
        framing = (b"content-length", b"transfer-encoding")
        headers = [(k, v) for k, v in scope.get("headers", []) if k not in framing]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, replay, send)


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, read no further than past ``limit`` bytes; None if the client left."""
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += bytes(message.get("body", b""))
        if len(body) > limit or not message.get("more_body"):
            return body


def mount(relay: Relay, app: ASGIApp) -> ASGIApp:
    """Serve Socket.IO at /socket.io/ in front of ``app`` (every other path)."""
    return Gateway(relay, app)
