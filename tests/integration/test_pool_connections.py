"""The pool's connections keep a prepared-statement cache only where it is safe (relay/pooler.py)."""

from __future__ import annotations

import pytest

from relay.db import create_pool
from relay.pooler import shares_sessions


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


async def test_cached_statements_are_planned_for_each_executions_values_even_after_a_reset(
    db_url: str,
) -> None:
    pool = await create_pool(db_url, pooler="off", max_size=1)
    try:
        for _ in range(2):  # the second time on the same session, after the pool's reset
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
                assert await conn.fetchval("SHOW application_name") == "relay"
    finally:
        await pool.close()
