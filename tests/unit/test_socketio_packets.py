"""Which Engine.IO / Socket.IO packets from clients the gateway takes, and which it refuses."""

from __future__ import annotations

import pytest

from relay.live.eio import packet_problem, payload_problem

# What socket.io-client and python-socketio send (websocket transport unless noted).
CLIENT_PACKETS = [
    '40/notifications,{"token":"eyJ.a.b"}',
    '40/notifications,{"token":"t","pid":"p","offset":"c1"}',  # connection state recovery
    "40/notifications,",
    '42/notifications,["subscribe",{"channel":"booking_created"}]',
    '42/notifications,7["subscribe","merchant:m1"]',  # with an ack id
    '43/notifications,7["ok"]',
    "41/notifications,",
    "3",  # pong
    "1",  # close
]


@pytest.mark.parametrize("packet", [*CLIENT_PACKETS, "2probe", "5"])
def test_what_clients_send_over_a_websocket_is_taken(packet: str) -> None:
    assert packet_problem(packet, websocket=True) is None


@pytest.mark.parametrize("packet", CLIENT_PACKETS)
def test_what_clients_send_by_long_polling_is_taken(packet: str) -> None:
    assert payload_problem(packet.encode()) is None
    assert payload_problem(f"{packet}\x1e3".encode()) is None  # several packets in one body


@pytest.mark.parametrize(
    "packet",
    [
        "",  # engineio: "Invalid empty packet received", outside any handler
        "x",
        "9",  # unknown Engine.IO type
        "0",  # OPEN comes from the server
        "6",  # NOOP comes from the server
        "2",  # PING from a client: only the upgrade probe
        "4",  # a MESSAGE that holds no Socket.IO packet
        "4{}",
        "4true",
        "42/notifications,[",  # socketio: JSON error, logged twice with a traceback
        "42/notifications,{}",  # an EVENT must be a list with a name
        "42/notifications,[1]",
        "42/notifications",
        '44/notifications,{"message":"x"}',  # CONNECT_ERROR comes from the server
        '451-/notifications,["x",{"_placeholder":true,"num":0}]',  # binary: none in Relay
        "bAAAA",  # base64 binary
        "4" + "[" * 5_000,  # JSON nested past the parser's limit
        b"\x00\x01",
    ],
)
def test_malformed_or_unexpected_packets_are_refused(packet: str | bytes) -> None:
    assert packet_problem(packet, websocket=True) is not None


@pytest.mark.parametrize("body", [b"", b"\xff\xfe", "\x1e".join(["3"] * 17).encode(), b"2probe", b"5"])
def test_malformed_long_polling_bodies_are_refused(body: bytes) -> None:
    assert payload_problem(body) is not None
