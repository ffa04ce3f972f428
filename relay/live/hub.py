"""The live hub: one room per merchant, each event encoded once per transport and
written to every socket in the room without awaiting the clients one by one.

The hub is a feed consumer (sync, never blocks). Each connection is a ``Sink``:
it keeps its own narrowing (``Interest``), a floor below which events were
already sent (resume), and a bounded buffer; a sink that falls behind closes
itself (1013 over /ws) and the client resumes with ``since``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Container, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relay.events import CHANNELS, Event, Sources
from relay.live.wire import text_frame
from relay.store import Store

logger = logging.getLogger(__name__)

ROOM_PREFIX = "merchant:"
DEFAULT_MAX_BUFFER = 512 * 1024  # bytes waiting in one client's transport before it is "too slow"
REPLAY_PAGE = 500
DEFAULT_MAX_PENDING = 10_000  # events held for one client while its replay runs
# The kernel's share of one client's backlog; without a cap Linux grows it to megabytes.
DEFAULT_SOCKET_BUFFER = 128 * 1024
# How long a client that fell behind gets to read its close frame before it is dropped.
CLOSE_GRACE = 5.0
# The largest message a live connection may send before it has authenticated (decompressed
# size): room for a Socket.IO CONNECT with any token that fits in a usual 8 KiB HTTP header.
UNAUTHENTICATED_MAX_MESSAGE = 8 * 1024


@dataclass(frozen=True, slots=True)
class Encoded:
    """One event as a transport sends it: the message text and its complete WebSocket frame."""

    text: str
    frame: bytes

    @classmethod
    def of(cls, text: str) -> Encoded:
        return cls(text=text, frame=text_frame(text))


class Transport(Protocol):
    """How one kind of client wants events; ``encode`` runs once per event and room, and
    ``encode_message`` once per room message (``presence_joined``, ...) and room."""

    name: str

    def encode(self, event: Event) -> Encoded: ...

    def encode_message(self, name: str, body: dict[str, Any]) -> Encoded: ...


class Interest:
    """What one client asked for: its merchant room, optionally narrowed to some event names.

    ``subscribe``/``unsubscribe`` accept an event name of an attached source (``known``,
    the process's live catalog) or ``merchant:<own id>``; every other value (another
    merchant's room above all) is refused with a message. Narrowing keeps one of three
    states: every event (``channels`` None), only ``channels``, or every event but
    ``channels`` (``excluding``), so sources attached later are included or not as
    the client's own choices imply.
    """

    def __init__(self, merchant_id: str, known: Container[str] = CHANNELS) -> None:
        self.merchant_id = merchant_id
        self.in_room = True
        self.channels: set[str] | None = None  # None: every event
        self.excluding = False  # True: every event but ``channels``
        self._known = known

    def wants(self, channel: str) -> bool:
        if not self.in_room or self.channels is None:
            return self.in_room
        return (channel in self.channels) != self.excluding

    def subscribe(self, channel: object) -> str | None:
        problem = self._check(channel)
        if problem is None:
            name = str(channel)
            if name.startswith(ROOM_PREFIX):
                self.in_room, self.channels, self.excluding = True, None, False
            elif self.channels is None:
                self.channels = {name}
            elif self.excluding:
                self.channels.discard(name)
            else:
                self.channels.add(name)
        return problem

    def unsubscribe(self, channel: object) -> str | None:
        problem = self._check(channel)
        if problem is None:
            name = str(channel)
            if name.startswith(ROOM_PREFIX):
                self.in_room = False
            elif self.channels is None:
                self.channels, self.excluding = {name}, True
            elif self.excluding:
                self.channels.add(name)
            else:
                self.channels.discard(name)
        return problem

    def _check(self, channel: object) -> str | None:
        if not isinstance(channel, str) or not channel:
            return "channel must be a non-empty string"
        if channel in self._known or channel == ROOM_PREFIX + self.merchant_id:
            return None
        if channel.startswith(ROOM_PREFIX):
            return "not allowed: a client may only join its own merchant's room"
        return f"unknown channel {channel[:100]!r}"


class Sink:
    """One live connection as the hub sees it.

    Until ``go_live`` the sink holds events (while ``connected`` is sent and a replay
    runs); afterwards ``deliver`` writes at once. Subclasses provide ``write`` and
    ``overflow``; both are sync and must not block.
    """

    def __init__(self, hub: Hub, transport: Transport, interest: Interest) -> None:
        self.hub = hub
        self.transport = transport
        self.interest = interest
        self.floor = 0  # events at or below this position were already sent
        self.closed = False
        # The user this connection is counted as in its merchant's presence, once it has been
        # (it has its presence snapshot then); only such sinks take room messages.
        self.present: str | None = None
        self._pending: list[tuple[Event | None, Encoded]] | None = []

    @property
    def merchant_id(self) -> str:
        return self.interest.merchant_id

    def deliver(self, event: Event, encoded: Encoded) -> None:
        if self.closed or event.position <= self.floor:
            return
        if self._pending is not None:
            self._pending.append((event, encoded))
            if len(self._pending) > self.hub.max_pending:
                self.fall_behind()
            return
        interest = self.interest
        if (interest.in_room and interest.channels is None) or interest.wants(event.channel):
            self.write(encoded)

    def tell(self, encoded: Encoded) -> None:
        """A room message (not an event): held like events until ``go_live``, in order."""
        if self.closed or self.present is None or not self.interest.in_room:
            return
        if self._pending is not None:
            self._pending.append((None, encoded))
        else:
            self.write(encoded)

    def live_floor(self, position: int) -> int:
        """The offset of a client that joined the room before the feed handed on ``position``:
        it has every event of its merchant up to the returned position (the events after it
        are held for it, or still to come)."""
        for event, _ in self._pending or ():
            if event is not None:  # room messages held beside events carry no position
                return min(position, event.position - 1)
        return position

    def go_live(self, floor: int = 0) -> None:
        """Send what arrived meanwhile (above ``floor``, the last position replayed), then live."""
        self.floor = max(self.floor, floor)
        pending, self._pending = self._pending or [], None
        for event, encoded in pending:
            if self.closed:
                break
            if event is None:
                self.write(encoded)
            else:
                self.deliver(event, encoded)

    def fall_behind(self) -> None:
        """The client cannot keep up: leave the room and close it (it resumes with ``since``)."""
        if self.closed:
            return
        self.closed = True
        self.hub.leave(self)
        logger.warning("live client too slow; closing it", extra={"merchant_id": self.merchant_id})
        self.overflow()

    @property
    def direct(self) -> bool:
        """True when events go to the connection as prebuilt frames (the fast path)."""
        return False

    def write(self, encoded: Encoded) -> None:
        raise NotImplementedError

    def overflow(self) -> None:
        raise NotImplementedError


class Hub:
    """Rooms per merchant; the feed consumer that fans each event out to its room."""

    def __init__(
        self,
        sources: Sources | None = None,
        *,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.sources = sources if sources is not None else Sources()  # the event names clients may pick
        self.max_buffer = max_buffer
        self.max_pending = max_pending
        self.socket_buffer = DEFAULT_SOCKET_BUFFER
        self.close_grace = CLOSE_GRACE
        self._rooms: dict[str, dict[Sink, None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def join(self, sink: Sink) -> None:
        self._rooms.setdefault(sink.merchant_id, {})[sink] = None

    def leave(self, sink: Sink) -> None:
        room = self._rooms.get(sink.merchant_id)
        if room is not None:
            room.pop(sink, None)
            if not room:
                del self._rooms[sink.merchant_id]

    def room_size(self, merchant_id: str) -> int:
        return len(self._rooms.get(merchant_id, ()))

    def sinks(self, merchant_id: str) -> list[Sink]:
        return list(self._rooms.get(merchant_id, ()))

    def publish(self, events: Sequence[Event]) -> None:
        """Feed consumer: each event is encoded once per transport present in its room."""
        for event in events:
            if event.merchant_id is None:
                continue
            room = self._rooms.get(event.merchant_id)
            if not room:
                continue
            encoded: dict[str, Encoded] = {}
            for sink in list(room):
                name = sink.transport.name
                message = encoded.get(name)
                if message is None:
                    message = encoded[name] = sink.transport.encode(event)
                try:
                    sink.deliver(event, message)
                except Exception:
                    logger.exception("live delivery failed", extra={"merchant_id": event.merchant_id})
                    sink.fall_behind()

    def tell(self, merchant_id: str, name: str, body: dict[str, Any]) -> None:
        """Send a room message to the merchant's room, encoded once per transport present."""
        room = self._rooms.get(merchant_id)
        if not room:
            return
        encoded: dict[str, Encoded] = {}
        for sink in list(room):
            transport = sink.transport
            message = encoded.get(transport.name)
            if message is None:
                message = encoded[transport.name] = transport.encode_message(name, body)
            try:
                sink.tell(message)
            except Exception:
                logger.exception("live delivery failed", extra={"merchant_id": merchant_id})
                sink.fall_behind()

    def spawn(self, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run a short coroutine (closing a client) without the caller awaiting it."""
        task = asyncio.get_running_loop().create_task(factory())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def replay(store: Store, sink: Sink, after: int, send: Callable[[Event], Awaitable[object]]) -> int:
    """Send ``sink``'s merchant's events after position ``after`` in position order (while the
    sink holds live ones); return the last position sent, the floor for ``go_live``."""
    while True:
        page = await store.merchant_events(sink.merchant_id, after, REPLAY_PAGE)
        for event in page:
            if sink.closed:  # fell behind while replaying: it resumes again later
                return after
            await send(event)
            after = event.position
        if len(page) < REPLAY_PAGE:
            return after
