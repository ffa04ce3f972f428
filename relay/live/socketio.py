"""Socket.IO at ``/socket.io/``, namespace ``/notifications``: the seed's NestJS gateway, kept.

Clients connect with ``auth: {token}`` (or ``Authorization: Bearer``), get
``connected {userId, merchantId}``, then one Socket.IO event per change, named by its
event name (``booking_created`` / ``booking_updated`` / ``booking_deleted`` with the seed
payloads, ``payment_created`` ... for an attached source); ``subscribe`` /
``unsubscribe`` follow the /ws tenant rule and answer ``subscribed`` / ``unsubscribed``
or ``error``.

Hostile input is stopped in front of engineio (``Gateway.__call__``): a long-polling
POST over its limit is answered 413 without reading it, a packet that engineio or
socketio would fail on is refused with one log line (the connection is closed), and
an Engine.IO session that has not connected ``/notifications`` with a valid token
within ``RELAY_AUTH_TIMEOUT`` seconds is closed. Until then a client may send at most
``UNAUTHENTICATED_MAX_MESSAGE`` bytes at a time, ``MAX_MESSAGE`` afterwards.

Connection state recovery (``relay.live.recovery``): the CONNECT acknowledgement carries a
``pid`` and every event, ``connected`` included, the cursor as its last argument (the
offset). A CONNECT with a pid that holds for the token and an offset still retained is
recovered: the same pid is acknowledged, then ``connected``, then the merchant's events
after the offset (read from ``relay.events``, while live ones are held), then live.

Fan-out: the Engine.IO packet of an event (``42/notifications,["booking_created",{...},"C"]``)
is built once per room. A client on the websocket transport whose Engine.IO queue
is empty gets the prebuilt frame written straight to its connection; any other
client (polling, upgrading, or with packets still queued) gets the same packet
put on its Engine.IO queue, so per-client order is kept either way. The libraries'
internals this needs are in ``relay.live.eio``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import socketio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay import metrics
from relay.auth import AuthError, Claims, TokenVerifier
from relay.events import Event, encode_cursor
from relay.http_auth import error
from relay.live import eio
from relay.live.hub import UNAUTHENTICATED_MAX_MESSAGE, Encoded, Hub, Interest, Sink, replay
from relay.live.recovery import Recovery
from relay.live.websocket import CLOSE_POLICY, CLOSE_TOO_SLOW, DB_ERRORS, OFF_MESSAGE
from relay.live.wire import RawSocket
from relay.logs import Throttled
from relay.store import Store

logger = logging.getLogger(__name__)

NAMESPACE = "/notifications"
PATH = "/socket.io/"
# The largest message (a WebSocket message, or a long-polling POST body) once connected.
MAX_MESSAGE = 64 * 1024


class SocketIOTransport:
    name = "socketio"

    def encode(self, event: Event) -> Encoded:
        text, packet = eio.event_packet(NAMESPACE, event.channel, dict(event.data), event.cursor)
        return Encoded.of(text, packet)


TRANSPORT = SocketIOTransport()


class SioSink(Sink):
    def __init__(
        self, hub: Hub, interest: Interest, server: socketio.AsyncServer, sid: str, pid: str
    ) -> None:
        super().__init__(hub, TRANSPORT, interest)
        self.sid = sid
        self.pid = pid
        self._server = server
        self._eio = eio.EngineSocket.of(server, sid, NAMESPACE)
        self._send = eio.websocket_send(server, sid, NAMESPACE)
        self._raw = RawSocket.of(self._send)
        if self._raw is not None:
            self._raw.limit_kernel_buffer(hub.socket_buffer)
            self._raw.limit_messages(MAX_MESSAGE)
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def direct(self) -> bool:
        return self._raw is not None

    def write(self, encoded: Encoded) -> None:
        engine = self._eio
        if engine is None or engine.closed:
            self.closed = True
            self.hub.leave(self)
            return
        raw = self._raw
        queued = engine.queued
        # The client's backlog in bytes, roughly: the transport's buffer and the library's queue.
        backlog = (raw.buffered if raw is not None else 0) + queued * len(encoded.frame)
        if backlog > self.hub.max_buffer or queued >= self.hub.max_pending:
            self.fall_behind()
        elif raw is not None and engine.on_websocket and not queued and raw.writable and raw.open:
            # Straight to the connection only when nothing the library queued (or holds back
            # while the transport is paused) could be overtaken: per-client order is kept.
            raw.write(encoded.frame)
        else:
            engine.put(encoded.packet)

    def overflow(self) -> None:
        send, raw = self._send, self._raw
        if send is not None and raw is not None:
            message = {"type": "websocket.close", "code": CLOSE_TOO_SLOW, "reason": "too slow"}
            self.hub.spawn(lambda: raw.close_then_abort(send(message), self.hub.close_grace))
        elif (engine := self._eio) is not None:
            # No Socket.IO DISCONNECT: the client reconnects by itself and recovers.
            self.hub.spawn(engine.end)


class Gateway:
    """The Socket.IO server of one relay (``mount`` puts it, guarded, in front of an app).

    Its clients join ``hub``'s rooms; ``verifier`` None (no JWT key) refuses every
    CONNECT; a session must connect within ``auth_timeout`` seconds. ``store`` replays
    what a recovering client missed; ``position()`` is the last position the feed handed
    to the hub (once it has started).
    """

    def __init__(
        self,
        hub: Hub,
        verifier: TokenVerifier | None,
        allowed_origins: list[str],
        auth_timeout: float,
        *,
        store: Store,
        recovery: Recovery,
        position: Callable[[], Awaitable[int]],
    ) -> None:
        self.hub, self.verifier, self.auth_timeout = hub, verifier, auth_timeout
        self.store, self.recovery, self.position = store, recovery, position
        origins = allowed_origins
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
        self.sinks: dict[str, SioSink] = {}
        self.gauge = metrics.ws_connections.labels(transport="socketio")
        self.refusals = {reason: Throttled(logger) for reason in ("malformed", "too_large", "auth_timeout")}
        eio.hook(server, connected=self.eio_connect)
        eio.add_to_connect_ack(server, self.ack_data)
        server.on("connect", self.connect, namespace=NAMESPACE)
        server.on("disconnect", self.disconnect, namespace=NAMESPACE)
        server.on("subscribe", self.subscribe, namespace=NAMESPACE)
        server.on("unsubscribe", self.unsubscribe, namespace=NAMESPACE)

    def mount(self, app: ASGIApp) -> ASGIApp:
        """Serve Socket.IO at /socket.io/ in front of ``app`` (every other path)."""
        return Guard(self, socketio.ASGIApp(self.server, other_asgi_app=app, socketio_path="socket.io"))

    async def disconnect_all(self) -> None:
        """At shutdown: end every client's Engine.IO session without a Socket.IO DISCONNECT,
        so that socket.io-client reconnects by itself (to another process or the restarted
        one) and recovers; after a DISCONNECT ("io server disconnect") it never would."""
        for sid in list(self.sinks):
            engine = eio.EngineSocket.of(self.server, sid, NAMESPACE)
            if engine is not None:
                with contextlib.suppress(RuntimeError, OSError):
                    await engine.end()

    def ack_data(self, sid: str) -> dict[str, Any]:
        sink = self.sinks.get(sid)
        return {"pid": sink.pid} if sink is not None else {}

    # Socket.IO handlers

    async def connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        hub, server = self.hub, self.server
        if self.verifier is None:
            raise socketio.exceptions.ConnectionRefusedError(OFF_MESSAGE)
        token = auth.get("token") if isinstance(auth, dict) else None
        if not token:
            scheme, _, value = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        try:
            claims = self.verifier.verify(token if isinstance(token, str) else None)
        except AuthError as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        after = await self.recovery.resumable(self.store, claims, auth)
        engine = eio.EngineSocket.of(server, sid, NAMESPACE)
        if engine is None or engine.closed:  # the client left while its recovery was checked
            raise socketio.exceptions.ConnectionRefusedError("connection closed")
        presented = isinstance(auth, dict) and "pid" in auth
        outcome = "recovered" if after is not None else "not_recovered" if presented else "new"
        metrics.socketio_sessions.labels(outcome=outcome).inc()
        pid = auth["pid"] if after is not None and isinstance(auth, dict) else self.recovery.new_pid(claims)
        sink = SioSink(hub, Interest(claims.merchant_id, hub.sources), server, sid, pid)
        self.sinks[sid] = sink
        hub.join(sink)  # from here every live event is held until go_live
        self.gauge.inc()
        hub.spawn(lambda: self.greet(sink, claims, after))
        sink.expiry = asyncio.get_running_loop().call_later(
            max(claims.seconds_left, 0.0),
            lambda: hub.spawn(lambda: server.disconnect(sid, namespace=NAMESPACE)),
        )

    async def greet(self, sink: SioSink, claims: Claims, after: int | None) -> None:
        """``connected``, the missed events when recovering, then live. Runs after this
        session's CONNECT acknowledgement is queued, as the NestJS gateway's handleConnection did."""
        server, sid = self.server, sink.sid
        hello = {"userId": claims.user_id, "merchantId": claims.merchant_id}
        if after is None:  # a new session: its offset is where the feed is
            floor = sink.live_floor(await self.position())
            await server.emit("connected", (hello, encode_cursor(floor)), to=sid, namespace=NAMESPACE)
        else:
            await server.emit("connected", (hello, encode_cursor(after)), to=sid, namespace=NAMESPACE)

            async def send(event: Event) -> None:
                args = (dict(event.data), event.cursor)
                await server.emit(event.channel, args, to=sid, namespace=NAMESPACE)

            try:
                floor = await replay(self.store, sink, after, send)
            except DB_ERRORS as exc:
                logger.warning("Socket.IO: replay failed (%s); the client recovers later", type(exc).__name__)
                engine = eio.EngineSocket.of(server, sid, NAMESPACE)
                if engine is not None:
                    await engine.end()  # no DISCONNECT: the client reconnects with its offset
                return
        sink.go_live(floor)

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

    # Engine.IO sessions

    async def eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        asyncio.get_running_loop().call_later(self.auth_timeout, self.check_authenticated, eio_sid, environ)

    def authenticated(self, eio_sid: str | None) -> bool:
        """True once the session has connected /notifications with a valid token."""
        return eio.session_of(self.server, eio_sid, NAMESPACE) in self.sinks

    def check_authenticated(self, eio_sid: str, environ: dict[str, Any]) -> None:
        engine = eio.EngineSocket.of_engine(self.server, eio_sid)
        if engine is not None and not engine.closed and not self.authenticated(eio_sid):
            self.refuse("auth_timeout", eio.scope_of(environ), "no valid CONNECT in time")
            self.hub.spawn(engine.end)

    def refuse(self, reason: str, scope: Scope, detail: str) -> None:
        metrics.live_refused.labels(transport="socketio", reason=reason).inc()
        client = scope.get("client") or ("?", 0)
        self.refusals[reason].warning("Socket.IO: refused %s from %s: %s", reason, client[0], detail)


class Guard:
    """The ASGI app in front of engineio (``app``) that refuses hostile input first."""

    def __init__(self, gateway: Gateway, app: ASGIApp) -> None:
        self.gateway = gateway
        self.app = app

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
        if raw is not None and self.gateway.authenticated(eio_sid):
            raw.limit_messages(MAX_MESSAGE)  # the upgrade of a connected long-polling session

        async def checked() -> Message:
            message = await receive()
            if message["type"] != "websocket.receive":
                return message
            text = message.get("text")
            problem = eio.packet_problem(text if text is not None else message.get("bytes"), websocket=True)
            if problem is None:
                return message
            self.gateway.refuse("malformed", scope, problem)
            with contextlib.suppress(RuntimeError, OSError):
                await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": "malformed packet"})
            return {"type": "websocket.disconnect", "code": CLOSE_POLICY}

        return checked

    async def post(self, scope: Scope, receive: Receive, send: Send, eio_sid: str | None) -> None:
        """A long-polling POST: bounded, checked, then handed to engineio."""
        limit = MAX_MESSAGE if self.gateway.authenticated(eio_sid) else UNAUTHENTICATED_MAX_MESSAGE
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await error(400, "invalid Content-Length")(scope, receive, send)
            return
        too_large = declared is not None and int(declared) > limit
        body = b"" if too_large else await read_body(receive, limit)
        if body is None:
            return  # the client went away
        if too_large or len(body) > limit:
            self.gateway.refuse("too_large", scope, f"a POST over {limit} bytes")
            await error(413, f"request body over {limit} bytes")(scope, receive, send)
            return
        problem = eio.payload_problem(body)
        if problem is not None:
            self.gateway.refuse("malformed", scope, problem)
            engine = eio.EngineSocket.of_engine(self.gateway.server, eio_sid)
            if engine is not None:
                await engine.end()
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
