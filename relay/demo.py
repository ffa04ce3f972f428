"""`relay demo`: an embedded PostgreSQL, a demo "Booking" table with changing bookings,
and a relay handing on every change. Nothing to set up."""

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
from relay.auth import Claims, mint_token
from relay.config import Settings
from relay.db import migrate
from relay.demo_receiver import DemoReceiver
from relay.embedded import EmbeddedPostgres
from relay.http_auth import authenticate, error
from relay.vapid import generate_key_pair
from relay.webhooks import add_endpoint

logger = logging.getLogger(__name__)

MERCHANTS = ("merchant-a", "merchant-b")
STATUSES = ("PENDING", "CONFIRMED", "IN_PROGRESS", "COMPLETED", "CANCELLED")
BOOKING_TABLE = """
CREATE TABLE IF NOT EXISTS "Booking" (
    id              text PRIMARY KEY,
    "merchantId"    text NOT NULL,
    status          text NOT NULL,
    "customerName"  text NOT NULL,
    "serviceName"   text NOT NULL,
    "startTime"     timestamptz NOT NULL,
    "updatedAt"     timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_BOOKINGS = (
    """SELECT id, "merchantId", status, "customerName", "serviceName", "startTime" FROM "Booking\""""
)
CUSTOMERS = ("Ava", "Noah", "Mia", "Leo", "Zoe", "Kai", "Ivy", "Eli", "Ruby", "Max")
SERVICES = ("Haircut", "Colour", "Massage", "Facial", "Manicure", "Beard trim")


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


async def prepare(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(BOOKING_TABLE)
        await migrate(conn)
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
    open_ids = [
        r["id"]
        for r in await conn.fetch(
            """SELECT id FROM "Booking"
               WHERE "merchantId" = $1 AND status NOT IN ('COMPLETED', 'CANCELLED')""",
            merchant,
        )
    ]
    roll = rng.random()
    if not open_ids or roll < 0.45:
        today = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
        start = today + timedelta(minutes=30 * rng.randrange(0, 20))
        await conn.execute(
            """INSERT INTO "Booking" (id, "merchantId", status, "customerName", "serviceName", "startTime")
               VALUES ($1, $2, 'PENDING', $3, $4, $5)""",
            f"bk_{uuid.uuid4().hex[:12]}",
            merchant,
            rng.choice(CUSTOMERS),
            rng.choice(SERVICES),
            start,
        )
    elif roll < 0.9:
        booking = rng.choice(open_ids)
        status = rng.choice(STATUSES[1:])
        await conn.execute(
            """UPDATE "Booking" SET status = $2, "updatedAt" = now() WHERE id = $1""", booking, status
        )
    else:
        await conn.execute("""DELETE FROM "Booking" WHERE id = $1""", rng.choice(open_ids))


def booking_routes(holder: list[app.Relay]) -> list[BaseRoute]:
    """Read-only views of the demo's own "Booking" table for the calendar page, scoped to
    the merchant of the caller's token like every other route."""

    def as_json(row: asyncpg.Record) -> dict[str, object]:
        return {**dict(row), "startTime": row["startTime"].isoformat()}

    async def today(request: Request) -> Response:
        claims = authenticate(request, holder[0].verifier)
        if not isinstance(claims, Claims):
            return claims
        async with holder[0].pool.acquire() as conn:
            rows = await conn.fetch(
                f'{SELECT_BOOKINGS} WHERE "merchantId" = $1 ORDER BY "startTime"', claims.merchant_id
            )
        return JSONResponse([as_json(r) for r in rows])

    async def one(request: Request) -> Response:
        claims = authenticate(request, holder[0].verifier)
        if not isinstance(claims, Claims):
            return claims
        async with holder[0].pool.acquire() as conn:
            row = await conn.fetchrow(
                f'{SELECT_BOOKINGS} WHERE id = $1 AND "merchantId" = $2',
                request.path_params["id"],
                claims.merchant_id,
            )
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
        holder: list[app.Relay] = []
        async with app.start(demo_settings, extra_routes=booking_routes(holder)) as relay:
            holder.append(relay)
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
        return await add_endpoint(conn, merchant_id=merchant, url=url, allow=settings.egress_allow)
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
