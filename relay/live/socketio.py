"""Socket.IO at ``/socket.io/``, namespace ``/notifications``: the seed's NestJS gateway, kept.

Clients connect with ``auth: {token}`` (or ``Authorization: Bearer``), get
``connected {userId, merchantId}`` and ``presence {online}``, then one Socket.IO event per
change, named by its event name (``booking_created`` / ``booking_updated`` /
``booking_deleted`` with the seed payloads, ``payment_created`` ... for an attached source),
and ``presence_joined`` / ``presence_left {userId}``; ``subscribe`` / ``unsubscribe`` follow
the /ws tenant rule and answer ``subscribed`` / ``unsubscribed`` or ``error``. A bad token
is answered CONNECT_ERROR with the reason; an expired one ends the namespace with a
Socket.IO DISCONNECT (the client then stays away, as with the NestJS gateway).

The protocols (Engine.IO transports, limits on what clients send, the ``RELAY_AUTH_TIMEOUT``
deadline) are ``relay.live.eio``; this module is what Relay does with a session.

Connection state recovery (``relay.live.recovery``): the CONNECT acknowledgement carries a
``pid`` and every event, ``connected`` included, the cursor as its last argument (the
offset). A CONNECT with a pid that holds for the token and an offset still retained is
recovered: the same pid is acknowledged, then ``connected``, then the merchant's events
after the offset (read from ``relay.events``, while live ones are held), then live.

Fan-out: the Engine.IO packet of an event (``42/notifications,["booking_created",{...},"C"]``)
is built once per room, with its WebSocket frame. A client on a WebSocket gets the frame
written straight to its connection; a long-polling one (or one mid-upgrade) gets the text
put with its session's packets for the next poll, so per-client order is kept either way.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from relay import metrics
from relay.auth import AuthError, Claims, TokenVerifier
from relay.events import Event, encode_cursor
from relay.live import eio
from relay.live.eio import Message, Session
from relay.live.hub import UNAUTHENTICATED_MAX_MESSAGE, Encoded, Hub, Interest, Sink, replay
from relay.live.presence import Presence
from relay.live.presence import enter as enter_presence
from relay.live.presence import leave as leave_presence
from relay.live.recovery import Recovery
from relay.live.websocket import CLOSE_TOO_SLOW, DB_ERRORS, OFF_MESSAGE
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
        return Encoded.of(eio.event(NAMESPACE, event.channel, dict(event.data), event.cursor))

    def encode_message(self, name: str, body: dict[str, Any]) -> Encoded:
        return Encoded.of(eio.event(NAMESPACE, name, body))


TRANSPORT = SocketIOTransport()


class SioSink(Sink):
    def __init__(self, hub: Hub, interest: Interest, session: Session, pid: str) -> None:
        super().__init__(hub, TRANSPORT, interest)
        self.session = session
        self.pid = pid
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def direct(self) -> bool:
        return self.session.direct

    def write(self, encoded: Encoded) -> None:
        session = self.session
        if session.closed:
            self.closed = True
            self.hub.leave(self)
            return
        raw = session.raw
        if raw is not None and session.websocket:
            if not raw.put(encoded.frame, self.hub.max_buffer):
                self.fall_behind()
            return
        queued = len(session.pending)
        if queued >= self.hub.max_pending or queued * len(encoded.text) > self.hub.max_buffer:
            self.fall_behind()
        else:
            session.write(encoded.text)

    def overflow(self) -> None:
        # No Socket.IO DISCONNECT: the client reconnects by itself and recovers.
        self.session.end(code=CLOSE_TOO_SLOW)


class Gateway:
    """The Socket.IO server of one relay (``mount`` puts it in front of an app).

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
        presence: Presence,
    ) -> None:
        self.hub, self.verifier = hub, verifier
        self.store, self.recovery, self.position = store, recovery, position
        self.presence = presence
        self.engine = eio.Engine(
            self,
            allowed_origins,
            auth_timeout=auth_timeout,
            first_message=UNAUTHENTICATED_MAX_MESSAGE,
            max_message=MAX_MESSAGE,
            socket_buffer=hub.socket_buffer,
        )
        self.gauge = metrics.ws_connections.labels(transport="socketio")
        self.refusals = {reason: Throttled(logger) for reason in ("malformed", "too_large", "auth_timeout")}

    def mount(self, app: ASGIApp) -> ASGIApp:
        """Serve Socket.IO at /socket.io/ in front of ``app`` (every other path)."""
        return Mounted(self.engine, app)

    async def disconnect_all(self) -> None:
        """At shutdown: end every client's Engine.IO session without a Socket.IO DISCONNECT,
        so that socket.io-client reconnects by itself (to another process or the restarted
        one) and recovers; after a DISCONNECT ("io server disconnect") it never would."""
        self.engine.end_all()

    # what the engine hands on

    async def message(self, session: Session, message: Message, scope: Scope) -> None:
        if message.namespace != NAMESPACE:
            if message.kind == eio.CONNECT:
                refusal = {"message": "Invalid namespace"}
                session.write(eio.encode(eio.CONNECT_ERROR, message.namespace, refusal))
        elif message.kind == eio.CONNECT:
            await self.connect(session, message.data, scope)
        elif message.kind == eio.DISCONNECT:
            self.closed(session)
            session.forget()
        elif message.kind == eio.EVENT and isinstance(sink := session.socket, SioSink):
            name, *args = message.data
            if name in ("subscribe", "unsubscribe"):
                self.change(sink, name, args[0] if args else None)
            if message.ack is not None:
                session.write(eio.encode(eio.ACK, NAMESPACE, [], ack=message.ack))

    def closed(self, session: Session) -> None:
        sink = session.socket
        if not isinstance(sink, SioSink):
            return
        session.socket = None
        sink.closed = True
        sink.hub.leave(sink)
        leave_presence(self.presence, sink)
        if sink.expiry is not None:
            sink.expiry.cancel()
        self.gauge.dec()

    def refuse(self, reason: str, client: object, detail: str) -> None:
        metrics.live_refused.labels(transport="socketio", reason=reason).inc()
        host = client[0] if isinstance(client, tuple | list) and client else "?"
        self.refusals[reason].warning("Socket.IO: refused %s from %s: %s", reason, host, detail)

    # the namespace

    async def connect(self, session: Session, auth: object, scope: Scope) -> None:
        if session.socket is not None:
            return  # connected already
        if self.verifier is None:
            self.refuse_connect(session, OFF_MESSAGE)
            return
        token = auth.get("token") if isinstance(auth, dict) else None
        if not token:
            header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
            scheme, _, value = header.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        try:
            claims = self.verifier.verify(token if isinstance(token, str) else None)
        except AuthError as exc:
            self.refuse_connect(session, str(exc))
            return
        after = await self.recovery.resumable(self.store, claims, auth)
        if session.closed or session.socket is not None:  # the client left while recovery was checked
            return
        presented = isinstance(auth, dict) and "pid" in auth
        outcome = "recovered" if after is not None else "not_recovered" if presented else "new"
        metrics.socketio_sessions.labels(outcome=outcome).inc()
        pid = auth["pid"] if after is not None and isinstance(auth, dict) else self.recovery.new_pid(claims)
        hub = self.hub
        sink = SioSink(hub, Interest(claims.merchant_id, hub.sources), session, pid)
        session.accept(sink)
        hub.join(sink)  # from here every live event is held until go_live
        self.gauge.inc()
        session.write(eio.encode(eio.CONNECT, NAMESPACE, {"sid": secrets.token_urlsafe(15), "pid": pid}))
        hub.spawn(lambda: self.greet(sink, claims, after))
        sink.expiry = asyncio.get_running_loop().call_later(
            max(claims.seconds_left, 0.0), self.expire, session, sink
        )

    def refuse_connect(self, session: Session, reason: str) -> None:
        session.write(eio.encode(eio.CONNECT_ERROR, NAMESPACE, {"message": reason}))

    def expire(self, session: Session, sink: SioSink) -> None:
        """The token expired: a Socket.IO DISCONNECT (the client does not come back by itself)."""
        if session.socket is sink:
            session.write(eio.encode(eio.DISCONNECT, NAMESPACE))
            self.closed(session)
            session.forget()

    async def greet(self, sink: SioSink, claims: Claims, after: int | None) -> None:
        """``connected``, the missed events when recovering, then live. Runs after the CONNECT
        acknowledgement is written, as the NestJS gateway's handleConnection did."""
        session = sink.session
        hello = {"userId": claims.user_id, "merchantId": claims.merchant_id}
        floor = sink.live_floor(await self.position()) if after is None else after  # the offset
        session.write(eio.event(NAMESPACE, "connected", hello, encode_cursor(floor)))
        # The snapshot has no offset (its one argument is an object, which socket.io-client does
        # not take for one); the room messages held since the join follow it, in order.
        online = await enter_presence(self.presence, sink, claims.user_id)
        if online is None:  # the client left meanwhile
            return
        session.write(eio.event(NAMESPACE, "presence", online))
        if after is not None:

            async def send(event: Event) -> None:
                await session.drained()
                session.write(eio.event(NAMESPACE, event.channel, dict(event.data), event.cursor))

            try:
                floor = await replay(self.store, sink, after, send)
            except DB_ERRORS as exc:
                logger.warning("Socket.IO: replay failed (%s); the client recovers later", type(exc).__name__)
                session.end()  # no DISCONNECT: the client reconnects with its offset
                return
        sink.go_live(floor)

    def change(self, sink: SioSink, kind: str, data: object) -> None:
        channel = data.get("channel") if isinstance(data, dict) else data
        method = sink.interest.subscribe if kind == "subscribe" else sink.interest.unsubscribe
        problem = method(channel)
        if problem is not None:
            sink.session.write(eio.event(NAMESPACE, "error", {"message": problem}))
        else:
            sink.session.write(eio.event(NAMESPACE, f"{kind}d", {"channel": channel}))


class Mounted:
    """The ASGI app: ``engine`` at the Socket.IO path, ``app`` everywhere else."""

    def __init__(self, engine: eio.Engine, app: ASGIApp) -> None:
        self.engine = engine
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and (path.rstrip("/") + "/").startswith(PATH):
            await self.engine(scope, receive, send)
        else:
            await self.app(scope, receive, send)
