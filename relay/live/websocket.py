"""``WS /ws?token=JWT[&since=CURSOR]``: live events of the token's merchant as JSON text frames.

Messages (DESIGN.md): ``connected`` on accept, ``event`` per event, ``subscribe`` /
``unsubscribe`` answered with ``subscribed`` / ``unsubscribed`` or ``error``.
With ``since`` the merchant's events after the cursor are replayed first; live
events that arrive meanwhile are held and those already replayed are dropped, so
the client sees every event once, in order. Close codes: 4401 for a bad, missing
or expired token (also when it expires while connected), 1013 for a client too
slow to keep up, 1009 for a message over ``MAX_MESSAGE`` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from relay import metrics
from relay.auth import AuthError, Claims, TokenVerifier
from relay.db import TRANSIENT_ERRORS
from relay.events import Event, decode_cursor
from relay.http_auth import bearer_token, error, origin_allowed
from relay.live.hub import Encoded, Hub, Interest, Sink, replay
from relay.live.wire import RawSocket
from relay.store import Store

logger = logging.getLogger(__name__)

MAX_MESSAGE = 4096
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 1013
CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008
# Replay's database errors (Starlette turns a lost client into WebSocketDisconnect, not OSError).
DB_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, asyncpg.PostgresError)
OFF_MESSAGE = "token routes are off: set RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY"


def dumps(message: object) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class WsTransport:
    name = "ws"

    def encode(self, event: Event) -> Encoded:
        return Encoded.of(
            dumps({"type": "event", "channel": event.channel, "cursor": event.cursor, "data": event.data})
        )


TRANSPORT = WsTransport()


class WsSink(Sink):
    """A /ws client: prebuilt frames straight to its transport, else a bounded queue."""

    def __init__(self, hub: Hub, interest: Interest, websocket: WebSocket, raw: RawSocket | None) -> None:
        super().__init__(hub, TRANSPORT, interest)
        self._ws = websocket
        self._raw = raw
        self._queue: asyncio.Queue[str] | None = None if raw else asyncio.Queue(hub.max_pending)
        if raw is not None:
            raw.limit_kernel_buffer(hub.socket_buffer)

    @property
    def queued(self) -> bool:
        """True when this client needs ``pump`` (its frames cannot be written directly)."""
        return self._queue is not None

    @property
    def direct(self) -> bool:
        return self._raw is not None

    def write(self, encoded: Encoded) -> None:
        if self._raw is not None:
            if not self._raw.open:
                self.closed = True
                self.hub.leave(self)
            elif self._raw.buffered > self.hub.max_buffer:
                self.fall_behind()
            else:
                self._raw.write(encoded.frame)
            return
        assert self._queue is not None
        try:
            self._queue.put_nowait(encoded.text)
        except asyncio.QueueFull:
            self.fall_behind()

    def overflow(self) -> None:
        closing = close(self._ws, CLOSE_TOO_SLOW, "too slow: reconnect with since")
        raw = self._raw
        self.hub.spawn(
            lambda: raw.close_then_abort(closing, self.hub.close_grace) if raw is not None else closing
        )

    async def pump(self) -> None:
        """The writer when frames cannot be written directly (another ASGI server)."""
        assert self._queue is not None
        while not self.closed:
            await self._ws.send_text(await self._queue.get())


async def close(websocket: WebSocket, code: int, reason: str = "") -> None:
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code, reason)


def routes(
    hub: Hub, store: Store, verifier: TokenVerifier | None, allowed_origins: list[str]
) -> list[BaseRoute]:
    """``/ws`` over ``hub`` (live events) and ``store`` (replay); 503 while ``verifier`` is None."""

    async def endpoint(websocket: WebSocket) -> None:
        if not origin_allowed(websocket, allowed_origins):
            await websocket.close(CLOSE_POLICY)  # before accept: HTTP 403
            return
        if verifier is None:
            await websocket.send_denial_response(error(503, OFF_MESSAGE))
            return
        await serve(hub, store, verifier, websocket)

    return [WebSocketRoute("/ws", endpoint)]


async def serve(hub: Hub, store: Store, verifier: TokenVerifier, websocket: WebSocket) -> None:
    token = websocket.query_params.get("token") or bearer_token(websocket)
    raw = RawSocket.of_scope(websocket.scope)
    if raw is not None:
        raw.limit_messages(MAX_MESSAGE)  # the server refuses bigger ones before inflating them
    await websocket.accept()
    try:
        claims = verifier.verify(token)
    except AuthError as exc:
        await close(websocket, CLOSE_UNAUTHORIZED, str(exc)[:120])
        return
    after: int | None = None
    since = websocket.query_params.get("since")
    if since is not None:
        try:
            after = decode_cursor(since)
        except ValueError:
            await websocket.send_text(dumps({"type": "error", "message": "invalid cursor"}))
            await close(websocket, CLOSE_POLICY, "invalid cursor")
            return

    sink = WsSink(hub, Interest(claims.merchant_id, hub.sources), websocket, raw)
    hub.join(sink)  # from here every live event is held until go_live
    gauge = metrics.ws_connections.labels(transport="ws")
    gauge.inc()
    pump: asyncio.Task[None] | None = None
    try:
        await websocket.send_text(
            dumps({"type": "connected", "userId": claims.user_id, "merchantId": claims.merchant_id})
        )
        floor = 0
        if after is not None:
            try:
                floor = await replay(store, sink, after, sender(websocket))
            except DB_ERRORS as exc:
                logger.warning(
                    "replay failed (%s: %s); the client resumes later",
                    type(exc).__name__,
                    exc,
                    extra={"merchant_id": claims.merchant_id},
                )
                await close(websocket, CLOSE_TOO_SLOW, "replay failed: reconnect with since")
                return
        sink.go_live(floor)
        if sink.queued:
            pump = asyncio.create_task(sink.pump(), name="relay-ws-pump")
        await converse(websocket, sink, claims)
    except (WebSocketDisconnect, OSError, RuntimeError):  # RuntimeError: closed by the relay meanwhile
        pass
    finally:
        sink.closed = True
        hub.leave(sink)
        gauge.dec()
        if pump is not None:
            pump.cancel()


def sender(websocket: WebSocket) -> Callable[[Event], Awaitable[None]]:
    async def send(event: Event) -> None:
        await websocket.send_text(TRANSPORT.encode(event).text)

    return send


async def converse(websocket: WebSocket, sink: WsSink, claims: Claims) -> None:
    """Answer the client's messages until it leaves or its token expires."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + max(claims.seconds_left, 0.0)):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text: str | None = message.get("text")
                data: bytes | None = message.get("bytes")
                size = len(text.encode()) if text is not None else len(data or b"")
                if size > MAX_MESSAGE:
                    sink.closed = True
                    await close(websocket, CLOSE_TOO_BIG, f"message over {MAX_MESSAGE} bytes")
                    return
                if text is None:
                    reply: dict[str, Any] = {"type": "error", "message": "binary frames are not supported"}
                else:
                    reply = answer(sink.interest, text)
                await websocket.send_text(dumps(reply))
    except TimeoutError:
        sink.closed = True
        sink.hub.leave(sink)
        await close(websocket, CLOSE_UNAUTHORIZED, "token expired")


def answer(interest: Interest, text: str) -> dict[str, Any]:
    """The reply to one client message."""
    try:
        message = json.loads(text)
    except ValueError:
        return {"type": "error", "message": "messages must be JSON"}
    if not isinstance(message, dict):
        return {"type": "error", "message": "messages must be JSON objects"}
    kind, channel = message.get("type"), message.get("channel")
    if kind == "subscribe":
        problem = interest.subscribe(channel)
    elif kind == "unsubscribe":
        problem = interest.unsubscribe(channel)
    elif kind == "ping":
        return {"type": "pong"}
    else:
        return {"type": "error", "message": "type must be subscribe or unsubscribe"}
    if problem is not None:
        return {"type": "error", "message": problem}
    return {"type": f"{kind}d", "channel": channel}
