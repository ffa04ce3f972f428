"""The pool's connections keep a prepared-statement cache only where it is safe (relay/pooler.py)."""

from __future__ import annotations

import pytest

from relay.db import create_pool
from relay.pooler import shares_sessions
from relay.store import ClaimRoom, Store


@pytest.mark.parametrize(("setting", "cached"), [("auto", True), ("off", True), ("on", False)])
async def test_the_pool_caches_prepared_statements_unless_told_it_is_pooled(
    db_url: str, setting: str, cached: bool
) -> None:
    pool = await create_pool(db_url, pooler=setting, max_size=1)  # type: ignore[arg-type]
    try:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT $1::int", 1)
            named = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
        assert (named > 0) is cached
    finally:
        await pool.close()


async def test_a_direct_connection_does_not_share_sessions(db_url: str) -> None:
    assert await shares_sessions(db_url) is False


async def test_the_delivery_claim_is_planned_for_each_claims_values(db_url: str) -> None:
    """A cached statement gets a generic plan after five runs, made for the table of that
    moment; the claim's must be planned afresh every time (Store.claim), however many
    claims one session runs."""
    pool = await create_pool(db_url, pooler="off", max_size=1)
    try:
        async with pool.acquire() as conn:
            store = Store(conn)
            for _ in range(12):
                await store.claim("webhook", 10, "w1", 30.0, ClaimRoom({}, 10, {}, 10, {}, 10))
            plans = await conn.fetchrow(
                "SELECT coalesce(sum(generic_plans), 0) AS generic "
                "FROM pg_prepared_statements WHERE statement LIKE '%SKIP' || ' LOCKED%'"
            )
            cached = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
        assert plans["generic"] == 0
        assert cached > 0  # the other statements are still cached
    finally:
        await pool.close()
