from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from relay.events import BOOKING_SOURCE, Event, Source, Sources
from relay.live.hub import Encoded, Hub, Interest, Sink


class Recording:
    name = "test"

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, event: Event) -> Encoded:
        self.encoded += 1
        return Encoded.of(f"{event.position}")

    def encode_message(self, name: str, body: dict[str, Any]) -> Encoded:
        self.encoded += 1
        return Encoded.of(f"{name}:{body['userId']}")


class RecordingSink(Sink):
    def __init__(self, hub: Hub, transport: Recording, merchant: str) -> None:
        super().__init__(hub, transport, Interest(merchant))
        self.written: list[str] = []
        self.overflowed = False

    def write(self, encoded: Encoded) -> None:
        self.written.append(encoded.text)

    def overflow(self) -> None:
        self.overflowed = True


def event(position: int, merchant: str = "mA", channel: str = "booking_created") -> Event:
    return Event(position, position, channel, merchant, {"id": f"b{position}"}, datetime.now(UTC))


def test_hub_encodes_each_event_once_per_transport_and_writes_only_to_its_merchants_room() -> None:
    hub, transport = Hub(), Recording()
    sinks = [RecordingSink(hub, transport, "mA") for _ in range(3)]
    other = RecordingSink(hub, transport, "mB")
    for sink in [*sinks, other]:
        hub.join(sink)
        sink.go_live()
    hub.publish([event(1), event(2, "mB")])
    assert [s.written for s in sinks] == [["1"], ["1"], ["1"]]
    assert other.written == ["2"]
    assert transport.encoded == 2


def test_sink_holds_events_until_live_and_drops_those_at_or_below_the_replayed_floor() -> None:
    hub, transport = Hub(), Recording()
    sink = RecordingSink(hub, transport, "mA")
    hub.join(sink)
    hub.publish([event(4), event(5), event(6)])  # arrive while the replay (up to 5) runs
    assert sink.written == []
    sink.go_live(floor=5)
    hub.publish([event(5), event(7)])  # a late copy of a replayed event, then a new one
    assert sink.written == ["6", "7"]


def test_sink_that_holds_too_many_events_falls_behind_and_leaves_the_room() -> None:
    hub, transport = Hub(max_pending=2), Recording()
    sink = RecordingSink(hub, transport, "mA")
    hub.join(sink)
    hub.publish([event(1), event(2), event(3)])
    assert sink.overflowed and sink.closed
    assert hub.room_size("mA") == 0


def test_interest_narrows_to_channels_and_refuses_other_merchants_rooms() -> None:
    interest = Interest("mA")
    assert interest.wants("booking_created")
    assert interest.subscribe("booking_updated") is None
    assert not interest.wants("booking_created") and interest.wants("booking_updated")
    assert interest.unsubscribe("booking_updated") is None
    assert not interest.wants("booking_updated")
    assert interest.subscribe("merchant:mA") is None
    assert interest.wants("booking_created")
    assert interest.unsubscribe("merchant:mA") is None
    assert not interest.wants("booking_created")
    for bad in ("merchant:mB", "merchant:", "booking_exploded", "", None, 7, ["merchant:mA"]):
        problem = interest.subscribe(bad)
        assert problem is not None, bad
    assert "own merchant" in (interest.subscribe("merchant:mB") or "")
    assert not interest.wants("booking_created")  # refusals changed nothing


@pytest.mark.parametrize("channel", ["booking_created", "booking_deleted"])
def test_unsubscribing_one_channel_keeps_the_others(channel: str) -> None:
    interest = Interest("mA")
    assert interest.unsubscribe(channel) is None
    assert not interest.wants(channel)
    assert interest.wants("booking_updated")


def test_room_messages_reach_only_counted_in_sinks_of_the_room_in_order_with_events() -> None:
    """Presence messages are encoded once per transport, go only to sinks that have their
    presence snapshot (``present``) and are in the room, and wait with the events of a sink
    that is not live yet."""
    hub, transport = Hub(), Recording()
    live, pending, uncounted, left_room = (RecordingSink(hub, transport, "mA") for _ in range(4))
    other = RecordingSink(hub, transport, "mB")
    for sink in (live, pending, uncounted, left_room, other):
        hub.join(sink)
    for sink in (live, pending, left_room, other):
        sink.present = "someone"
    for sink in (live, uncounted, left_room, other):
        sink.go_live()
    left_room.interest.unsubscribe("merchant:mA")
    hub.publish([event(1)])
    hub.tell("mA", "presence_joined", {"userId": "u2"})
    assert transport.encoded == 2
    assert live.written == ["1", "presence_joined:u2"]
    assert pending.written == []
    pending.go_live()
    assert pending.written == ["1", "presence_joined:u2"]
    assert uncounted.written == ["1"]
    assert left_room.written == [] and other.written == []


def test_interest_follows_the_catalog_and_leaving_one_event_keeps_sources_attached_later() -> None:
    catalog = Sources()
    interest = Interest("mA", catalog)
    assert interest.subscribe("payment_created") is not None  # not attached (yet)
    assert interest.unsubscribe("booking_updated") is None  # every event but this one
    catalog.replace([BOOKING_SOURCE, Source("payment", "payments", "merchant_id", "id")])
    assert interest.wants("payment_created") and not interest.wants("booking_updated")
    assert interest.subscribe("booking_updated") is None  # back to every event
    assert interest.wants("booking_updated") and interest.wants("payment_deleted")
    narrow = Interest("mA", catalog)
    assert narrow.subscribe("payment_created") is None
    assert narrow.wants("payment_created") and not narrow.wants("payment_updated")
    assert not narrow.wants("booking_created")


def test_live_floor_skips_held_room_messages_which_have_no_position() -> None:
    """A Socket.IO session's offset is just below its first held event, even when a room
    message (no position) was held before it."""
    hub, transport = Hub(), Recording()
    sink = RecordingSink(hub, transport, "mA")
    hub.join(sink)
    sink.present = "u1"
    hub.tell("mA", "presence_joined", {"userId": "u2"})
    assert sink.live_floor(9) == 9
    hub.publish([event(7), event(8)])
    assert sink.live_floor(9) == 6
