"""A bare ASGI receiver for the webhook benchmark, run in its own process.

``python -m bench.webhook_receiver PORT``: answers every POST with 204 and records
(booking id, arrival time); ``GET /stats`` returns and clears the records.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import uvicorn

records: list[tuple[str, float]] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "POST":
        records.append((json.loads(body)["data"]["id"], time.time()))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    payload = json.dumps(records).encode()
    records.clear()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": payload})


if __name__ == "__main__":
    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", access_log=False, lifespan="off"
    )
