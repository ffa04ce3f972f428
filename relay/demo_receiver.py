"""The demo's merchant integration: a local webhook receiver that verifies every
signature, as a merchant's server would, and prints each delivery."""

from __future__ import annotations

import hmac
import json
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.webhooks.signing import sign

TOLERANCE = 300  # seconds; Standard Webhooks receivers refuse older timestamps (replays)


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """True when one of the ``webhook-signature`` values matches and the timestamp is fresh."""
    try:
        msg_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > TOLERANCE:
        return False
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in headers.get("webhook-signature", "").split())


class DemoReceiver:
    """POST /hook/{merchant}: verify, print one line, answer 204 (400 if the signature is wrong)."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.app = Starlette(routes=[Route("/hook/{merchant}", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        merchant = request.path_params["merchant"]
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        secret = self.secrets.get(merchant)
        if secret is None or not verify(secret, headers, body):
            print(f"webhook {merchant}: signature REFUSED ({headers.get('webhook-id')})", flush=True)
            return Response(status_code=400)
        message = json.loads(body)
        data = message["data"]
        status = data.get("status") or data.get("newStatus") or ""
        print(
            f"webhook {merchant}: signature ok  {headers['webhook-id']:<10} {message['type']:<16} "
            f"{data.get('id')} {status}",
            flush=True,
        )
        return Response(status_code=204)
