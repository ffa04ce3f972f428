"""Where deliveries go: merchants' webhook endpoints and push subscriptions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import asyncpg

from relay.queries import Queries, q


class DestinationQueries(Queries):
    # ------------------------------------------------------------------ webhook endpoints

    async def add_endpoint(
        self, merchant_id: str, url: str, events: list[str] | None, secret: str, limit: int
    ) -> asyncpg.Record | None:
        """Insert an endpoint unless the merchant has ``limit`` already (then None). One
        merchant's registrations take turns, so concurrent ones cannot pass the limit."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute(q("webhook_merchant_lock"), merchant_id)
            if await conn.fetchval(q("webhook_count"), merchant_id) >= limit:
                return None
            row: asyncpg.Record = await conn.fetchrow(q("webhook_add"), merchant_id, url, events, secret)
        return row

    async def endpoints(self, merchant_id: str | None) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            return list(await conn.fetch(q("webhook_list"), merchant_id))

    async def endpoint(self, endpoint_id: int) -> asyncpg.Record | None:
        async with self._conn() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(q("webhook_endpoint"), endpoint_id)
        return row

    async def endpoints_by_id(self, endpoint_ids: Sequence[int]) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(q("webhook_endpoints_by_id"), list(endpoint_ids))
        return rows

    async def delete_endpoint(self, endpoint_id: int, merchant_id: str) -> bool:
        """Remove a merchant's endpoint, cancelling its pending deliveries; False if none."""
        async with self._conn() as conn:
            return bool(await conn.fetchval(q("webhook_delete"), endpoint_id, merchant_id))

    async def disable_endpoint(self, endpoint_id: int, reason: str) -> bool:
        async with self._conn() as conn:
            return await conn.fetchval(q("webhook_disable"), endpoint_id, reason) is not None

    async def enable_endpoint(self, endpoint_id: int) -> bool:
        async with self._conn() as conn:
            return await conn.fetchval(q("webhook_enable"), endpoint_id) is not None

    async def rotate_secret(self, endpoint_id: int, secret: str, overlap: float) -> bool:
        async with self._conn() as conn:
            return await conn.fetchval(q("webhook_rotate"), endpoint_id, secret, overlap) is not None

    async def mark_failing(self, endpoint_id: int, failing: bool) -> None:
        """Start (or end) the endpoint's failure streak."""
        async with self._conn() as conn:
            await conn.execute(q("webhook_failing" if failing else "webhook_recovered"), endpoint_id)

    async def disable_failing_endpoints(self, days: float) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            return list(await conn.fetch(q("webhook_disable_failing"), float(days)))

    async def replay(self, delivery_ids: Sequence[int] | None, endpoint_id: int | None) -> list[int]:
        ids = list(delivery_ids) if delivery_ids else None
        async with self._conn() as conn:
            return [r["id"] for r in await conn.fetch(q("deliveries_replay_failed"), ids, endpoint_id)]

    # ------------------------------------------------------------------ push subscriptions

    async def subscription(self, subscription_id: int) -> asyncpg.Record | None:
        async with self._conn() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(q("push_subscription"), subscription_id)
        return row

    async def subscriptions(self, subscription_ids: Sequence[int]) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(
                q("push_subscriptions_by_id"), list(subscription_ids)
            )
        return rows

    async def upsert_subscription(
        self,
        merchant_id: str,
        user_id: str,
        endpoint: str,
        p256dh: str,
        auth: str,
        expires_at: datetime | None,
        channels: list[str] | None,
        *,
        per_merchant: int,
        per_user: int,
    ) -> tuple[int, bool] | Literal["merchant", "user"]:
        """Store a browser's subscription (one row per merchant and endpoint); return its id and
        whether it is new, or which limit of live subscriptions it would pass. One merchant's
        subscriptions change one at a time, so the counts are still true at the upsert."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute(q("push_subscription_lock"), merchant_id)
            quota = await conn.fetchrow(q("push_subscription_quota"), merchant_id, user_id, endpoint)
            if not quota["endpoint_live"] and quota["merchant_live"] >= per_merchant:
                return "merchant"
            if not quota["endpoint_live_for_user"] and quota["user_live"] >= per_user:
                return "user"
            row = await conn.fetchrow(
                q("push_subscription_upsert"),
                merchant_id,
                user_id,
                endpoint,
                p256dh,
                auth,
                expires_at,
                channels,
            )
        return int(row["id"]), bool(row["created"])

    async def delete_subscription(self, endpoint: str, merchant_id: str, user_id: str) -> None:
        async with self._conn() as conn:
            await conn.execute(q("push_subscription_delete"), endpoint, merchant_id, user_id)

    async def subscription_sent(self, subscription_id: int, success: bool) -> None:
        async with self._conn() as conn:
            await conn.execute(q("push_subscription_sent"), subscription_id, success)

    async def subscription_gone(self, subscription_id: int, delivery_id: int) -> None:
        async with self._conn() as conn:
            await conn.execute(q("push_subscription_gone"), subscription_id, delivery_id)

    async def prune_subscriptions(self) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval(q("push_prune")))
