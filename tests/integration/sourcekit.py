"""Tables the sources tests attach: a snake_case table in another schema with an integer key,
a Prisma-style camelCase table, and a table whose every name needs quoting (a bigint tenant
and a uuid key, so both arrive as JSON strings)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from relay.store import Store


@dataclass(frozen=True)
class Table:
    """One test table: how to create, attach and change it, and what its events carry."""

    name: str  # the pytest id
    ddl: str
    table: str  # as `relay attach` takes it
    entity: str
    tenant: str
    key: str
    watch: list[str]
    fields: list[str]
    insert: str  # $1 key, $2 tenant (both text, cast in the SQL)
    watched: str  # $1 key: changes a watched column
    unwatched: str  # $1 key: changes only columns that are not watched
    delete: str  # $1 key
    created_fields: dict[str, Any]  # the --fields values of a fresh row
    updated_fields: dict[str, Any]
    changes: dict[str, Any]  # what `watched` changes
    merchants: tuple[str, str] = ("mA", "mB")
    keys: tuple[str, ...] = ("1", "2", "3")
    extra: dict[str, str] = field(default_factory=dict)

    async def create(self, conn: asyncpg.Connection) -> None:
        await conn.execute(self.ddl)

    async def attach(self, conn: asyncpg.Connection) -> None:
        await Store(conn).attach_source(
            self.table, self.entity, self.tenant, self.key, self.watch, self.fields
        )

    def created(self, key: str, merchant: str | None, event_id: int) -> dict[str, Any]:
        return {
            "id": key,
            "merchantId": merchant,
            "operation": "INSERT",
            "eventId": event_id,
            **self.created_fields,
        }

    def updated(self, key: str, merchant: str | None, event_id: int) -> dict[str, Any]:
        return {
            "id": key,
            "merchantId": merchant,
            "operation": "UPDATE",
            "eventId": event_id,
            "changes": self.changes,
            **self.updated_fields,
        }

    def deleted(self, key: str, merchant: str | None, event_id: int) -> dict[str, Any]:
        return {"id": key, "merchantId": merchant, "operation": "DELETE", "eventId": event_id}

    def channel(self, verb: str) -> str:
        return f"{self.entity}_{verb}"


SNAKE = Table(
    name="snake_case_other_schema",
    ddl="""CREATE SCHEMA billing;
    CREATE TABLE billing.payments (
        payment_no   integer PRIMARY KEY,
        merchant_id  text,
        state        text NOT NULL,
        amount_cents integer NOT NULL,
        note         text
    )""",
    table="billing.payments",
    entity="payment",
    tenant="merchant_id",
    key="payment_no",
    watch=["state"],
    fields=["amount_cents"],
    insert="""INSERT INTO billing.payments (payment_no, merchant_id, state, amount_cents)
              VALUES ($1::text::integer, $2, 'PENDING', 1200)""",
    watched="UPDATE billing.payments SET state = 'PAID' WHERE payment_no = $1::text::integer",
    unwatched="UPDATE billing.payments SET note = 'late', amount_cents = 9 WHERE payment_no = $1::text::int",
    delete="DELETE FROM billing.payments WHERE payment_no = $1::text::integer",
    created_fields={"amount_cents": 1200},
    updated_fields={"amount_cents": 1200},
    changes={"state": {"old": "PENDING", "new": "PAID"}},
    keys=("101", "102", "103"),
)

PRISMA = Table(
    name="prisma_camel_case",
    ddl="""CREATE TABLE "Invoice" (
        id              text PRIMARY KEY,
        "merchantId"    text,
        "paymentStatus" text NOT NULL,
        "totalCents"    integer NOT NULL,
        "updatedAt"     timestamptz NOT NULL DEFAULT now()
    )""",
    table="Invoice",
    entity="invoice",
    tenant="merchantId",
    key="id",
    watch=["paymentStatus"],
    fields=["totalCents", "paymentStatus"],
    insert="""INSERT INTO "Invoice" (id, "merchantId", "paymentStatus", "totalCents")
              VALUES ($1, $2, 'OPEN', 990)""",
    watched="""UPDATE "Invoice" SET "paymentStatus" = 'PAID', "updatedAt" = now() WHERE id = $1""",
    unwatched="""UPDATE "Invoice" SET "updatedAt" = now() + interval '1 hour' WHERE id = $1""",
    delete="""DELETE FROM "Invoice" WHERE id = $1""",
    created_fields={"totalCents": 990, "paymentStatus": "OPEN"},
    updated_fields={"totalCents": 990, "paymentStatus": "PAID"},
    changes={"paymentStatus": {"old": "OPEN", "new": "PAID"}},
    keys=("inv_1", "inv_2", "inv_3"),
)

QUOTED = Table(
    name="name_needs_quoting",
    ddl="""CREATE SCHEMA "Sales Ops";
    CREATE TABLE "Sales Ops"."Line-Item ""v2"" $body$" (
        "item key"   uuid PRIMARY KEY,
        "Shop Ref"   bigint,
        "st""ate'"   text NOT NULL,
        "qty %L $f$" integer NOT NULL,
        note         text
    )""",
    table='Sales Ops.Line-Item "v2" $body$',
    entity="line_item",
    tenant="Shop Ref",
    key="item key",
    watch=["st\"ate'"],
    fields=["qty %L $f$"],
    insert="""INSERT INTO "Sales Ops"."Line-Item ""v2"" $body$"
                  ("item key", "Shop Ref", "st""ate'", "qty %L $f$")
              VALUES ($1::text::uuid, $2::text::bigint, 'open', 3)""",
    watched="""UPDATE "Sales Ops"."Line-Item ""v2"" $body$" SET "st""ate'" = 'shipped'
               WHERE "item key" = $1::text::uuid""",
    unwatched="""UPDATE "Sales Ops"."Line-Item ""v2"" $body$" SET note = 'x', "qty %L $f$" = 4
                 WHERE "item key" = $1::text::uuid""",
    delete="""DELETE FROM "Sales Ops"."Line-Item ""v2"" $body$" WHERE "item key" = $1::text::uuid""",
    created_fields={"qty %L $f$": 3},
    updated_fields={"qty %L $f$": 3},
    changes={"st\"ate'": {"old": "open", "new": "shipped"}},
    merchants=("4100", "4200"),
    keys=(
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
        "00000000-0000-4000-8000-000000000003",
    ),
)

TABLES = [SNAKE, PRISMA, QUOTED]


async def prepare(db_url: str, *tables: Table, attach: bool = True) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        for table in tables:
            await table.create(conn)
            if attach:
                await table.attach(conn)
    finally:
        await conn.close()


async def execute(db_url: str, *statements: tuple[str, tuple[str, ...]]) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        for sql, args in statements:
            await conn.execute(sql, *args)
    finally:
        await conn.close()


async def lifecycle(db_url: str, table: Table, key: str, merchant: str) -> None:
    """Created, updated (a watched column), updated (unwatched columns only: no event), deleted."""
    await execute(
        db_url,
        (table.insert, (key, merchant)),
        (table.watched, (key,)),
        (table.unwatched, (key,)),
        (table.delete, (key,)),
    )


async def event_ids(db_url: str, channel_prefix: str) -> list[int]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT id FROM relay.events WHERE channel LIKE $1 || '\\_%' ORDER BY id", channel_prefix
        )
        return [r["id"] for r in rows]
    finally:
        await conn.close()


def relay_cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], env=env, capture_output=True, text=True, timeout=60
    )
