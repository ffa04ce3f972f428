from __future__ import annotations

import asyncpg

# The prune job and the push channel rely on exactly these columns.
EXPECTED = {
    "id": ("bigint", "NO"),
    "merchant_id": ("text", "NO"),
    "user_id": ("text", "NO"),
    "endpoint": ("text", "NO"),
    "p256dh": ("text", "NO"),
    "auth": ("text", "NO"),
    "expiration_time": ("timestamp with time zone", "YES"),
    "channels": ("ARRAY", "YES"),
    "created_at": ("timestamp with time zone", "NO"),
    "updated_at": ("timestamp with time zone", "NO"),
    "last_success_at": ("timestamp with time zone", "YES"),
    "failure_count": ("integer", "NO"),
    "gone_since": ("timestamp with time zone", "YES"),
}


async def test_push_subscriptions_has_exactly_the_agreed_columns(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            """SELECT column_name, data_type, is_nullable, column_default
               FROM information_schema.columns
               WHERE table_schema = 'relay' AND table_name = 'push_subscriptions'"""
        )
        unique = await conn.fetchval(
            """SELECT count(*) FROM pg_indexes WHERE schemaname = 'relay' AND tablename = 'push_subscriptions'
               AND indexdef LIKE 'CREATE UNIQUE INDEX%(merchant_id, endpoint)'"""
        )
        fresh = await conn.fetchrow(
            """INSERT INTO relay.push_subscriptions (merchant_id, user_id, endpoint, p256dh, auth)
               VALUES ('m', 'u', 'https://p.example/1', 'k', 'a') RETURNING *"""
        )
    finally:
        await conn.close()
    assert {r["column_name"]: (r["data_type"], r["is_nullable"]) for r in rows} == EXPECTED
    assert unique == 1
    assert fresh["failure_count"] == 0 and fresh["created_at"] is not None and fresh["channels"] is None
    assert fresh["gone_since"] is None and fresh["last_success_at"] is None
