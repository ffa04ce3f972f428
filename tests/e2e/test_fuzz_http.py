"""Schemathesis fuzzes every documented HTTP operation of a running relay.

Each operation gets schema-valid and schema-violating requests (positive and negative
generation), each sent with a valid bearer token, with none, and with a forged one.
Every answer must be below 500, every 4xx must be JSON with a string ``error``, and
answers must match the document (status codes, content types, bodies).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import hypothesis
import jwt
import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from relay.app import start
from relay.auth import mint_token
from relay.vapid import generate_key_pair
from tests.conftest import make_settings

SECRET = "fuzz-secret-0123456789abcdef0123456789abcdef"
EXAMPLES = 25  # per operation and generation mode: about 600 requests in all
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


def fuzz(base_url: str, tokens: dict[str, str | None]) -> list[str]:
    """Run every operation x mode; return the failures (empty when the API held)."""
    session = requests.Session()
    # The document the relay serves (from_url would leave /openapi.json itself out).
    document = session.get(f"{base_url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 12, [op.label for op in operations]
    for operation in operations:
        has_input = bool(list(operation.iter_parameters())) or bool(operation.body)
        modes = (
            (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,)
        )
        for mode in modes:

            @hypothesis.settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
            )
            @given(case=operation.as_strategy(generation_mode=mode), who=st.sampled_from(list(tokens)))
            def check(case: schemathesis.Case, who: str) -> None:
                headers = dict(case.headers or {})
                headers.pop("Authorization", None)
                token = tokens[who]
                if token is not None:
                    headers["Authorization"] = f"Bearer {token}"
                case.headers = headers
                response = case.call(base_url=base_url, session=session, timeout=10)
                case.validate_response(
                    response, checks=CHECKS, additional_checks=[error_is_json_with_message]
                )

            try:
                check()
            except Exception as exc:
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    session.close()
    return failures


@asynccontextmanager
async def running_relay(db_url: str) -> AsyncIterator[tuple[str, dict[str, str | None]]]:
    """A relay with every route on (JWT, Web Push), ready; its base URL and tokens by kind.

    The valid token comes first and twice, so about half the requests reach the database
    and a shrunk failing example carries the valid token."""
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
        "valid again": valid,
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


async def test_every_http_operation_answers_fuzzed_requests_without_5xx_and_with_json_errors(
    db_url: str,
) -> None:
    async with running_relay(db_url) as (base_url, tokens):
        failures = await asyncio.to_thread(fuzz, base_url, tokens)
    assert not failures, "\n\n".join(failures)


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


async def test_hostile_requests_get_the_documented_json_4xx(db_url: str) -> None:
    wrong = []
    async with running_relay(db_url) as (base_url, tokens), httpx.AsyncClient(base_url=base_url) as client:
        headers = {"Authorization": f"Bearer {tokens['valid']}"}
        for method, path, body, status in HOSTILE:
            response = await client.request(method, path, content=body, headers=headers)
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = None
            if response.status_code != status or not isinstance(message, str):
                wrong.append(
                    f"{method} {path} {(body or b'')[:60]!r}: {response.status_code} {response.text[:200]}"
                )
    assert not wrong, "\n".join(wrong)
