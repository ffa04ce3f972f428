"""Schemathesis fuzzes every operation of relay/openapi.py against a running relay.

Schemathesis's pytest integration makes one test per operation and runs its phases
(schema examples, coverage: boundary and wrong-typed values, then fuzzing), with valid
and schema-violating data. Each case is sent twice: with a valid bearer token, and with
none, a forged or an expired one. Every answer must be below 500, every 4xx must be JSON
with a string ``error``, schema-violating requests must be refused with a 4xx, and answers
must match the document (status codes, content types, bodies). Hypothesis runs
derandomized, so CI sees the same cases every time.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import hypothesis
import jwt
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from relay import openapi
from relay.app import start
from relay.auth import mint_token
from relay.push.vapid import generate_key_pair
from tests.conftest import Cluster, make_settings

SECRET = "fuzz-secret-0123456789abcdef0123456789abcdef"
EXAMPLES = 40  # fuzzing-phase examples per operation, on top of the coverage-phase cases
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def error_is_json_with_message(_ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx/5xx answer is ``{"error": "<message>", ...}``."""
    if response.status_code < 400:
        return
    try:
        body = json.loads(response.content or b"")
    except ValueError:
        what = f"{case.method} {case.formatted_path} -> {response.status_code}"
        raise AssertionError(f"{what} is not JSON: {response.content[:200]!r}") from None
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (
        f"{case.method} {case.formatted_path} -> {response.status_code} without an error message: {body!r}"
    )


# Schema-violating requests must be refused with a 4xx: schemathesis's list of refusals plus
# 413, the answer to a body over the route's limit (a too-long field can make one).
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [
                    *("400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"),
                    "5xx",
                ]
            }
        }
    }
)
SCHEMA = schemathesis.openapi.from_dict(openapi.document(), config=CONFIG)


@pytest.fixture(scope="module")
def live(cluster: Cluster) -> Iterator[tuple[str, dict[str, str | None]]]:
    """A relay serving from a thread of its own (the fuzzed tests are sync), on a fresh
    database; its base URL and tokens by kind."""
    database = asyncio.run(cluster.create_database())
    ready: queue.Queue[tuple[str, dict[str, str | None]] | BaseException] = queue.Queue()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with running_relay(cluster.url(database)) as started:
                ready.put(started)
                await stop.wait()
        except BaseException as exc:
            ready.put(exc)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="fuzzed-relay")
    thread.start()
    try:
        started = ready.get(timeout=60)
        if isinstance(started, BaseException):
            raise started
        yield started
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
        asyncio.run(cluster.drop_database(database))


@SCHEMA.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzzed_requests_get_no_5xx_json_errors_and_documented_answers(
    case: schemathesis.Case, live: tuple[str, dict[str, str | None]]
) -> None:
    """Every case goes out twice: with the valid token, and with none, a forged or an expired one."""
    base_url, tokens = live
    others = [kind for kind in tokens if kind != "valid"]
    other = others[zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % len(others)]
    for kind in ("valid", other):
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        token = tokens[kind]
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        case.headers = headers
        response = case.call(base_url=base_url, timeout=10)
        case.validate_response(response, checks=CHECKS, additional_checks=[error_is_json_with_message])


@asynccontextmanager
async def running_relay(db_url: str) -> AsyncIterator[tuple[str, dict[str, str | None]]]:
    """A relay with every route on (JWT, Web Push), ready; its base URL and tokens by kind."""
    private, _public = generate_key_pair()
    settings = make_settings(
        db_url,
        jwt_secret=SECRET,
        vapid_private_key=private,
        vapid_subject="mailto:fuzz@example.com",
        egress_allow=["127.0.0.0/8"],
    )
    now = int(time.time())
    valid = mint_token(settings, merchant_id="m_fuzz", user_id="u_fuzz")
    tokens: dict[str, str | None] = {
        "valid": valid,
        "none": None,
        "forged": jwt.encode({"sub": "u", "merchantId": "m_fuzz", "exp": now + 600}, "not-the-secret" * 3),
        "expired": jwt.encode({"sub": "u", "merchantId": "m_fuzz", "exp": now - 600}, SECRET),
    }
    async with start(settings) as relay:
        base_url = f"http://127.0.0.1:{relay.http_port}"
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                if (await client.get(f"{base_url}/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
        yield base_url, tokens


# Inputs the fuzzer rarely draws but that broke routes once (5xx before they were fixed).
HOSTILE = [
    ("GET", "/events?since=9999999999999999999", None, 400),  # past bigint
    ("DELETE", "/webhooks/99999999999999999999", None, 404),
    ("DELETE", "/webhooks", b'{"id": 99999999999999999999}', 404),
    ("DELETE", "/webhooks", b'{"id": Infinity}', 422),
    ("DELETE", "/webhooks", b'{"id": true}', 422),
    ("POST", "/webhooks", b'{"url": "https://hooks.example.com/", "events": 5}', 422),
    ("POST", "/webhooks", b'{"url": "https://hooks.example.com/\\ud800"}', 400),  # lone surrogate
    ("POST", "/webhooks", b"[" * 10_000, 400),  # nested past the parser's recursion limit
    ("POST", "/webhooks", b"{" + b" " * 20_000 + b"}", 413),
    ("POST", "/push/subscriptions", b"[" * 10_000, 400),
    ("DELETE", "/push/subscriptions", b'{"endpoint": "https://push.example.com/\\u0000"}', 422),
    ("GET", "/no-such-route", None, 404),
    ("PUT", "/webhooks", None, 405),
]


def test_hostile_requests_get_the_documented_json_4xx(live: tuple[str, dict[str, str | None]]) -> None:
    base_url, tokens = live
    wrong = []
    headers = {"Authorization": f"Bearer {tokens['valid']}"}
    with httpx.Client(base_url=base_url, headers=headers) as client:
        for method, path, body, status in HOSTILE:
            response = client.request(method, path, content=body)
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = None
            if response.status_code != status or not isinstance(message, str):
                sent = (body or b"")[:60]
                wrong.append(f"{method} {path} {sent!r}: {response.status_code} {response.text[:200]}")
    assert not wrong, "\n".join(wrong)


def test_the_served_document_is_relay_openapi(live: tuple[str, dict[str, str | None]]) -> None:
    base_url, _tokens = live
    assert httpx.get(f"{base_url}/openapi.json").json() == openapi.document()
