from __future__ import annotations

import asyncio

import httpx
import respx
from cryptography.hazmat.primitives.asymmetric import ec

from relay.push.sender import Subscription, WebPushSender
from relay.push.vapid import VapidSigner, b64url_encode, public_key_bytes

DATA = {"id": "b1", "merchantId": "m1", "status": "PENDING", "operation": "INSERT", "eventId": 1}


def _subscription(endpoint: str) -> Subscription:
    key = ec.generate_private_key(ec.SECP256R1())
    return Subscription(1, endpoint, b64url_encode(public_key_bytes(key)), b64url_encode(bytes(16)))


def _sender(client: httpx.AsyncClient, per_origin: int = 16) -> WebPushSender:
    signer = VapidSigner(ec.generate_private_key(ec.SECP256R1()), "mailto:ops@example.com")
    return WebPushSender(signer, client, per_origin=per_origin)


async def test_requests_in_flight_per_push_service_are_bounded() -> None:
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(201)

    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as client:
        sender = _sender(client, per_origin=3)
        subs = [_subscription(f"https://push.example.com/{i}") for i in range(12)]
        outcomes = await asyncio.gather(*(sender.send(s, "booking_created", DATA) for s in subs))
    assert all(o.kind == "success" for o in outcomes)
    assert peak == 3


@respx.mock
async def test_push_service_is_reachable_through_respx() -> None:
    route = respx.post("https://fcm.example.com/wp/abc").mock(return_value=httpx.Response(201))
    async with httpx.AsyncClient() as client:
        subscription = _subscription("https://fcm.example.com/wp/abc")
        outcome = await _sender(client).send(subscription, "booking_created", DATA)
    assert outcome.kind == "success" and route.called
    request = route.calls.last.request
    assert request.headers["content-encoding"] == "aes128gcm"
    assert request.headers["authorization"].startswith("vapid t=")
    assert request.headers["topic"] == "b1" and request.headers["urgency"] == "high"
