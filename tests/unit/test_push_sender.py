from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from relay.egress import build_client
from relay.push.sender import Subscription, WebPushSender
from relay.push.vapid import VapidSigner, b64url_encode, public_key_bytes
from tests.webhook_receiver import LOOPBACK

DATA = {"id": "b1", "merchantId": "m1", "status": "PENDING", "operation": "INSERT", "eventId": 1}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _subscription(endpoint: str) -> Subscription:
    key = ec.generate_private_key(ec.SECP256R1())
    return Subscription(1, endpoint, b64url_encode(public_key_bytes(key)), b64url_encode(bytes(16)))


def _sender(client: object, per_origin: int = 16) -> WebPushSender:
    signer = VapidSigner(ec.generate_private_key(ec.SECP256R1()), "mailto:ops@example.com")
    return WebPushSender(signer, client, per_origin=per_origin)  # type: ignore[arg-type]


@asynccontextmanager
async def push_service(handler: Handler) -> AsyncIterator[str]:
    """A local push service answering with ``handler``; yields its origin."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_requests_in_flight_per_push_service_are_bounded() -> None:
    in_flight = peak = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return web.Response(status=201)

    async with push_service(slow) as origin, build_client(LOOPBACK) as client:
        sender = _sender(client, per_origin=3)
        subs = [_subscription(f"{origin}/{i}") for i in range(12)]
        outcomes = await asyncio.gather(*(sender.send(s, "booking_created", DATA) for s in subs))
    assert all(o.kind == "success" for o in outcomes)
    assert peak == 3


async def test_a_push_carries_the_encryption_vapid_topic_and_urgency_headers() -> None:
    seen: list[dict[str, str]] = []

    async def accept(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        await request.read()
        return web.Response(status=201)

    async with push_service(accept) as origin, build_client(LOOPBACK) as client:
        outcome = await _sender(client).send(_subscription(f"{origin}/wp/abc"), "booking_created", DATA)
    assert outcome.kind == "success" and len(seen) == 1
    headers = {k.lower(): v for k, v in seen[0].items()}
    assert headers["content-encoding"] == "aes128gcm"
    assert headers["authorization"].startswith("vapid t=")
    assert headers["topic"] == "b1" and headers["urgency"] == "high"
