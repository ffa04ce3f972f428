from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from relay import app
from relay.app import Relay
from relay.auth import mint_token
from relay.config import Settings
from relay.errors import ConfigError
from relay.push.vapid import generate_key_pair
from tests.conftest import make_settings
from tests.pushservice import Browser, b64url

PRIVATE, PUBLIC = generate_key_pair()
PUSH = {
    "jwt_secret": "test-secret-test-secret-test-secret",
    "vapid_private_key": PRIVATE,
    "vapid_subject": "mailto:ops@example.com",
    "egress_allow": "127.0.0.0/8",
}
ENDPOINT = "https://push.example.com/wpush/v2/abc"


@pytest.fixture
def push_settings(db_url: str) -> Settings:
    return make_settings(db_url, **PUSH)


@pytest.fixture
async def relay(push_settings: Settings) -> AsyncIterator[Relay]:
    async with app.start(push_settings) as running:
        yield running


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as http:
        yield http


def auth(relay: Relay, merchant: str = "m1", user: str = "u1") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(relay.settings, merchant_id=merchant, user_id=user)}"}


async def stored(db_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch("SELECT * FROM relay.push_subscriptions ORDER BY id")
    finally:
        await conn.close()


async def test_vapid_public_key_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/push/vapid-public-key")
    assert response.status_code == 200
    assert response.json() == {"publicKey": PUBLIC}


async def test_push_routes_answer_503_json_while_push_is_off(db_url: str) -> None:
    settings = make_settings(db_url, jwt_secret=PUSH["jwt_secret"])
    async with (
        app.start(settings) as running,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.http_port}") as http,
    ):
        key = await http.get("/push/vapid-public-key")
        body = Browser().subscription(ENDPOINT)
        sub = await http.post("/push/subscriptions", json=body, headers=auth(running))
    assert key.status_code == 503 and "RELAY_VAPID_PRIVATE_KEY" in key.json()["error"]
    assert sub.status_code == 503 and "error" in sub.json()


async def test_subscriptions_answer_503_json_while_token_routes_are_off(db_url: str) -> None:
    settings = make_settings(db_url, vapid_private_key=PRIVATE, vapid_subject="mailto:ops@example.com")
    async with (
        app.start(settings) as running,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.http_port}") as http,
    ):
        response = await http.post("/push/subscriptions", json=Browser().subscription(ENDPOINT))
    assert response.status_code == 503
    assert "RELAY_JWT_SECRET" in response.json()["error"]


async def test_malformed_vapid_key_stops_start_up_with_one_line(db_url: str) -> None:
    settings = make_settings(db_url, **{**PUSH, "vapid_private_key": b64url(b"\x01" * 33)})
    with pytest.raises(ConfigError) as err:
        async with app.start(settings):
            pass
    assert "RELAY_VAPID_PRIVATE_KEY" in str(err.value) and "\n" not in str(err.value)


async def test_subscribe_stores_it_for_the_tokens_user_and_merchant_and_upserts_by_endpoint(
    relay: Relay, client: httpx.AsyncClient, db_url: str
) -> None:
    browser = Browser()
    body = browser.subscription(ENDPOINT, expirationTime=None, channels=["booking_created"])
    first = await client.post("/push/subscriptions", json=body, headers=auth(relay, "m1", "u1"))
    assert first.status_code == 201, first.text
    again = Browser().subscription(ENDPOINT)  # the browser re-subscribed with new keys
    second = await client.post("/push/subscriptions", json=again, headers=auth(relay, "m1", "u2"))
    assert second.status_code == 201
    rows = await stored(db_url)
    assert len(rows) == 1
    row = rows[0]
    assert (row["merchant_id"], row["user_id"], row["endpoint"]) == ("m1", "u2", ENDPOINT)
    assert row["p256dh"] == again["keys"]["p256dh"] and row["auth"] == again["keys"]["auth"]
    assert row["channels"] is None  # the new body has no filter: every channel


async def test_expiration_time_in_milliseconds_is_stored(
    relay: Relay, client: httpx.AsyncClient, db_url: str
) -> None:
    body = Browser().subscription(ENDPOINT, expirationTime=4102444800000)  # 2100-01-01
    assert (await client.post("/push/subscriptions", json=body, headers=auth(relay))).status_code == 201
    assert (await stored(db_url))[0]["expiration_time"].year == 2100


def _with(body: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    changed = {**body, "keys": dict(body["keys"])}
    target = changed["keys"] if path.startswith("keys.") else changed
    name = path.removeprefix("keys.")
    if value is None:
        del target[name]
    else:
        target[name] = value
    return changed


OFF_CURVE = base64.urlsafe_b64encode(b"\x04" + b"\x01" * 64).decode()


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("keys.p256dh", "not*base64!", "keys.p256dh"),
        ("keys.p256dh", b64url(b"\x04" + b"\x01" * 32), "keys.p256dh"),  # 33 bytes
        ("keys.p256dh", OFF_CURVE, "keys.p256dh"),  # right length, not on the curve
        ("keys.auth", None, "keys.auth"),  # missing auth
        ("keys.auth", b64url(b"\x00" * 15), "keys.auth"),
        ("endpoint", "http://push.example.com/x", "endpoint"),  # http outside RELAY_EGRESS_ALLOW
        ("endpoint", "ftp://push.example.com/x", "endpoint"),
        ("endpoint", "https://user:pw@push.example.com/x", "endpoint"),
        ("endpoint", "https://169.254.169.254/latest", "endpoint"),  # egress guard: link-local
        ("channels", ["booking_exploded"], "channels"),
        ("keys", None, "keys"),
        ("expirationTime", 1e20, "expirationTime"),
        ("expirationTime", "tomorrow", "expirationTime"),
    ],
)
async def test_invalid_subscription_is_422_naming_the_field_and_nothing_is_stored(
    relay: Relay, client: httpx.AsyncClient, db_url: str, path: str, value: object, field: str
) -> None:
    body = Browser().subscription(ENDPOINT)
    bad = {k: v for k, v in body.items() if k != "keys"} if path == "keys" else _with(body, path, value)
    response = await client.post("/push/subscriptions", json=bad, headers=auth(relay))
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["error"].startswith(field)
    assert any(e["field"] == field for e in payload["errors"])
    assert await stored(db_url) == []


async def test_http_endpoint_is_accepted_inside_egress_allow(relay: Relay, client: httpx.AsyncClient) -> None:
    body = Browser().subscription("http://127.0.0.1:9/push/local")
    response = await client.post("/push/subscriptions", json=body, headers=auth(relay))
    assert response.status_code == 201, response.text


async def test_body_that_is_not_json_is_400(relay: Relay, client: httpx.AsyncClient) -> None:
    response = await client.post("/push/subscriptions", content=b"{nope", headers=auth(relay))
    assert response.status_code == 400
    assert response.json()["error"] == "body is not JSON"


async def test_subscribe_without_a_valid_token_is_401(client: httpx.AsyncClient, db_url: str) -> None:
    body = Browser().subscription(ENDPOINT)
    response = await client.post("/push/subscriptions", json=body, headers={"Authorization": "Bearer x.y.z"})
    assert response.status_code == 401 and "error" in response.json()
    assert await stored(db_url) == []


async def test_delete_removes_only_the_tokens_own_subscription(
    relay: Relay, client: httpx.AsyncClient, db_url: str
) -> None:
    body = Browser().subscription(ENDPOINT)
    await client.post("/push/subscriptions", json=body, headers=auth(relay, "m1", "u1"))
    other = await client.request(
        "DELETE", "/push/subscriptions", json={"endpoint": ENDPOINT}, headers=auth(relay, "m2", "u1")
    )
    assert other.status_code == 204
    assert len(await stored(db_url)) == 1  # another merchant's token cannot remove it
    own = await client.request(
        "DELETE", "/push/subscriptions", json={"endpoint": ENDPOINT}, headers=auth(relay, "m1", "u1")
    )
    assert own.status_code == 204
    assert await stored(db_url) == []


async def test_delete_without_endpoint_is_422(relay: Relay, client: httpx.AsyncClient) -> None:
    response = await client.request("DELETE", "/push/subscriptions", json={}, headers=auth(relay))
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "endpoint"


async def test_service_worker_and_subscribe_snippet_are_served(client: httpx.AsyncClient) -> None:
    sw = await client.get("/sw.js")
    snippet = await client.get("/static/push.js")
    assert sw.status_code == 200 and "javascript" in sw.headers["content-type"]
    assert 'addEventListener("push"' in sw.text and "notificationclick" in sw.text
    assert snippet.status_code == 200 and "pushManager.subscribe" in snippet.text
    assert "/push/vapid-public-key" in snippet.text and "/push/subscriptions" in snippet.text


async def test_wrong_method_and_oversized_body_get_json_errors(
    relay: Relay, client: httpx.AsyncClient
) -> None:
    wrong = await client.get("/push/subscriptions", headers=auth(relay))
    assert wrong.status_code == 405 and "error" in wrong.json()
    body = b"[" + b"1," * 20_000 + b"1]"
    huge = await client.post("/push/subscriptions", content=body, headers=auth(relay))
    assert huge.status_code == 413 and "error" in huge.json()


async def test_another_merchant_posting_the_endpoint_gets_its_own_row_and_cannot_delete_the_owners(
    relay: Relay, client: httpx.AsyncClient, db_url: str
) -> None:
    owner, intruder = Browser(), Browser()
    created = await client.post(
        "/push/subscriptions", json=owner.subscription(ENDPOINT), headers=auth(relay, "m_owner", "u1")
    )
    assert created.status_code == 201
    # Merchant A's token posts merchant B's endpoint with A's keys, then deletes it.
    posted = await client.post(
        "/push/subscriptions", json=intruder.subscription(ENDPOINT), headers=auth(relay, "m_intruder", "u9")
    )
    assert posted.status_code == 201 and posted.json()["id"] != created.json()["id"]
    removed = await client.request(
        "DELETE", "/push/subscriptions", json={"endpoint": ENDPOINT}, headers=auth(relay, "m_intruder", "u9")
    )
    assert removed.status_code == 204
    # Another user of the owner's own merchant cannot delete it either.
    colleague = await client.request(
        "DELETE", "/push/subscriptions", json={"endpoint": ENDPOINT}, headers=auth(relay, "m_owner", "u2")
    )
    assert colleague.status_code == 204
    rows = await stored(db_url)
    assert [(r["id"], r["merchant_id"], r["user_id"], r["p256dh"]) for r in rows] == [
        (created.json()["id"], "m_owner", "u1", owner.p256dh)
    ]


async def test_subscriptions_per_user_and_per_merchant_are_limited(db_url: str) -> None:
    settings = make_settings(db_url, **PUSH, push_subscriptions_per_user=2, push_subscriptions_per_merchant=3)
    browser = Browser()

    def body(name: str) -> dict[str, Any]:
        return browser.subscription(f"https://push.example.com/wpush/{name}")

    async with (
        app.start(settings) as running,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.http_port}") as http,
    ):

        async def post(name: str, merchant: str = "m1", user: str = "u1") -> httpx.Response:
            return await http.post(
                "/push/subscriptions", json=body(name), headers=auth(running, merchant, user)
            )

        # Concurrent posts of one user take turns: exactly the user's limit gets in.
        answers = await asyncio.gather(*(post(f"a{i}") for i in range(5)))
        assert sorted(a.status_code for a in answers) == [201, 201, 409, 409, 409]
        refused = next(a for a in answers if a.status_code == 409).json()["error"]
        assert "2 push subscriptions" in refused and "RELAY_PUSH_SUBSCRIPTIONS_PER_USER" in refused
        kept = [f"a{i}" for i, a in enumerate(answers) if a.status_code == 201]
        assert (await post(kept[0])).status_code == 201  # re-subscribing adds nothing
        assert (await post("b1", user="u2")).status_code == 201  # the merchant's third
        over = await post("c1", user="u3")
        assert over.status_code == 409 and "RELAY_PUSH_SUBSCRIPTIONS_PER_MERCHANT" in over.json()["error"]
        assert (await post("c1", merchant="m2", user="u3")).status_code == 201  # another merchant's own
        gone = await http.request(
            "DELETE",
            "/push/subscriptions",
            json={"endpoint": body("b1")["endpoint"]},
            headers=auth(running, "m1", "u2"),
        )
        assert gone.status_code == 204
        assert (await post("c1", user="u3")).status_code == 201  # room again
    counts = {(r["merchant_id"], r["user_id"]) for r in await stored(db_url)}
    assert len(await stored(db_url)) == 4 and ("m1", "u3") in counts and ("m2", "u3") in counts
