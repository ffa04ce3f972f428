"""Socket.IO at ``/socket.io/``, namespace ``/notifications``: the seed's NestJS gateway, kept.

Clients connect with ``auth: {token}`` (or ``Authorization: Bearer``), get
``connected {userId, merchantId}``, then one Socket.IO event per change, named by its
event name (``booking_created`` / ``booking_updated`` / ``booking_deleted`` with the seed
payloads, ``payment_created`` ... for an attached source); ``subscribe`` /
``unsubscribe`` follow the /ws tenant rule and answer ``subscribed`` / ``unsubscribed``
or ``error``.

Fan-out: the Engine.IO packet of an event (``42/notifications,["booking_created",{...}]``)
is built once per room. A client on the websocket transport whose Engine.IO queue
is empty gets the prebuilt frame written straight to its connection; any other
client (polling, upgrading, or with packets still queued) gets the same packet
put on its Engine.IO queue, so per-client order is kept either way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio
from starlette.types import ASGIApp

from relay import metrics
from relay.auth import AuthError, TokenVerifier
from relay.events import Event
from relay.live.eio import EngineSocket, end_long_polls_on_disconnect, event_packet, websocket_send
from relay.live.hub import Encoded, Hub, Interest, Sink
from relay.live.websocket import CLOSE_TOO_SLOW, OFF_MESSAGE
from relay.live.wire import RawSocket

logger = logging.getLogger(__name__)

NAMESPACE = "/notifications"
MAX_MESSAGE = 64 * 1024


class SocketIOTransport:
    name = "socketio"

    def encode(self, event: Event) -> Encoded:
        text, packet = event_packet(NAMESPACE, event.channel, dict(event.data))
        return Encoded.of(text, packet)


TRANSPORT = SocketIOTransport()


class SioSink(Sink):
    def __init__(self, hub: Hub, interest: Interest, server: socketio.AsyncServer, sid: str) -> None:
        super().__init__(hub, TRANSPORT, interest)
        self.sid = sid
        self._server = server
        self._eio = EngineSocket.of(server, sid, NAMESPACE)
        self._send = websocket_send(server, sid, NAMESPACE)
        self._raw = RawSocket.of(self._send)
        if self._raw is not None:
            self._raw.limit_kernel_buffer(hub.socket_buffer)
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
        queued = eio.queued
        # The client's backlog in bytes, roughly: the transport's buffer and the library's queue.
        backlog = (raw.buffered if raw is not None else 0) + queued * len(encoded.frame)
        if backlog > self.hub.max_buffer or queued >= self.hub.max_pending:
            self.fall_behind()
        elif (
            # Straight to the connection only when nothing the library queued (or holds back
            # while the transport is paused) could be overtaken: per-client order is kept.
            raw is not None and eio.on_websocket and not queued and raw.writable and raw.open
        ):
            raw.write(encoded.frame)
        else:
            eio.put(encoded.packet)

    def overflow(self) -> None:
        send, raw = self._send, self._raw
        if send is not None and raw is not None:
            message = {"type": "websocket.close", "code": CLOSE_TOO_SLOW, "reason": "too slow"}
            self.hub.spawn(lambda: raw.close_then_abort(send(message), self.hub.close_grace))
        else:
            self.hub.spawn(lambda: self._server.disconnect(self.sid, namespace=NAMESPACE))


class Gateway:
    """The Socket.IO server in front of the other routes; its clients join ``hub``'s rooms."""

    def __init__(self, hub: Hub, verifier: TokenVerifier | None, allowed_origins: list[str]) -> None:
        self._sinks: dict[str, SioSink] = {}
        self.server = build_server(hub, verifier, allowed_origins, self._sinks)

    def mount(self, app: ASGIApp) -> ASGIApp:
        """Serve Socket.IO at /socket.io/ in front of ``app`` (every other path)."""
        asgi: ASGIApp = socketio.ASGIApp(self.server, other_asgi_app=app, socketio_path="socket.io")
        return asgi

    async def disconnect_all(self) -> None:
        """At shutdown: close every client (they reconnect to another process)."""
        for sid in list(self._sinks):
            await self.server.disconnect(sid, namespace=NAMESPACE)


def build_server(
    hub: Hub, verifier: TokenVerifier | None, origins: list[str], sinks: dict[str, SioSink]
) -> socketio.AsyncServer:
    server = socketio.AsyncServer(
        async_mode="asgi",
        cors_allowed_origins=("*" if "*" in origins else origins) if origins else None,  # None: same origin
        max_http_buffer_size=MAX_MESSAGE,
        logger=False,
        engineio_logger=False,
    )
    gauge = metrics.ws_connections.labels(transport="socketio")

    async def connect(sid: str, environ: dict[str, Any], auth: object = None) -> None:
        if verifier is None:
            raise socketio.exceptions.ConnectionRefusedError(OFF_MESSAGE)
        token = auth.get("token") if isinstance(auth, dict) else None
        if not token:
            scheme, _, value = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        try:
            claims = verifier.verify(token if isinstance(token, str) else None)
        except AuthError as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        sink = SioSink(hub, Interest(claims.merchant_id, hub.sources), server, sid)
        sinks[sid] = sink
        hub.join(sink)
        gauge.inc()
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

    async def disconnect(sid: str, *_reason: object) -> None:
        sink = sinks.pop(sid, None)
        if sink is None:
            return
        sink.closed = True
        sink.hub.leave(sink)
        if sink.expiry is not None:
            sink.expiry.cancel()
        gauge.dec()

    async def change(kind: str, sid: str, data: object) -> None:
        sink = sinks.get(sid)
        if sink is None:
            return
        channel = data.get("channel") if isinstance(data, dict) else data
        method = sink.interest.subscribe if kind == "subscribe" else sink.interest.unsubscribe
        problem = method(channel)
        if problem is not None:
            await server.emit("error", {"message": problem}, to=sid, namespace=NAMESPACE)
        else:
            await server.emit(f"{kind}d", {"channel": channel}, to=sid, namespace=NAMESPACE)

    async def subscribe(sid: str, data: object = None) -> None:
        await change("subscribe", sid, data)

    async def unsubscribe(sid: str, data: object = None) -> None:
        await change("unsubscribe", sid, data)

    end_long_polls_on_disconnect(server)
    server.on("connect", connect, namespace=NAMESPACE)
    server.on("disconnect", disconnect, namespace=NAMESPACE)
    server.on("subscribe", subscribe, namespace=NAMESPACE)
    server.on("unsubscribe", unsubscribe, namespace=NAMESPACE)
    return server
