"""Core pipeline: what the trigger costs booking writes, hand-off latency, listener recovery.

* Trigger cost: pgbench INSERT rate into "Booking" with no trigger, the seed guide's
  pg_notify-only trigger, and Relay's trigger, with 1 and 8 writers, same server; and
  into "Payment", a table of the same shape attached with `relay attach` (its generated
  trigger), against Relay's booking trigger measured next to it. Its cost per row alone,
  without the commit's fsync (which dominates, and swings, the pgbench rates): 1,000-row
  INSERTs into both tables, interleaved in transactions that are rolled back.
* Hand-off latency: commit -> Relay's feed hands the event on, against a bare asyncpg
  LISTEN client receiving the same NOTIFYs in the same process (the floor).
* Recovery: pg_terminate_backend on the listener, time until it listens again.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import asyncpg

from bench.common import Row, median, percentile, row, server
from relay import app
from relay.config import Settings
from relay.embedded import EmbeddedPostgres
from relay.events import Event
from relay.store import Store, migrate

BOOKING = """CREATE TABLE "Booking" (id text PRIMARY KEY, "merchantId" text NOT NULL, status text NOT NULL)"""
SEED_TRIGGER = """
CREATE FUNCTION notify_booking_changes() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM pg_notify('booking_created', json_build_object('id', NEW.id, 'merchantId', NEW."merchantId",
      'status', NEW.status, 'operation', TG_OP)::text);
  ELSIF TG_OP = 'UPDATE' THEN
    IF OLD.status IS DISTINCT FROM NEW.status THEN
      PERFORM pg_notify('booking_updated', json_build_object('id', NEW.id, 'merchantId', NEW."merchantId",
        'oldStatus', OLD.status, 'newStatus', NEW.status, 'operation', TG_OP)::text);
    END IF;
  ELSIF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('booking_deleted', json_build_object('id', OLD.id, 'merchantId', OLD."merchantId",
      'operation', TG_OP)::text);
  END IF;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER booking_changes_trigger AFTER INSERT OR UPDATE OR DELETE ON "Booking"
FOR EACH ROW EXECUTE FUNCTION notify_booking_changes();
"""
INSERT_SCRIPT = """INSERT INTO "Booking" (id, "merchantId", status)
VALUES (gen_random_uuid()::text, 'm' || (random() * 3)::int, 'PENDING');
"""
# An attached source of the booking table's shape, whose payload has the same keys and size:
# relay attach Payment --entity payment --tenant-column merchantId --watch status --fields status
PAYMENT = """CREATE TABLE "Payment" (id text PRIMARY KEY, "merchantId" text NOT NULL, status text NOT NULL)"""
PAYMENT_SOURCE = ("Payment", "payment", "merchantId", "id", ["status"], ["status"])
PAYMENT_SCRIPT = INSERT_SCRIPT.replace('"Booking"', '"Payment"')


async def _make_database(pg: EmbeddedPostgres, name: str, variant: str) -> str:
    admin = await asyncpg.connect(pg.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    conn = await asyncpg.connect(pg.url_for(name))
    try:
        await conn.execute(BOOKING)
        if variant == "seed":
            await conn.execute(SEED_TRIGGER)
        elif variant == "relay":
            await migrate(conn)
        elif variant == "attached":
            await conn.execute(PAYMENT)
            await migrate(conn)
            await Store(conn).attach_source(*PAYMENT_SOURCE)
    finally:
        await conn.close()
    return pg.url_for(name)


def _pgbench(pg: EmbeddedPostgres, database: str, clients: int, seconds: float, script: str) -> float:
    result = subprocess.run(
        [
            str(pg.bin / "pgbench"),
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            "postgres",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(int(seconds)),
            "-f",
            script,
            database,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def _script(text: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(text)
    os.chmod(script.name, 0o644)
    return script.name


async def trigger_cost(pg: EmbeddedPostgres, seconds: float, rounds: int) -> list[Row]:
    variants = ("none", "seed", "relay", "attached")
    scripts = {v: _script(PAYMENT_SCRIPT if v == "attached" else INSERT_SCRIPT) for v in variants}
    for v in variants:
        await _make_database(pg, f"cost_{v}", v)
    rates: dict[tuple[str, int], list[float]] = {}
    for r in range(rounds):
        for clients in (1, 8):
            order = variants if r % 2 == 0 else tuple(reversed(variants))
            for v in order:
                rates.setdefault((v, clients), []).append(
                    await asyncio.to_thread(_pgbench, pg, f"cost_{v}", clients, seconds, scripts[v])
                )
    for name in scripts.values():
        os.unlink(name)
    rows: list[Row] = []
    for clients in (1, 8):
        # Rates drift on a shared machine: compare each variant with the one measured next
        # to it in the same round, and report medians over rounds.
        def paired(a: str, b: str, n: int = clients) -> float:
            return median([x / y for x, y in zip(rates[(a, n)], rates[(b, n)], strict=True)])

        mid = {v: median(rates[(v, clients)]) for v in variants}
        rows.append(
            row(
                f"seed trigger INSERT rate vs no trigger, {clients} writer(s)",
                mid["seed"],
                mid["none"],
                "floor for any NOTIFY design",
                unit="tx/s",
                ratio=paired("seed", "none"),
            )
        )
        rows.append(
            row(
                f"Relay trigger INSERT rate vs seed trigger, {clients} writer(s)",
                mid["relay"],
                mid["seed"],
                ">= 0.95",
                unit="tx/s",
                ratio=paired("relay", "seed"),
            )
        )
        rows.append(
            row(
                f"attached source trigger INSERT rate vs Relay booking trigger, {clients} writer(s)",
                mid["attached"],
                mid["relay"],
                ">= 0.95",
                unit="tx/s",
                ratio=paired("attached", "relay"),
            )
        )
    return rows


async def trigger_row_cost(url: str, rounds: int, pairs: int = 60, rows: int = 1000) -> list[Row]:
    """The attached source's trigger against the booking trigger per row, without the commit.

    Each round is one transaction, rolled back at its end (no fsync, no table growth):
    ``pairs`` times a ``rows``-row INSERT into "Booking" and one into "Payment" (same
    shape, same database), in alternating order, so a machine busy with something else
    slows both alike. A round's ratio is its total time in "Payment" over its total time
    in "Booking"; the row reports the median over rounds.
    """
    insert = """INSERT INTO "{}" (id, "merchantId", status)
                SELECT gen_random_uuid()::text, 'm1', 'PENDING' FROM generate_series(1, $1)"""
    conn = await asyncpg.connect(url)
    totals: dict[str, list[float]] = {"Booking": [], "Payment": []}
    try:
        for _ in range(rounds):
            spent = {"Booking": 0.0, "Payment": 0.0}
            transaction = conn.transaction()
            await transaction.start()
            for i in range(pairs):
                for table in ("Booking", "Payment") if i % 2 == 0 else ("Payment", "Booking"):
                    started = time.perf_counter()
                    await conn.execute(insert.format(table), rows)
                    spent[table] += time.perf_counter() - started
            await transaction.rollback()
            for table, seconds in spent.items():
                totals[table].append(seconds / (pairs * rows) * 1e6)
    finally:
        await conn.close()
    return [
        row(
            f"attached source trigger cost per row vs booking trigger ({rows:,}-row INSERTs, rolled back)",
            median(totals["Payment"]),
            median(totals["Booking"]),
            "<= 1.05",
            unit="us/row",
            ratio=median([p / b for p, b in zip(totals["Payment"], totals["Booking"], strict=True)]),
        )
    ]


async def handoff_latency(url: str, events: int, interval: float) -> list[Row]:
    settings = Settings(database_url=url, http_port=0, probe_interval=2.0)
    sent: dict[str, float] = {}
    bare: dict[str, float] = {}
    relayed: dict[str, float] = {}

    def on_bare(_c: object, _p: int, _ch: str, payload: str) -> None:
        booking = payload.split('"id" : "', 1)[1].split('"', 1)[0]
        bare[booking] = time.perf_counter()

    listener = await asyncpg.connect(url)
    await listener.add_listener("booking_created", on_bare)
    writer = await asyncpg.connect(url)
    async with app.start(settings, serve_http=False) as relay:

        def on_relayed(evs: Sequence[Event]) -> None:
            now = time.perf_counter()
            for e in evs:
                relayed[str(e.data["id"])] = now

        relay.feed.subscribe(on_relayed)
        await relay.listener.connected.wait()
        await relay.feed.started.wait()
        for i in range(events):
            booking = f"lat-{i}"
            sent[booking] = time.perf_counter()
            await writer.execute(
                """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'm1', 'PENDING')""", booking
            )
            await asyncio.sleep(interval)
        deadline = time.monotonic() + 10
        while (len(relayed) < events or len(bare) < events) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    await listener.close()
    await writer.close()
    relay_ms = [(relayed[b] - sent[b]) * 1000 for b in sent if b in relayed]
    bare_ms = [(bare[b] - sent[b]) * 1000 for b in sent if b in bare]
    rows = []
    for p in (50, 99):
        r, b = percentile(relay_ms, p), percentile(bare_ms, p)
        rows.append(
            row(
                f"commit -> hand-off latency p{p} (ms)",
                r,
                b,
                "p99 <= floor + 1 ms" if p == 99 else "",
                unit="ms",
                difference=True,
            )
        )
    return rows


async def recovery(url: str, kills: int) -> list[Row]:
    settings = Settings(
        database_url=url,
        http_port=0,
        probe_interval=2.0,
        reconnect_max_delay=1.0,
    )
    times: list[float] = []
    admin = await asyncpg.connect(url)
    async with app.start(settings, serve_http=False) as relay:
        await relay.listener.connected.wait()
        for _ in range(kills):
            old = relay.listener.backend_pid
            started = time.perf_counter()
            await admin.execute("SELECT pg_terminate_backend($1)", old)
            while relay.listener.backend_pid in (None, old):
                await asyncio.sleep(0.001)
            times.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.1)
    await admin.close()
    return [
        row(
            "listener recovery after pg_terminate_backend p50 (ms)",
            percentile(times, 50),
            1000,
            "< 1000 ms",
            unit="ms",
        ),
        row(
            "listener recovery after pg_terminate_backend p99 (ms)",
            percentile(times, 99),
            1000,
            "< 1000 ms",
            unit="ms",
        ),
    ]


async def _run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    with server(durable=True) as pg:
        rows += await trigger_cost(pg, seconds=2 if quick else 4, rounds=1 if quick else 5)
        rows += await trigger_row_cost(pg.url_for("cost_attached"), rounds=1 if quick else 5)
        url = await _make_database(pg, "latency", "relay")
        rows += await handoff_latency(url, events=50 if quick else 300, interval=0.01)
        rows += await recovery(url, kills=5 if quick else 20)
    return rows


def run(quick: bool = False) -> list[Row]:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    from bench.report import print_rows

    print_rows(run(quick="--quick" in sys.argv))
