"""`relay webhooks ...` and the merchant-scoped `/webhooks` routes."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import jwt
import pytest

from relay import app
from relay.cli import main
from tests.conftest import make_settings
from tests.webhook_receiver import booking, write_bookings

SECRET = "test-secret-with-enough-bytes-for-hs256"


def token(merchant: str) -> dict[str, str]:
    claims = {"sub": "u1", "merchantId": merchant, "exp": 4_000_000_000}
    return {"authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


async def test_a_merchant_lists_adds_and_removes_only_its_own_endpoints(db_url: str) -> None:
    settings = make_settings(db_url, jwt_secret=SECRET)
    async with app.start(settings) as relay:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
            created = await client.post(
                "/webhooks", json={"url": "https://a.example.com/hook"}, headers=token("A")
            )
            assert created.status_code == 201
            body = created.json()
            assert body["secret"].startswith("whsec_") and body["events"] is None
            filtered = await client.post(
                "/webhooks",
                json={"url": "https://a.example.com/deleted", "events": ["booking_deleted"]},
                headers=token("A"),
            )
            assert filtered.json()["events"] == ["booking_deleted"]
            other = await client.post("/webhooks", json={"url": "https://b.example.com/"}, headers=token("B"))
            assert other.status_code == 201

            mine = (await client.get("/webhooks", headers=token("A"))).json()["endpoints"]
            assert sorted(e["url"] for e in mine) == [
                "https://a.example.com/deleted",
                "https://a.example.com/hook",
            ]
            assert all("secret" not in e for e in mine)

            stolen = await client.request("DELETE", "/webhooks", json={"id": body["id"]}, headers=token("B"))
            assert stolen.status_code == 404
            removed = await client.request("DELETE", "/webhooks", json={"id": body["id"]}, headers=token("A"))
            assert removed.status_code == 204
            by_path = await client.delete(f"/webhooks/{filtered.json()['id']}", headers=token("A"))
            assert by_path.status_code == 204
            assert (await client.get("/webhooks", headers=token("A"))).json()["endpoints"] == []
            assert len((await client.get("/webhooks", headers=token("B"))).json()["endpoints"]) == 1


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"url": "http://169.254.169.254/latest"}, 422, "link-local"),
        ({"url": "http://[::ffff:127.0.0.1]/"}, 422, "loopback"),
        ({"url": "ftp://example.com/"}, 422, "http or https"),
        ({"url": "https://u:p@example.com/"}, 422, "credentials"),
        ({"url": "https://example.com/", "events": ["nope"]}, 422, "unknown event types"),
        ({}, 422, "url is required"),
    ],
)
async def test_registration_refuses_hostile_urls_with_a_clear_message(
    db_url: str, body: dict[str, object], status: int, message: str
) -> None:
    settings = make_settings(db_url, jwt_secret=SECRET)
    async with app.start(settings) as relay:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
            response = await client.post("/webhooks", json=body, headers=token("A"))
            assert response.status_code == status
            assert message in response.json()["error"]
            not_json = await client.post("/webhooks", content=b"{nope", headers=token("A"))
            assert not_json.status_code == 400
            assert (await client.get("/webhooks")).status_code == 401


async def test_webhook_routes_answer_503_while_tokens_are_off(settings: object) -> None:
    async with app.start(settings) as relay:  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
            response = await client.get("/webhooks", headers=token("A"))
    assert response.status_code == 503
    assert "RELAY_JWT_SECRET" in response.json()["error"]


async def test_cli_manages_endpoints_and_replays_failed_deliveries(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)

    async def relay_cli(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await relay_cli("webhooks", "add", "--merchant", "m1", "--url", "https://m1.example.com/h")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("id=") and lines[1].startswith("secret=whsec_")
    endpoint_id = lines[0].removeprefix("id=")

    code, _, err = await relay_cli("webhooks", "add", "--merchant", "m1", "--url", "http://10.0.0.1/")
    assert code == 1 and "private" in err
    code, _, err = await relay_cli("webhooks", "add", "--merchant", "m1", "--url", "https://a:b@x.example/")
    assert code == 1 and "credentials" in err

    assert (await relay_cli("webhooks", "disable", endpoint_id, "--reason", "maintenance"))[0] == 0
    _, out, _ = await relay_cli("webhooks", "list", "--merchant", "m1")
    assert '"enabled": false' in out and "maintenance" in out
    assert (await relay_cli("webhooks", "enable", endpoint_id))[0] == 0
    _, out, _ = await relay_cli("webhooks", "list")
    assert '"enabled": true' in out

    code, out, _ = await relay_cli("webhooks", "rotate-secret", endpoint_id, "--overlap", "1h")
    assert code == 0 and out.startswith("secret=whsec_")

    await write_bookings(db_url, booking("b1", "m1"), booking("b2", "m1"))
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO relay.deliveries (event_id, channel, target_id, merchant_id, state, attempts) "
            "SELECT id, 'webhook', $1, 'm1', 'failed', 8 FROM relay.events",
            int(endpoint_id),
        )
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM relay.deliveries ORDER BY id")]
        code, out, _ = await relay_cli("webhooks", "replay", "--delivery", str(ids[0]))
        assert code == 0 and out.strip() == "replaying 1 deliveries"
        code, out, _ = await relay_cli("webhooks", "replay")
        assert out.strip() == "replaying 1 deliveries"
        rows = await conn.fetch("SELECT state, attempts FROM relay.deliveries")
        assert [(r["state"], r["attempts"]) for r in rows] == [("pending", 0), ("pending", 0)]
    finally:
        await conn.close()


async def test_webhook_endpoints_table_has_exactly_the_agreed_columns(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = 'relay' AND table_name = 'webhook_endpoints' ORDER BY ordinal_position"
        )
        cursor = await conn.fetchval("SELECT position FROM relay.cursors WHERE name = 'webhook'")
    finally:
        await conn.close()
    columns = {r["column_name"]: (r["data_type"], r["is_nullable"] == "YES") for r in rows}
    assert columns == {
        "id": ("bigint", False),
        "merchant_id": ("text", False),
        "url": ("text", False),
        "events": ("ARRAY", True),
        "secret": ("text", False),
        "previous_secret": ("text", True),
        "previous_secret_expires_at": ("timestamp with time zone", True),
        "enabled": ("boolean", False),
        "disabled_reason": ("text", True),
        "disabled_at": ("timestamp with time zone", True),
        "failing_since": ("timestamp with time zone", True),
        "created_at": ("timestamp with time zone", False),
        "updated_at": ("timestamp with time zone", False),
    }
    assert {r["column_name"]: r["column_default"] for r in rows}["enabled"] == "true"
    assert cursor is None  # the dispatcher creates it when it first runs


async def test_a_merchant_cannot_register_more_endpoints_than_its_limit(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(db_url, jwt_secret=SECRET, webhook_endpoints_per_merchant=3)
    async with app.start(settings) as relay:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
            # Concurrent registrations take turns: exactly the limit gets in.
            answers = await asyncio.gather(
                *(
                    client.post("/webhooks", json={"url": f"https://a.example.com/{i}"}, headers=token("A"))
                    for i in range(6)
                )
            )
            assert sorted(a.status_code for a in answers) == [201, 201, 201, 409, 409, 409]
            refused = next(a for a in answers if a.status_code == 409)
            assert "3 webhook endpoints" in refused.json()["error"]
            assert "RELAY_WEBHOOK_ENDPOINTS_PER_MERCHANT" in refused.json()["error"]
            # Another merchant has a limit of its own; removing one makes room again.
            other = await client.post("/webhooks", json={"url": "https://b.example.com/"}, headers=token("B"))
            assert other.status_code == 201
            first = next(a.json()["id"] for a in answers if a.status_code == 201)
            assert (await client.delete(f"/webhooks/{first}", headers=token("A"))).status_code == 204
            again = await client.post(
                "/webhooks", json={"url": "https://a.example.com/x"}, headers=token("A")
            )
            assert again.status_code == 201

    # `relay webhooks add` refuses past the same limit, with one line.
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("RELAY_WEBHOOK_ENDPOINTS_PER_MERCHANT", "3")
    code = await asyncio.to_thread(
        main, ["webhooks", "add", "--merchant", "A", "--url", "https://a.example.com/y"]
    )
    _, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines()[-1].startswith("relay webhooks: merchant A already has 3 webhook endpoints")
    code = await asyncio.to_thread(
        main, ["webhooks", "add", "--merchant", "B", "--url", "https://b.example.com/y"]
    )
    assert code == 0
