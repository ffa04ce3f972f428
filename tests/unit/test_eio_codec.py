"""The Engine.IO v4 / Socket.IO v5 packet codec of relay/live/eio.py: what the server writes,
what it reads, and (with Node.js) that socket.io-client's own parsers agree with both."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from relay.live import eio
from relay.live.eio import Malformed, Message, decode, encode, read, read_payload

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def test_server_packets_are_socketio_text_in_an_engineio_message() -> None:
    ns = "/notifications"
    assert encode(eio.CONNECT, ns, {"sid": "s", "pid": "p"}) == '40/notifications,{"sid":"s","pid":"p"}'
    assert encode(eio.CONNECT_ERROR, ns, {"message": "invalid token"}) == (
        '44/notifications,{"message":"invalid token"}'
    )
    assert encode(eio.DISCONNECT, ns) == "41/notifications,"
    assert encode(eio.ACK, ns, [], ack=7) == "43/notifications,7[]"
    assert encode(eio.EVENT, "/", ["x"]) == '42["x"]'  # the main namespace has no prefix


def test_an_event_carries_its_offset_as_the_last_argument() -> None:
    text = eio.event("/notifications", "booking_created", {"id": "b1"}, "42")
    assert text == '42/notifications,["booking_created",{"id":"b1"},"42"]'


def test_json_is_ascii_so_any_string_can_be_framed() -> None:
    text = eio.event("/n", "x", {"name": "Jos\u00e9", "odd": "\ud800"})
    assert text.isascii()
    assert json.loads(text[len("42/n,") :]) == ["x", {"name": "Jos\u00e9", "odd": "\ud800"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('0/notifications,{"token":"t"}', Message(eio.CONNECT, "/notifications", {"token": "t"})),
        ("0/notifications,", Message(eio.CONNECT, "/notifications")),
        ("0", Message(eio.CONNECT, "/")),
        ("1/notifications,", Message(eio.DISCONNECT, "/notifications")),
        ("1/notifications", Message(eio.DISCONNECT, "/notifications")),
        ('2/notifications,["subscribe","x"]', Message(eio.EVENT, "/notifications", ["subscribe", "x"])),
        ('2/notifications,12["subscribe"]', Message(eio.EVENT, "/notifications", ["subscribe"], 12)),
        ('2["a",1]', Message(eio.EVENT, "/", ["a", 1])),
        ('3/notifications,7["ok"]', Message(eio.ACK, "/notifications", ["ok"], 7)),
    ],
)
def test_client_socketio_packets_decode_to_their_parts(text: str, message: Message) -> None:
    assert decode(text) == message


def test_engineio_packets_read_per_transport() -> None:
    assert read("3", websocket=False) == ("3", "")
    assert read("1", websocket=True) == ("1", "")
    assert read("2probe", websocket=True) == ("2", "probe")
    assert read("5", websocket=True) == ("5", "")
    assert read('42/n,["a"]', websocket=True) == ("4", Message(eio.EVENT, "/n", ["a"]))
    for only_websocket in ("2probe", "5"):
        with pytest.raises(Malformed):
            read(only_websocket, websocket=False)


def test_a_long_polling_body_is_its_packets_in_order() -> None:
    body = b'40/n,{"token":"t"}\x1e3\x1e42/n,["a"]'
    assert read_payload(body) == [
        ("4", Message(eio.CONNECT, "/n", {"token": "t"})),
        ("3", ""),
        ("4", Message(eio.EVENT, "/n", ["a"])),
    ]


@pytest.mark.parametrize("text", ['2/n,12345678901234567890["a"]', '2/n,["a"', "5-/n,[]", "4/n,{}"])
def test_what_the_decoder_refuses(text: str) -> None:
    with pytest.raises(Malformed):
        decode(text)


# socket.io-client's parsers (engine.io-parser, socket.io-parser), run on what Relay writes
# and on what the client writes.
NODE_SCRIPT = """
const eio = require("engine.io-parser");
const { Encoder, Decoder } = require("socket.io-parser");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const decoded = input.server.map((text) => {
  const packet = eio.decodePacket(text);
  if (packet.type !== "message") return { engine: packet.type, data: packet.data ?? null };
  const decoder = new Decoder();
  let out = null;
  decoder.on("decoded", (p) => {
    out = { type: p.type, nsp: p.nsp, data: p.data ?? null, id: p.id ?? null };
  });
  decoder.add(packet.data);
  return out;
});
const encoded = input.client.map((p) => {
  const [text] = new Encoder().encode(p);
  return new Promise((resolve) => eio.encodePacket({ type: "message", data: text }, false, resolve));
});
Promise.all(encoded).then((client) => {
  const payload = new Promise((resolve) => eio.encodePayload(
    client.map((text) => eio.decodePacket(text)), resolve));
  payload.then((body) => process.stdout.write(JSON.stringify({ decoded, client, body })));
});
"""


@pytest.fixture(scope="module")
def node_parsers() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are not installed")
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True, timeout=300
        )
    return NODE_DIR


def test_socketio_clients_parsers_read_what_relay_writes_and_relay_reads_what_they_write(
    node_parsers: Path,
) -> None:
    ns = "/notifications"
    booking = {"id": "b1", "name": "Jos\u00e9"}
    server = [
        encode(eio.CONNECT, ns, {"sid": "s1", "pid": "p1"}),
        encode(eio.CONNECT_ERROR, ns, {"message": "invalid token"}),
        encode(eio.DISCONNECT, ns),
        encode(eio.ACK, ns, [], ack=3),
        eio.event(ns, "booking_created", booking, "42"),
        eio.PING,
        eio.PONG + "probe",
        eio.NOOP,
        eio.CLOSE,
    ]
    client = [
        {"type": 0, "nsp": ns, "data": {"token": "t", "pid": "p1", "offset": "42"}},
        {"type": 2, "nsp": ns, "data": ["subscribe", {"channel": "booking_created"}], "id": 5},
        {"type": 3, "nsp": ns, "data": ["ok"], "id": 9},
        {"type": 1, "nsp": ns},
    ]
    run = subprocess.run(
        ["node", "-e", NODE_SCRIPT],
        cwd=node_parsers,
        input=json.dumps({"server": server, "client": client}),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    out = json.loads(run.stdout)
    assert out["decoded"] == [
        {"type": 0, "nsp": ns, "data": {"sid": "s1", "pid": "p1"}, "id": None},
        {"type": 4, "nsp": ns, "data": {"message": "invalid token"}, "id": None},
        {"type": 1, "nsp": ns, "data": None, "id": None},
        {"type": 3, "nsp": ns, "data": [], "id": 3},
        {"type": 2, "nsp": ns, "data": ["booking_created", booking, "42"], "id": None},
        {"engine": "ping", "data": None},
        {"engine": "pong", "data": "probe"},
        {"engine": "noop", "data": None},
        {"engine": "close", "data": None},
    ]
    assert [read(text, websocket=True)[1] for text in out["client"]] == [
        Message(eio.CONNECT, ns, {"token": "t", "pid": "p1", "offset": "42"}),
        Message(eio.EVENT, ns, ["subscribe", {"channel": "booking_created"}], 5),
        Message(eio.ACK, ns, ["ok"], 9),
        Message(eio.DISCONNECT, ns),
    ]
    assert [kind for kind, _ in read_payload(out["body"].encode())] == ["4"] * 4
