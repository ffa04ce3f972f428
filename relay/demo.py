"""`relay demo`: an embedded PostgreSQL, a demo "Booking" table with changing bookings, a
second source (``billing.payments``, attached as ``payment``) with their payments, and a
relay handing on every change. Nothing to set up."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay import app
from relay.auth import Claims, TokenVerifier, mint_token
from relay.config import Settings
from relay.db import create_pool
from relay.demo_receiver import DemoReceiver
from relay.embedded import EmbeddedPostgres
from relay.http_auth import authenticate, error
from relay.push.vapid import generate_key_pair
from relay.store import Store, migrate, queries
from relay.webhooks.endpoints import add_endpoint

logger = logging.getLogger(__name__)

MERCHANTS = ("merchant-a", "merchant-b")
STATUSES = ("PENDING", "CONFIRMED", "IN_PROGRESS", "COMPLETED", "CANCELLED")
CUSTOMERS = ("Ava", "Noah", "Mia", "Leo", "Zoe", "Kai", "Ivy", "Eli", "Ruby", "Max")
SERVICES = ("Haircut", "Colour", "Massage", "Facial", "Manicure", "Beard trim")
# relay attach billing.payments --entity payment --tenant-column merchant_id --watch status
#   --fields booking_id,status,amount_cents
PAYMENTS_SOURCE = (
    "billing.payments",
    "payment",
    "merchant_id",
    "id",
    ["status"],
    ["booking_id", "status", "amount_cents"],
)


@contextlib.asynccontextmanager
async def demo_database(settings: Settings) -> AsyncIterator[str]:
    """DATABASE_URL when set, else an embedded server that is removed afterwards."""
    if settings.database_url:
        yield settings.database_url
        return
    print("starting an embedded PostgreSQL ...", flush=True)
    server = await asyncio.to_thread(EmbeddedPostgres)
    try:
        await asyncio.to_thread(server.start)
        yield server.url
    finally:
        await asyncio.to_thread(server.destroy)


def demo_query(name: str) -> str:
    """The demo application's queries live in ``sql/demo.sql``, beside Relay's own."""
    return queries("demo.sql")[name]


async def prepare(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(demo_query("booking_table"))
        await conn.execute(demo_query("payment_table"))
        await migrate(conn)
        await Store(conn).attach_source(*PAYMENTS_SOURCE)
    finally:
        await conn.close()


async def generate_bookings(dsn: str, stop: asyncio.Event, interval: float = 1.0) -> None:
    """Create, reschedule and cancel bookings for two merchants, one change per interval."""
    conn = await asyncpg.connect(dsn)
    rng = random.Random()
    try:
        while not stop.is_set():
            await change_one_booking(conn, rng)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        await conn.close()


async def change_one_booking(conn: asyncpg.Connection, rng: random.Random) -> None:
    merchant = rng.choice(MERCHANTS)
    if rng.random() < 0.3 and await change_one_payment(conn, rng, merchant):
        return
    open_ids = [r["id"] for r in await conn.fetch(demo_query("open_bookings"), merchant)]
    roll = rng.random()
    if not open_ids or roll < 0.45:
        today = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
        start = today + timedelta(minutes=30 * rng.randrange(0, 20))
        booking_id = f"bk_{uuid.uuid4().hex[:12]}"
        customer, service = rng.choice(CUSTOMERS), rng.choice(SERVICES)
        await conn.execute(demo_query("add_booking"), booking_id, merchant, customer, service, start)
    elif roll < 0.9:
        await conn.execute(demo_query("set_status"), rng.choice(open_ids), rng.choice(STATUSES[1:]))
    else:
        await conn.execute(demo_query("remove_booking"), rng.choice(open_ids))


async def change_one_payment(conn: asyncpg.Connection, rng: random.Random, merchant: str) -> bool:
    """Settle a pending payment, or ask for one for a confirmed booking; False if neither."""
    pending = [r["id"] for r in await conn.fetch(demo_query("pending_payments"), merchant)]
    if pending:
        status = "PAID" if rng.random() < 0.85 else "FAILED"
        await conn.execute(demo_query("settle_payment"), rng.choice(pending), status)
        return True
    unpaid = [r["id"] for r in await conn.fetch(demo_query("unpaid_bookings"), merchant)]
    if not unpaid:
        return False
    payment_id = f"pay_{uuid.uuid4().hex[:10]}"
    amount = rng.choice((2500, 4000, 5500, 7000))
    await conn.execute(demo_query("add_payment"), payment_id, merchant, rng.choice(unpaid), amount)
    return True


def booking_routes(pool: asyncpg.Pool, verifier: TokenVerifier) -> list[BaseRoute]:
    """Read-only views of the demo's own "Booking" table for the calendar page, scoped to
    the merchant of the caller's token like every other route."""

    def as_json(row: asyncpg.Record) -> dict[str, object]:
        return {**dict(row), "startTime": row["startTime"].isoformat()}

    async def today(request: Request) -> Response:
        claims = authenticate(request, verifier)
        if not isinstance(claims, Claims):
            return claims
        rows = await pool.fetch(demo_query("bookings"), claims.merchant_id)
        return JSONResponse([as_json(r) for r in rows])

    async def one(request: Request) -> Response:
        claims = authenticate(request, verifier)
        if not isinstance(claims, Claims):
            return claims
        row = await pool.fetchrow(demo_query("booking"), request.path_params["id"], claims.merchant_id)
        return JSONResponse(as_json(row)) if row else error(404, "no such booking")

    return [Route("/demo/bookings", today), Route("/demo/bookings/{id}", one)]


async def run_demo(settings: Settings, *, port: int | None = None) -> None:
    async with demo_database(settings) as dsn:
        await prepare(dsn)
        demo_settings = settings.model_copy(
            update={
                "database_url": dsn,
                "listen_database_url": dsn,
                "http_host": "127.0.0.1",
                "http_port": port if port is not None else settings.http_port,
                "jwt_secret": settings.jwt_secret or secrets.token_urlsafe(32),
                "egress_allow": [*settings.egress_allow, ipaddress.ip_network("127.0.0.0/8")],
                **demo_push_keys(settings),
            }
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        receiver = DemoReceiver()
        receiver_server, receiver_port = await serve_local(receiver.app)
        for merchant in MERCHANTS:
            _endpoint, secret = await add_webhook(
                dsn, merchant, f"http://127.0.0.1:{receiver_port}/hook/{merchant}", demo_settings
            )
            receiver.secrets[merchant] = secret
        # The demo application reads its own table over a pool of its own, as a real one would.
        pool = await create_pool(dsn, max_size=2)
        routes = booking_routes(pool, TokenVerifier(demo_settings))
        async with pool, app.start(demo_settings, extra_routes=routes) as relay:
            token = mint_token(demo_settings, merchant_id=MERCHANTS[0], user_id="demo-staff", ttl=86400)
            url = f"http://127.0.0.1:{relay.http_port}/?token={token}"
            print(f"\nrelay demo running. Live calendar of {MERCHANTS[0]}:\n\n  {url}\n", flush=True)
            print(f"demo token ({MERCHANTS[0]}): {token}\nCtrl-C stops everything.\n", flush=True)
            print(
                f"signed webhooks of both merchants go to http://127.0.0.1:{receiver_port}/hook/…", flush=True
            )
            await generate_bookings(dsn, stop)
        receiver_server.should_exit = True
        print("demo stopped", flush=True)


def demo_push_keys(settings: Settings) -> dict[str, str]:
    """Web Push needs a VAPID key pair: make one for the demo unless one is configured."""
    if settings.vapid_private_key:
        return {}
    private, _public = generate_key_pair()
    return {
        "vapid_private_key": private,
        "vapid_subject": settings.vapid_subject or "mailto:demo@example.com",
    }


async def add_webhook(dsn: str, merchant: str, url: str, settings: Settings) -> tuple[object, str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await add_endpoint(Store(conn), merchant_id=merchant, url=url, allow=settings.egress_allow)
    finally:
        await conn.close()


async def serve_local(asgi: Starlette) -> tuple[uvicorn.Server, int]:
    server = uvicorn.Server(
        uvicorn.Config(asgi, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    asyncio.get_running_loop().create_task(server.serve(), name="demo-receiver")
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    return server, int(server.servers[0].sockets[0].getsockname()[1])
