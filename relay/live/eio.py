"""Engine.IO v4 and Socket.IO v5, the server side, on the same direct writes as ``/ws``.

The protocols are small and public (socket.io's "Engine.IO protocol" and "Socket.IO
protocol" pages). A general-purpose server keeps, per connection, a packet queue, a writer
task and the request's environ, and awaits each client in turn; here a session is a few
slots and a timer, and every packet to a WebSocket client is written straight to its
connection (``relay.live.wire``), so the hub's prebuilt frames need nothing else.

Engine.IO: a session opens by long-polling (``GET`` answers the OPEN packet; later ``GET``s
wait for packets, ``POST``s carry the client's, several per body separated by ``\\x1e``)
or directly on a WebSocket. A polling session moves to a WebSocket: the client opens one
with the session's id and sends ``2probe``, the server answers ``3probe`` and ends any
waiting poll, the client sends ``5`` (upgrade) and everything goes over the WebSocket from
then on. The server pings (``2``) every ``PING_INTERVAL`` seconds and ends a session whose
pong (``3``) does not come within ``PING_TIMEOUT``. Socket.IO packets ride in MESSAGE
(``4``) packets: ``40/ns,{auth}`` CONNECT, ``41/ns,`` DISCONNECT, ``42/ns,[name, ...args]``
EVENT, ``43/ns,id[...]`` ACK, ``44/ns,{"message"}`` CONNECT_ERROR.

What a client sends is bounded before it is parsed: a WebSocket message by the connection's
limit (``first_message`` until the session has connected, ``max_message`` after; over it the
protocol closes 1009 before inflating it), a polling body by the same limits (413, the body
unread past the limit). A packet Relay does not take (binary data, an unknown type, broken
JSON, a packet only servers send) closes the WebSocket 1008, or answers the POST 400 and
ends the session, with one refusal logged. A session that has not connected within
``auth_timeout`` seconds is ended.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

from starlette.requests import HTTPConnection
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from relay.http_auth import origin_allowed
from relay.live.wire import RawSocket, text_frame

# Engine.IO packet types
OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0123456"
# Socket.IO packet types (BINARY_EVENT and BINARY_ACK are refused: Relay's protocol has no binary)
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR = range(5)
SEPARATOR = "\x1e"  # between the packets of a long-polling body
MAX_PACKETS = 16  # packets in one long-polling body
PING_INTERVAL = 25.0  # socket.io's defaults; the client allows pingInterval + pingTimeout
PING_TIMEOUT = 20.0
CLOSE_POLICY = 1008
CLOSE_GRACE = 5.0  # how long a closing WebSocket gets to take its close frame
MAX_ACK_DIGITS = 15


class Malformed(ValueError):
    """A packet from a client that Relay does not take; the message says why."""


@dataclass(frozen=True, slots=True)
class Message:
    """One Socket.IO packet."""

    kind: int
    namespace: str
    data: Any = None
    ack: int | None = None


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def encode(kind: int, namespace: str, data: object = None, ack: int | None = None) -> str:
    """A Socket.IO packet as the text of the Engine.IO MESSAGE that carries it."""
    prefix = f"4{kind}{namespace}," if namespace != "/" else f"4{kind}"
    return prefix + (str(ack) if ack is not None else "") + (dumps(data) if data is not None else "")


def event(namespace: str, name: str, *args: object) -> str:
    """``42/ns,["name",...args]``: what a client's ``socket.on(name, ...)`` receives."""
    return encode(EVENT, namespace, [name, *args])


def decode(text: str) -> Message:
    """A Socket.IO packet from a client (the data of an Engine.IO MESSAGE)."""
    if not text or text[0] not in "0123456":
        raise Malformed("not a Socket.IO packet")
    kind = int(text[0])
    if kind > CONNECT_ERROR:
        raise Malformed("binary data")
    at, namespace = 1, "/"
    if text.startswith("/", 1):
        end = text.find(",", 1)
        at = end + 1 if end >= 0 else len(text)
        namespace = text[1:end] if end >= 0 else text[1:]
    digits = at
    while digits < len(text) and "0" <= text[digits] <= "9":
        digits += 1
    if digits - at > MAX_ACK_DIGITS:
        raise Malformed("ack id too long")
    ack = int(text[at:digits]) if digits > at else None
    try:
        data = json.loads(text[digits:]) if digits < len(text) else None
    except (ValueError, RecursionError):  # RecursionError: JSON nested past the parser's limit
        raise Malformed("not a Socket.IO packet") from None
    if (
        (kind == CONNECT and (data is None or isinstance(data, dict)))
        or kind == DISCONNECT
        or (kind == EVENT and isinstance(data, list) and data and isinstance(data[0], str))
        or (kind == ACK and isinstance(data, list))
    ):
        return Message(kind, namespace, data, ack)
    raise Malformed(f"unexpected Socket.IO packet (type {kind})")


def read(data: object, *, websocket: bool) -> tuple[str, Message | str]:
    """One Engine.IO packet from a client: its type and its data (a ``Message`` for MESSAGE).
    The upgrade probe (``2probe``) and UPGRADE come only over a WebSocket."""
    if not isinstance(data, str) or data.startswith("b"):
        raise Malformed("binary data")
    if not data:
        raise Malformed("not an Engine.IO packet")
    kind, rest = data[0], data[1:]
    if kind == MESSAGE:
        return kind, decode(rest)
    if kind in (CLOSE, PONG) or (websocket and (data == "2probe" or kind == UPGRADE)):
        return kind, rest
    raise Malformed(f"unexpected Engine.IO packet type {kind[:1]!r}")


def read_payload(body: bytes) -> list[tuple[str, Message | str]]:
    """The packets of a long-polling POST body."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise Malformed("not UTF-8") from None
    packets = text.split(SEPARATOR)
    if len(packets) > MAX_PACKETS:
        raise Malformed("too many packets")
    return [read(packet, websocket=False) for packet in packets]


def packet_problem(data: object, *, websocket: bool) -> str | None:
    """Why one Engine.IO packet from a client is refused, or None when Relay takes it."""
    try:
        read(data, websocket=websocket)
    except Malformed as exc:
        return str(exc)
    return None


def payload_problem(body: bytes) -> str | None:
    """Why a long-polling POST body is refused, or None."""
    try:
        read_payload(body)
    except Malformed as exc:
        return str(exc)
    return None


class Handler(Protocol):
    """The application on top (the Socket.IO gateway)."""

    async def message(self, session: Session, message: Message, scope: Scope) -> None: ...

    def closed(self, session: Session) -> None: ...

    def refuse(self, reason: str, client: object, detail: str) -> None: ...


class Session:
    """One Engine.IO session: its transport, the packets waiting for a poll, its timers.

    ``socket`` is what the application keeps for the session once it has connected its
    namespace (None until then: the session then has ``auth_timeout`` seconds to do so).
    """

    __slots__ = (
        "client",
        "closed",
        "deadline",
        "engine",
        "pending",
        "pinged",
        "raw",
        "send",
        "sid",
        "socket",
        "timer",
        "upgrading",
        "waiter",
        "websocket",
    )

    def __init__(self, engine: Engine, sid: str, client: object) -> None:
        self.engine, self.sid, self.client = engine, sid, client
        self.websocket = self.upgrading = self.closed = self.pinged = False
        self.raw: RawSocket | None = None
        self.send: Send | None = None  # the ASGI send of the WebSocket, once on one
        self.pending: list[str] = []  # packets for the next poll (or the WebSocket writer)
        self.waiter: asyncio.Future[None] | None = None  # a long-poll waiting for packets
        self.socket: Any = None
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(engine.ping_interval, self._ping)
        self.deadline: asyncio.TimerHandle | None = loop.call_later(engine.auth_timeout, self._deadline)

    @property
    def direct(self) -> bool:
        """True while packets go straight to a WebSocket's connection."""
        return self.raw is not None and self.websocket

    def write(self, text: str) -> None:
        """Send one Engine.IO packet (order kept whatever the transport)."""
        if self.closed:
            return
        raw = self.raw
        if raw is not None and self.websocket:
            if raw.open:
                raw.write(text_frame(text))
            return
        self.pending.append(text)
        self._wake()

    async def drained(self) -> None:
        """Wait while the client's connection holds more than the server lets it buffer."""
        if self.raw is not None and self.websocket:
            await self.raw.drained()

    def accept(self, socket: object) -> None:
        """The session connected its namespace: no deadline any more, bigger messages."""
        self.socket = socket
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.raw is not None:
            self.raw.limit_messages(self.engine.max_message)

    def forget(self) -> None:
        """The namespace is disconnected: the session must connect again in time."""
        self.socket = None
        if self.deadline is None and not self.closed:
            self.deadline = asyncio.get_running_loop().call_later(self.engine.auth_timeout, self._deadline)

    def end(self, *, tell: bool = True, code: int = 1000) -> None:
        """End the session; ``tell``: with an Engine.IO CLOSE first. No Socket.IO DISCONNECT:
        a socket.io-client reconnects by itself after this (and recovers)."""
        if self.closed:
            return
        if tell:
            self.write(CLOSE)
        self.closed = True
        self.engine.sessions.pop(self.sid, None)
        self.timer.cancel()
        if self.deadline is not None:
            self.deadline.cancel()
        self._wake()
        if self.raw is not None and self.send is not None and self.websocket and self.raw.open:
            self.engine.spawn(close_websocket(self.raw, self.send, code))
        self.engine.handler.closed(self)

    # the transport

    def use_websocket(self, raw: RawSocket, send: Send) -> None:
        """Move to a WebSocket (opened on one, or upgraded): what waits for a poll follows."""
        self.websocket, self.upgrading, self.raw, self.send = True, False, raw, send
        engine = self.engine
        raw.limit_kernel_buffer(engine.socket_buffer)
        raw.stop_pings()  # Engine.IO's heartbeat finds a dead client: no WebSocket pings on top
        raw.limit_messages(engine.max_message if self.socket is not None else engine.first_message)
        self._wake()  # a poll still waiting answers NOOP
        pending, self.pending = self.pending, []
        for text in pending:
            self.write(text)

    async def take(self) -> str:
        """A long-poll: the packets waiting (or, once there are some, those that came)."""
        if not (self.pending or self.closed or self.websocket or self.upgrading):
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if self.websocket:
            return NOOP  # upgraded meanwhile: the packets go over the WebSocket
        if not self.pending:
            return CLOSE if self.closed else NOOP
        text = SEPARATOR.join(self.pending)
        self.pending.clear()
        return text

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # timers

    def _ping(self) -> None:
        self.write(PING)
        self.pinged = True
        self.timer = asyncio.get_running_loop().call_later(self.engine.ping_timeout, self.end)

    def pong(self) -> None:
        if self.pinged:
            self.pinged = False
            self.timer.cancel()
            self.timer = asyncio.get_running_loop().call_later(self.engine.ping_interval, self._ping)

    def _deadline(self) -> None:
        self.deadline = None
        if self.socket is None and not self.closed:
            self.engine.handler.refuse("auth_timeout", self.client, "no valid CONNECT in time")
            self.end()


async def close_websocket(raw: RawSocket, send: Send, code: int) -> None:
    await raw.close_then_abort(send({"type": "websocket.close", "code": code}), CLOSE_GRACE)


class Engine:
    """The Engine.IO server: an ASGI app for the requests under the Socket.IO path."""

    def __init__(
        self,
        handler: Handler,
        allowed_origins: list[str],
        *,
        auth_timeout: float,
        first_message: int,
        max_message: int,
        socket_buffer: int,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float = PING_TIMEOUT,
    ) -> None:
        self.handler, self.allowed_origins, self.auth_timeout = handler, allowed_origins, auth_timeout
        self.first_message, self.max_message, self.socket_buffer = first_message, max_message, socket_buffer
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.sessions: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def end_all(self) -> None:
        for session in list(self.sessions.values()):
            session.end()

    def open(self, client: object, *, websocket: bool) -> Session:
        sid = secrets.token_urlsafe(15)
        session = self.sessions[sid] = Session(self, sid, client)
        hello = {
            "sid": sid,
            "upgrades": [] if websocket else ["websocket"],
            "pingInterval": int(self.ping_interval * 1000),
            "pingTimeout": int(self.ping_timeout * 1000),
            "maxPayload": self.max_message,
        }
        session.pending.append(OPEN + dumps(hello))
        return session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        sid, transport, version = (next(iter(query.get(k, ())), None) for k in ("sid", "transport", "EIO"))
        allowed = origin_allowed(HTTPConnection(scope), self.allowed_origins)
        if scope["type"] == "websocket":
            if (await receive())["type"] != "websocket.connect":
                return
            session = self.sessions.get(sid) if sid is not None else None
            raw = RawSocket.of(send)  # None: not Relay's own server, which this transport needs
            if (
                raw is None
                or not allowed
                or transport != "websocket"
                or (sid is None and version != "4")
                or (sid is not None and (session is None or session.websocket or session.upgrading))
            ):
                await send({"type": "websocket.close", "code": CLOSE_POLICY})  # before accept: 403
                return
            await self.websocket(scope, receive, send, raw, session)
            return
        method = scope.get("method")
        cors = self.cors(scope) if allowed else []
        if not allowed:
            await respond(send, 400, "origin not allowed", cors)
        elif method == "OPTIONS":
            await respond(send, 200, b"", cors)
        elif transport != "polling":
            await respond(send, 400, "invalid transport", cors)
        elif method == "GET" and sid is None:
            if version != "4":
                await respond(send, 400, "unsupported protocol version", cors)
            else:
                await respond(send, 200, (await self.open(scope.get("client"), websocket=False).take()), cors)
        elif method == "GET":
            await self.poll(self.sessions.get(sid or ""), send, cors)
        elif method == "POST":
            await self.post(self.sessions.get(sid or ""), scope, receive, send, cors)
        else:
            await respond(send, 405, "method not allowed", cors)

    def cors(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        headers = dict(scope.get("headers", []))
        origin = headers.get(b"origin")
        if origin is None:
            return []
        out = [(b"access-control-allow-origin", origin), (b"access-control-allow-credentials", b"true")]
        if scope.get("method") == "OPTIONS":
            out.append((b"access-control-allow-methods", b"OPTIONS, GET, POST"))
            if (asked := headers.get(b"access-control-request-headers")) is not None:
                out.append((b"access-control-allow-headers", asked))
        return out

    async def poll(self, session: Session | None, send: Send, cors: list[tuple[bytes, bytes]]) -> None:
        if session is None or (session.websocket and not session.upgrading):
            await respond(send, 400, "unknown session", cors)
        elif session.waiter is not None:
            session.end()
            await respond(send, 400, "overlapping long-polls", cors)
        else:
            await respond(send, 200, await session.take(), cors)

    async def post(
        self,
        session: Session | None,
        scope: Scope,
        receive: Receive,
        send: Send,
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        limit = self.max_message if session is not None and session.socket is not None else self.first_message
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await respond(send, 400, "invalid Content-Length", cors)
            return
        too_large = declared is not None and int(declared) > limit
        body = b"" if too_large else await read_body(receive, limit)
        if body is None:
            return  # the client went away
        if too_large or len(body) > limit:
            self.handler.refuse("too_large", scope.get("client"), f"a POST over {limit} bytes")
            await respond(send, 413, f"request body over {limit} bytes", cors)
            return
        try:
            packets = read_payload(body)
        except Malformed as exc:
            self.handler.refuse("malformed", scope.get("client"), str(exc))
            if session is not None:
                session.end()
            await respond(send, 400, f"malformed packet: {exc}", cors)
            return
        if session is None or session.websocket:
            await respond(send, 400, "unknown session", cors)
            return
        for kind, data in packets:
            await self.receive(session, kind, data, scope)
        await respond(send, 200, "ok", cors, content_type=b"text/html")

    async def receive(self, session: Session, kind: str, data: Message | str, scope: Scope) -> None:
        if session.closed:
            return
        if kind == PONG:
            session.pong()
        elif kind == CLOSE:
            session.end(tell=False)
        elif isinstance(data, Message):
            await self.handler.message(session, data, scope)

    async def websocket(
        self, scope: Scope, receive: Receive, send: Send, raw: RawSocket, upgrading: Session | None
    ) -> None:
        await send({"type": "websocket.accept"})
        session = upgrading
        if session is None:
            session = self.open(scope.get("client"), websocket=True)
            session.use_websocket(raw, send)
        elif session.socket is not None:
            raw.limit_messages(self.max_message)
        try:
            while True:
                message: AsgiMessage = await receive()
                if message["type"] != "websocket.receive":
                    return
                text = message.get("text")  # (over the connection's limit, the protocol closed 1009)
                try:
                    kind, data = read(text if text is not None else message.get("bytes"), websocket=True)
                except Malformed as exc:
                    self.handler.refuse("malformed", scope.get("client"), str(exc))
                    await close_websocket(raw, send, CLOSE_POLICY)
                    return
                if session.closed:
                    return
                if session.send is not send:  # the upgrade of a polling session, not done yet
                    if kind == PING:
                        await send({"type": "websocket.send", "text": PONG + "probe"})
                        session.upgrading = True
                        session._wake()  # a waiting poll returns: the client pauses polling
                    elif kind == UPGRADE and session.upgrading:
                        session.use_websocket(raw, send)
                    else:
                        return
                elif kind not in (PING, UPGRADE):
                    await self.receive(session, kind, data, scope)
        finally:
            if session.send is send:
                session.end(tell=False)  # the client's WebSocket is gone
            elif session.upgrading:
                session.upgrading = False  # an upgrade that did not complete: still polling


async def respond(
    send: Send,
    status: int,
    body: str | bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    content_type: bytes = b"text/plain; charset=UTF-8",
) -> None:
    """An HTTP response; an error (status >= 400) as Relay's JSON ``{"error": body}``."""
    if status >= 400:
        body, content_type = dumps({"error": body}), b"application/json"
    data = body.encode() if isinstance(body, str) else body
    headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


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
