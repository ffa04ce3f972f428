"""Chaos run: prove "nothing lost" while everything that can break, breaks.

Changes of two sources (the built-in "Booking" and a table attached with `relay attach`,
billing.payments) from concurrent writers across several merchants, while the
listeners' backends are killed every ~0.5 s, PostgreSQL restarts once, one of two
relay processes is SIGKILLed and started again, the webhook receiver fails 30 % of
requests and hangs on 5 %, and the push service answers 429 (with Retry-After)
sometimes and 410 for one subscription. WebSocket clients drop and resume with
``since``. At the end every target must hold every event of its merchant.

``make chaos`` runs the full size (``make chaos CAPTURE=poll`` in poll capture mode, where
the relays' pollers are killed too; ``CAPTURE=wal`` in wal capture mode, where the backends
reading the replication slot are killed and the relay process reading it is the one
SIGKILLed); ``tests/e2e/test_chaos.py`` shortened ones.
Everything talks to Relay through its public contract only: the CLI, the HTTP
routes, the WebSocket messages, and the outgoing requests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import http_ece
import httpx
import uvicorn
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.auth import mint_token
from relay.config import Settings
from relay.db import TRANSIENT_ERRORS
from relay.embedded import EmbeddedPostgres, free_port
from relay.store import migrate

SECRET = "chaos-secret-0123456789abcdef0123456789"
STATUSES = ("PENDING", "CONFIRMED", "IN_PROGRESS", "COMPLETED", "CANCELLED")
# Requests a 410 subscription may still get: those in flight when the first 410 came back,
# and those leased by a process that was SIGKILLed before it could record the 410 (sent
# again when the lease runs out). At most the per-target hold of the two processes.
GONE_ALLOWANCE = 32
BOOKING = """CREATE TABLE "Booking" (id text PRIMARY KEY, "merchantId" text NOT NULL, status text NOT NULL)"""
# The second source: snake_case, another schema, an integer key.
PAYMENTS = """CREATE SCHEMA billing;
CREATE TABLE billing.payments (
    payment_no   bigint PRIMARY KEY,
    merchant_id  text NOT NULL,
    state        text NOT NULL,
    amount_cents integer NOT NULL
)"""
ATTACH_PAYMENTS = ["attach", "billing.payments", "--entity", "payment", "--tenant-column", "merchant_id",
                   "--key", "payment_no", "--watch", "state", "--fields", "amount_cents"]  # fmt: skip
PAYMENT_STATES = ("PENDING", "AUTHORIZED", "PAID", "REFUNDED", "FAILED")
PAYMENT_SHARE = 0.4  # of the writers' changes


@dataclass
class ChaosConfig:
    changes: int = 5000
    writers: int = 4
    merchants: int = 3
    kill_listener_every: float = 0.5
    restart_postgres: bool = True
    sigkill_relay: bool = True
    receiver_error_rate: float = 0.30
    receiver_hang_rate: float = 0.05
    push_throttle_rate: float = 0.10
    ws_clients_per_merchant: int = 2
    drain_timeout: float = 180.0
    seed: int = 1
    capture: str = "notify"  # the capture mode (`relay capture`): notify, poll or wal


@dataclass
class Report:
    events_committed: int = 0
    changes_acknowledged: int = 0  # commits the writers saw succeed: each one is an event
    per_merchant_events: dict[str, int] = field(default_factory=dict)
    per_source_events: dict[str, int] = field(default_factory=dict)
    webhook_unique: dict[str, int] = field(default_factory=dict)
    webhook_duplicates: dict[str, int] = field(default_factory=dict)
    webhook_bad_signatures: int = 0
    push_unique: dict[str, int] = field(default_factory=dict)
    push_after_gone: int = 0
    push_gone_recorded: bool = False
    ws_complete_in_order: dict[str, bool] = field(default_factory=dict)
    ws_resumes: int = 0
    cross_tenant: int = 0
    listener_kills: int = 0
    poller_kills: int = 0
    drain_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"events committed: {self.events_committed} {self.per_merchant_events}",
            f"events per source: {self.per_source_events}",
            f"changes acknowledged to the writers: {self.changes_acknowledged}",
            f"listener backends killed: {self.listener_kills}, "
            f"poller / slot reader backends killed: {self.poller_kills}",
        ]
        for merchant, expected in sorted(self.per_merchant_events.items()):
            out.append(
                f"webhook {merchant}: {self.webhook_unique.get(merchant, 0)}/{expected} unique webhook-ids, "
                f"{self.webhook_duplicates.get(merchant, 0)} duplicates"
            )
            out.append(f"push {merchant}: {self.push_unique.get(merchant, 0)}/{expected} unique events")
        out.append(f"webhook signatures that failed verification: {self.webhook_bad_signatures}")
        out.append(
            f"requests to the 410 subscription after its first 410: {self.push_after_gone} "
            f"(allowed {GONE_ALLOWANCE}); marked gone: {self.push_gone_recorded}"
        )
        for client, ok in sorted(self.ws_complete_in_order.items()):
            out.append(
                f"websocket {client}: {'every event, in order' if ok else 'INCOMPLETE or out of order'}"
            )
        out.append(f"websocket resumes with since: {self.ws_resumes}")
        out.append(f"events seen by another merchant: {self.cross_tenant}")
        out.append(f"last commit -> last delivery: {self.drain_seconds:.1f} s")
        out += [f"PROBLEM: {p}" for p in self.problems]
        return out


# ---------------------------------------------------------------- receivers


class WebhookReceiver:
    """Verifies every delivery with standardwebhooks; fails and hangs on purpose."""

    def __init__(self, cfg: ChaosConfig, rng: random.Random) -> None:
        self.cfg = cfg
        self.rng = rng
        self.secrets: dict[str, str] = {}
        self.received: dict[str, list[str]] = defaultdict(list)
        self.bad_signatures = 0
        self.last_delivery = 0.0
        self.closing = asyncio.Event()
        self.app = Starlette(routes=[Route("/hook/{merchant}", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        merchant = request.path_params["merchant"]
        body = await request.body()
        roll = self.rng.random()
        if roll < self.cfg.receiver_hang_rate:
            with contextlib.suppress(TimeoutError):  # hang for longer than Relay's timeout
                await asyncio.wait_for(self.closing.wait(), 30)
            return Response(status_code=204)
        if roll < self.cfg.receiver_hang_rate + self.cfg.receiver_error_rate:
            return Response("chaos", status_code=500)
        try:
            payload = Webhook(self.secrets[merchant]).verify(body, dict(request.headers))
        except Exception:
            self.bad_signatures += 1
            return Response(status_code=400)
        if payload["data"]["merchantId"] != merchant:
            self.received["__cross__"].append(request.headers["webhook-id"])
        self.received[merchant].append(request.headers["webhook-id"])
        self.last_delivery = time.monotonic()
        return Response(status_code=204)


@dataclass
class PushSubscriber:
    name: str
    merchant: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    gone: bool = False

    def subscription(self, base_url: str) -> dict[str, Any]:
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": f"{base_url}/push/{self.name}",
            "keys": {"p256dh": _b64(public), "auth": _b64(self.auth)},
        }


class PushService:
    """Decrypts every push (RFC 8291) and records the event ids; 429s and one 410."""

    def __init__(self, cfg: ChaosConfig, rng: random.Random) -> None:
        self.cfg = cfg
        self.rng = rng
        self.subscribers: dict[str, PushSubscriber] = {}
        self.received: dict[str, list[int]] = defaultdict(list)
        self.after_gone = 0
        self.gone_answered = False
        self.last_delivery = 0.0
        self.app = Starlette(routes=[Route("/push/{name}", self.push, methods=["POST"])])

    async def push(self, request: Request) -> Response:
        sub = self.subscribers[request.path_params["name"]]
        body = await request.body()
        if sub.gone:
            # Requests already in flight when the first 410 came back are excused.
            if self.gone_answered:
                self.after_gone += 1
            self.gone_answered = True
            return Response(status_code=410)
        if self.rng.random() < self.cfg.push_throttle_rate:
            return Response(status_code=429, headers={"Retry-After": "1"})
        plain = http_ece.decrypt(body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm")
        data = json.loads(plain)["data"]
        if data["merchantId"] != sub.merchant:
            self.received["__cross__"].append(data["eventId"])
        self.received[sub.name].append(int(data["eventId"]))
        self.last_delivery = time.monotonic()
        return Response(status_code=201)


# ---------------------------------------------------------------- relay processes


class RelayProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = {**env, "RELAY_HTTP_PORT": str(self.port)}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run"], env=self.env, stdout=handle, stderr=subprocess.STDOUT
        )
        handle.close()
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.base}/readyz", timeout=1)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        tail = "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"relay on port {self.port} did not become ready; the end of its log:\n{tail}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


# ---------------------------------------------------------------- websocket clients


class LiveClient:
    """Connects to a random relay, drops every few seconds, resumes with ``since``."""

    def __init__(self, name: str, merchant: str, token: str, relays: list[RelayProcess], rng: random.Random):
        self.name, self.merchant, self.token, self.relays, self.rng = name, merchant, token, relays, rng
        self.events: list[int] = []
        self.cursor: str | None = None
        self.cross = 0
        self.resumes = 0
        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.sessions: list[str] = []  # port:events received, per connection (for a failed drain)

    async def run(self) -> None:
        # Start from a cursor (what `GET /events` answers before any event), so that every
        # connection resumes: a socket without `since` is live-only, and in wal mode the first
        # events may all be handed on at once, while this client happens to be reconnecting.
        async with httpx.AsyncClient() as http:
            page = await http.get(
                f"{self.relays[0].base}/events?limit=1", headers={"Authorization": f"Bearer {self.token}"}
            )
            self.cursor = page.json()["next"]
        while not self.done.is_set():
            relay = self.rng.choice([r for r in self.relays if r.proc is not None] or self.relays)
            url = f"ws://127.0.0.1:{relay.port}/ws?token={self.token}"
            if self.cursor is not None:
                url += f"&since={self.cursor}"
                self.resumes += 1
            try:
                async with websockets.connect(url, open_timeout=3, max_size=2**22) as ws:
                    hello = json.loads(await asyncio.wait_for(ws.recv(), 3))
                    assert hello["type"] == "connected", hello
                    self.connected.set()
                    deadline = time.monotonic() + self.rng.uniform(1.0, 4.0)
                    self.sessions.append(f"{relay.port}@{time.monotonic():.1f}")
                    while time.monotonic() < deadline and not self.done.is_set():
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 0.25)
                        except TimeoutError:
                            continue
                        message = json.loads(raw)
                        if message.get("type") != "event":
                            continue
                        data = message["data"]
                        if data["merchantId"] != self.merchant:
                            self.cross += 1
                        self.events.append(int(data["eventId"]))
                        self.cursor = message["cursor"]
            except (OSError, websockets.WebSocketException, TimeoutError, AssertionError):
                await asyncio.sleep(0.2)


# ---------------------------------------------------------------- the run


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class LocalServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    async def close(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 10)


async def _serve(app: Starlette) -> LocalServer:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return LocalServer(server, task, port)


def _vapid_env() -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "vapid-keys"], capture_output=True, text=True, check=True
    )
    env = dict(line.split("=", 1) for line in result.stdout.strip().splitlines())
    return {
        "RELAY_VAPID_PRIVATE_KEY": env["RELAY_VAPID_PRIVATE_KEY"],
        "RELAY_VAPID_SUBJECT": "mailto:ops@example.com",
    }


async def _writer(
    url: str, n: int, merchants: list[str], rng: random.Random, label: str, number: int, acked: list[int]
) -> None:
    conn: asyncpg.Connection | None = None
    mine: dict[str, str] = {}  # booking id -> status
    payments: dict[int, str] = {}  # payment_no -> state
    done = attempts = 0
    while done < n:
        attempts += 1
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(url, timeout=3)
            if rng.random() < PAYMENT_SHARE:
                await _change_payment(conn, rng, merchants, payments, number * 10_000_000 + attempts)
            else:
                await _change_booking(conn, rng, merchants, mine, f"{label}-{attempts}")
            done += 1
            acked[0] += 1
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError):
            # A change whose commit was cut off may or may not have committed; relay.events
            # is the truth the report compares against. The rows this writer knew may have
            # changed: it forgets them, so that every change it sees succeed is an event.
            mine.clear()
            payments.clear()
            if conn is not None:
                conn.terminate()
            conn = None
            await asyncio.sleep(0.1)
        await asyncio.sleep(0)
    if conn is not None:
        await conn.close()


async def _change_booking(
    conn: asyncpg.Connection, rng: random.Random, merchants: list[str], mine: dict[str, str], new_id: str
) -> None:
    roll = rng.random()
    if not mine or roll < 0.5:
        await conn.execute(
            'INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, $2, $3)',
            new_id,
            rng.choice(merchants),
            "PENDING",
        )
        mine[new_id] = "PENDING"
    elif roll < 0.9:
        booking = rng.choice(list(mine))
        status = rng.choice([s for s in STATUSES if s != mine[booking]])
        await conn.execute('UPDATE "Booking" SET status = $2 WHERE id = $1', booking, status)
        mine[booking] = status
    else:
        booking = rng.choice(list(mine))
        await conn.execute('DELETE FROM "Booking" WHERE id = $1', booking)
        del mine[booking]


async def _change_payment(
    conn: asyncpg.Connection, rng: random.Random, merchants: list[str], mine: dict[int, str], new_no: int
) -> None:
    roll = rng.random()
    if not mine or roll < 0.5:
        await conn.execute(
            "INSERT INTO billing.payments (payment_no, merchant_id, state, amount_cents)"
            " VALUES ($1, $2, $3, $4)",
            new_no,
            rng.choice(merchants),
            "PENDING",
            rng.randrange(100, 100_000),
        )
        mine[new_no] = "PENDING"
    elif roll < 0.9:
        payment = rng.choice(list(mine))
        state = rng.choice([s for s in PAYMENT_STATES if s != mine[payment]])
        await conn.execute("UPDATE billing.payments SET state = $2 WHERE payment_no = $1", payment, state)
        mine[payment] = state
    else:
        payment = rng.choice(list(mine))
        await conn.execute("DELETE FROM billing.payments WHERE payment_no = $1", payment)
        del mine[payment]


async def _kill_listeners(url: str, cfg: ChaosConfig, stop: asyncio.Event, report: Report) -> None:
    """Terminate every relay listener's backend, and the poller's (poll mode) or the slot
    reader's (wal mode), about every ``kill_listener_every`` seconds."""
    conn: asyncpg.Connection | None = None
    while not stop.is_set():
        await asyncio.sleep(cfg.kill_listener_every * random.uniform(0.6, 1.4))
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(url, timeout=2)
            killed = dict(
                await conn.fetch(
                    "SELECT application_name, sum(pg_terminate_backend(pid)::int) FROM pg_stat_activity "
                    "WHERE application_name IN ('relay-listener', 'relay-poller', 'relay-wal') GROUP BY 1"
                )
            )
            report.listener_kills += int(killed.get("relay-listener", 0))
            report.poller_kills += int(killed.get("relay-poller", 0)) + int(killed.get("relay-wal", 0))
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError):
            if conn is not None:
                conn.terminate()
            conn = None
    if conn is not None:
        await conn.close()


async def run_chaos(cfg: ChaosConfig, workdir: Path | None = None) -> Report:
    rng = random.Random(cfg.seed)
    report = Report()
    own_dir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="relay-chaos-"))
    pg = EmbeddedPostgres(durable=False)
    url = pg.url
    relays: list[RelayProcess] = []
    servers: list[LocalServer] = []
    receiver = WebhookReceiver(cfg, rng)
    push = PushService(cfg, rng)
    try:
        pg.start()
        conn = await asyncpg.connect(url)
        await conn.execute(BOOKING)
        await conn.execute(PAYMENTS)
        await migrate(conn)
        await conn.close()

        merchants = [f"merchant-{i}" for i in range(cfg.merchants)]
        servers.append(await _serve(receiver.app))
        servers.append(await _serve(push.app))
        receiver_port, push_port = servers[0].port, servers[1].port

        env = {
            **os.environ,
            "DATABASE_URL": url,
            "RELAY_HTTP_HOST": "127.0.0.1",
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_EGRESS_ALLOW": "127.0.0.0/8",
            "RELAY_RETRY_SCHEDULE": ",".join(["0", "100ms", "200ms"] + ["500ms"] * 5 + ["1s"] * 22),
            "RELAY_WEBHOOK_TIMEOUT": "1",
            "RELAY_RECONCILE_INTERVAL": "1",
            "RELAY_PROBE_INTERVAL": "0.5",
            "RELAY_RECONNECT_MAX_DELAY": "1",
            "RELAY_LOG_FORMAT": "text",
            **_vapid_env(),
        }
        env.pop("CI", None)
        subprocess.run(
            [sys.executable, "-m", "relay", *ATTACH_PAYMENTS], env=env, capture_output=True, check=True
        )
        subprocess.run(
            [sys.executable, "-m", "relay", "capture", cfg.capture], env=env, capture_output=True, check=True
        )
        for merchant in merchants:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "relay",
                    "webhooks",
                    "add",
                    "--merchant",
                    merchant,
                    "--url",
                    f"http://127.0.0.1:{receiver_port}/hook/{merchant}",
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            secret = re.search(r"^secret=(\S+)$", out, re.MULTILINE)
            assert secret, out
            receiver.secrets[merchant] = secret.group(1)

        relays = [RelayProcess(env, workdir / f"relay-{i}.log") for i in range(2)]
        for relay in relays:
            await relay.start()

        settings = Settings(jwt_secret=SECRET)
        tokens = {m: mint_token(settings, merchant_id=m, user_id=f"staff-{m}", ttl=7200) for m in merchants}
        async with httpx.AsyncClient(base_url=relays[0].base) as client:
            for i, merchant in enumerate(merchants):
                subs = [
                    PushSubscriber(
                        f"sub-{merchant}", merchant, ec.generate_private_key(ec.SECP256R1()), os.urandom(16)
                    )
                ]
                if i == 0:
                    subs.append(
                        PushSubscriber(
                            "sub-gone",
                            merchant,
                            ec.generate_private_key(ec.SECP256R1()),
                            os.urandom(16),
                            gone=True,
                        )
                    )
                for sub in subs:
                    push.subscribers[sub.name] = sub
                    r = await client.post(
                        "/push/subscriptions",
                        json=sub.subscription(f"http://127.0.0.1:{push_port}"),
                        headers={"Authorization": f"Bearer {tokens[merchant]}"},
                    )
                    assert r.status_code == 201, r.text

        clients = [
            LiveClient(f"{m}#{k}", m, tokens[m], relays, rng)
            for m in merchants
            for k in range(cfg.ws_clients_per_merchant)
        ]
        client_tasks = [asyncio.create_task(c.run()) for c in clients]
        async with asyncio.timeout(30):
            for c in clients:
                await c.connected.wait()

        stop_chaos = asyncio.Event()
        killer = asyncio.create_task(_kill_listeners(url, cfg, stop_chaos, report))
        per_writer = cfg.changes // cfg.writers
        acked = [0]  # changes the writers saw commit
        writers = [
            asyncio.create_task(
                _writer(url, per_writer, merchants, random.Random(cfg.seed + w), f"w{w}", w, acked)
            )
            for w in range(cfg.writers)
        ]

        async def progress() -> int:
            with contextlib.suppress(Exception):
                c = await asyncpg.connect(url, timeout=2)
                try:
                    return int(await c.fetchval("SELECT count(*) FROM relay.events"))
                finally:
                    await c.close()
            return 0

        restarted = killed = False
        total = per_writer * cfg.writers
        while not all(w.done() for w in writers):
            await asyncio.sleep(0.25)
            # In wal mode events appear only as the slot is read: count the writers' commits.
            done = acked[0] if cfg.capture == "wal" else await progress()
            if cfg.restart_postgres and not restarted and done >= total * 0.3:
                restarted = True
                await asyncio.to_thread(pg.stop, "fast")
                await asyncio.sleep(1.0)
                await asyncio.to_thread(pg.start)
            if cfg.sigkill_relay and not killed and done >= total * 0.6:
                killed = True
                victim = relays[await _slot_reader(relays) if cfg.capture == "wal" else 1]
                victim.kill()
                await asyncio.sleep(1.0)
                await victim.start()
        for w in writers:
            w.result()
        if cfg.restart_postgres and not restarted:
            report.problems.append("PostgreSQL was not restarted while the writers ran")
        if cfg.sigkill_relay and not killed:
            report.problems.append("no relay process was SIGKILLed while the writers ran")
        report.changes_acknowledged = per_writer * cfg.writers
        last_commit = time.monotonic()
        stop_chaos.set()
        await killer
        if cfg.capture == "wal":
            await _slot_read(url, cfg.drain_timeout)

        conn = await asyncpg.connect(url)
        rows = await conn.fetch("SELECT id, merchant_id, channel FROM relay.events")
        await conn.close()
        expected: dict[str, list[int]] = defaultdict(list)
        per_source: dict[str, int] = defaultdict(int)
        for r in rows:
            expected[r["merchant_id"]].append(r["id"])
            per_source[r["channel"].rpartition("_")[0]] += 1
        report.events_committed = len(rows)
        report.per_merchant_events = {m: len(expected[m]) for m in merchants}
        report.per_source_events = {source: per_source[source] for source in ("booking", "payment")}

        def complete() -> bool:
            for m in merchants:
                if {int(w.removeprefix("evt_")) for w in receiver.received[m]} != set(expected[m]):
                    return False
                if set(push.received[f"sub-{m}"]) != set(expected[m]):
                    return False
            return all(set(c.events) >= set(expected[c.merchant]) for c in clients)

        def missing() -> str:
            """What is still missing or unexpected, per target (for a drain that times out)."""
            out = []
            for m in merchants:
                hooks = {int(w.removeprefix("evt_")) for w in receiver.received[m]}
                pushed = set(push.received[f"sub-{m}"])
                out.append(
                    f"{m}: webhooks -{len(set(expected[m]) - hooks)} +{len(hooks - set(expected[m]))}, "
                    f"push -{len(set(expected[m]) - pushed)} +{len(pushed - set(expected[m]))}"
                )
            out += [
                f"{c.name}: -{len(set(expected[c.merchant]) - set(c.events))} ({' '.join(c.sessions[-12:])})"
                for c in clients
            ]
            out.append(f"relays {[r.port for r in relays]}, writes ended at {last_commit:.1f}")
            return "; ".join(out)

        try:
            async with asyncio.timeout(cfg.drain_timeout):
                while not complete():
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"not delivered within {cfg.drain_timeout:g} s: {missing()}") from None
        await asyncio.sleep(1.0)  # let stragglers (duplicates, late pushes) land before counting
        report.drain_seconds = max(receiver.last_delivery, push.last_delivery) - last_commit

        for c in clients:
            c.done.set()
        await asyncio.gather(*client_tasks)

        conn = await asyncpg.connect(url)
        ordered = await conn.fetch("SELECT id, merchant_id FROM relay.events ORDER BY position")
        gone_recorded = await conn.fetchval(
            "SELECT count(*) = 1 FROM relay.push_subscriptions"
            " WHERE endpoint LIKE '%/push/sub-gone' AND gone_since IS NOT NULL"
        )
        await conn.close()
        by_position: dict[str, list[int]] = defaultdict(list)
        for r in ordered:
            by_position[r["merchant_id"]].append(r["id"])

        for m in merchants:
            ids = receiver.received[m]
            report.webhook_unique[m] = len(set(ids))
            report.webhook_duplicates[m] = len(ids) - len(set(ids))
            report.push_unique[m] = len(set(push.received[f"sub-{m}"]))
        report.webhook_bad_signatures = receiver.bad_signatures
        report.push_after_gone = push.after_gone
        report.push_gone_recorded = bool(gone_recorded)
        report.cross_tenant = (
            len(receiver.received["__cross__"])
            + len(push.received["__cross__"])
            + sum(c.cross for c in clients)
        )
        report.ws_resumes = sum(c.resumes for c in clients)
        for c in clients:
            report.ws_complete_in_order[c.name] = c.events == by_position[c.merchant]
        _check(report, merchants)
        return report
    finally:
        for relay in relays:
            relay.stop()
        receiver.closing.set()
        for server in servers:
            await server.close()
        pg.destroy()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


async def _slot_reader(relays: list[RelayProcess]) -> int:
    """Which relay process reads the replication slot now (wal mode; the first if none says so)."""
    async with httpx.AsyncClient() as client:
        for _ in range(50):
            for i, relay in enumerate(relays):
                with contextlib.suppress(httpx.HTTPError):
                    text = (await client.get(f"{relay.base}/metrics", timeout=2)).text
                    if "relay_wal_leader 1.0" in text.splitlines():
                        return i
            await asyncio.sleep(0.1)
    return 0


async def _slot_read(url: str, timeout: float) -> None:
    """Wait until the slot was read past every commit so far (wal mode)."""
    async with asyncio.timeout(timeout):
        conn = await asyncpg.connect(url)
        try:
            target = await conn.fetchval("SELECT pg_current_wal_lsn()")
            while not await conn.fetchval(
                "SELECT confirmed_flush_lsn >= $1 FROM pg_replication_slots WHERE slot_name = 'relay'", target
            ):
                await asyncio.sleep(0.2)
        finally:
            await conn.close()


def _check(report: Report, merchants: list[str]) -> None:
    if report.events_committed < report.changes_acknowledged:
        report.problems.append(
            f"{report.changes_acknowledged} changes were acknowledged but only {report.events_committed} "
            "became events"
        )
    for source, count in report.per_source_events.items():
        if not count:
            report.problems.append(f"no event of source {source} was committed")
    for m in merchants:
        expected = report.per_merchant_events[m]
        if report.webhook_unique[m] != expected:
            report.problems.append(f"webhook {m}: {report.webhook_unique[m]} of {expected}")
        if report.push_unique[m] != expected:
            report.problems.append(f"push {m}: {report.push_unique[m]} of {expected}")
    if report.webhook_bad_signatures:
        report.problems.append(f"{report.webhook_bad_signatures} webhook signatures failed verification")
    if report.push_after_gone > GONE_ALLOWANCE:
        report.problems.append(f"{report.push_after_gone} pushes to a subscription after it answered 410")
    if not report.push_gone_recorded:
        report.problems.append("the subscription that answered 410 is not marked gone")
    if report.cross_tenant:
        report.problems.append(f"{report.cross_tenant} events reached another merchant")
    for name, ok in report.ws_complete_in_order.items():
        if not ok:
            report.problems.append(f"websocket client {name} missed, repeated or reordered events")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make chaos")
    parser.add_argument("--changes", type=int, default=ChaosConfig.changes)
    parser.add_argument("--seed", type=int, default=ChaosConfig.seed)
    parser.add_argument("--capture", choices=("notify", "poll", "wal"), default=ChaosConfig.capture)
    args = parser.parse_args(argv)
    cfg = ChaosConfig(changes=args.changes, seed=args.seed, capture=args.capture)
    started = time.monotonic()
    print(f"chaos run in capture mode {cfg.capture}", flush=True)
    report = asyncio.run(run_chaos(cfg))
    print("\n".join(report.lines()))
    print(f"chaos run took {time.monotonic() - started:.0f} s")
    return 1 if report.problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
