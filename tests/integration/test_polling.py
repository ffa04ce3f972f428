from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from relay.app import Relay
from tests.conftest import make_settings
from tests.integration.livekit import insert, live_settings, running, token


async def _get(relay: Relay, tok: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.http_port}") as client:
        return await client.get("/events", params=params, headers=headers)


async def test_polling_returns_only_the_token_merchants_events_from_the_oldest_and_pages_by_cursor(
    db_url: str,
) -> None:
    settings = live_settings(db_url)
    await insert(db_url, ("a1", "mA"), ("b1", "mB"), ("a2", "mA"), ("a3", "mA"))
    async with running(settings) as relay:
        first = (await _get(relay, token(settings, "mA"), limit=2)).json()
        assert [e["data"]["id"] for e in first["events"]] == ["a1", "a2"]
        assert {e["channel"] for e in first["events"]} == {"booking_created"}
        assert first["next"] == first["events"][-1]["cursor"]
        rest = (await _get(relay, token(settings, "mA"), since=first["next"])).json()
        assert [e["data"]["id"] for e in rest["events"]] == ["a3"]
        empty = (await _get(relay, token(settings, "mA"), since=rest["next"])).json()
        assert empty == {"events": [], "next": rest["next"]}
        other = (await _get(relay, token(settings, "mB"))).json()
        assert [e["data"]["id"] for e in other["events"]] == ["b1"]


async def test_polling_cursor_does_not_skip_an_event_that_commits_after_a_later_id(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        tok = token(settings, "mA")
        start = (await _get(relay, tok)).json()["next"]
        late = await asyncpg.connect(db_url)
        tx = late.transaction()
        await tx.start()
        await late.execute("""INSERT INTO "Booking" (id, "merchantId", status) VALUES ('late', 'mA', 'P')""")
        await insert(db_url, ("early", "mA"))
        page = (await _get(relay, tok, since=start)).json()
        assert [e["data"]["id"] for e in page["events"]] == ["early"]
        await tx.commit()
        await late.close()
        page = (await _get(relay, tok, since=page["next"])).json()
        assert [e["data"]["id"] for e in page["events"]] == ["late"]


async def test_polling_refuses_bad_cursor_bad_limit_and_missing_token(db_url: str) -> None:
    settings = live_settings(db_url)
    async with running(settings) as relay:
        tok = token(settings, "mA")
        for params in ({"since": "abc"}, {"since": "-1"}, {"limit": "0"}, {"limit": "x"}):
            response = await _get(relay, tok, **params)
            assert response.status_code == 400, params
            assert "error" in response.json()
        assert (await _get(relay, None)).status_code == 401
        assert (await _get(relay, "not.a.jwt")).status_code == 401


async def test_polling_caps_limit(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    await conn.execute(
        """INSERT INTO "Booking" (id, "merchantId", status)
           SELECT 'b' || i, 'mA', 'P' FROM generate_series(1, 1001) AS i"""
    )
    await conn.close()
    settings = live_settings(db_url)
    async with running(settings) as relay:
        page = (await _get(relay, token(settings, "mA"), limit=5000)).json()
        assert len(page["events"]) == 1000


async def test_polling_answers_503_while_jwt_is_off(db_url: str) -> None:
    async with running(make_settings(db_url)) as relay:
        response = await _get(relay, "x")
        assert response.status_code == 503
        assert "RELAY_JWT_SECRET" in response.json()["error"]
