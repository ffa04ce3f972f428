"""Capture modes: what each costs the application's writes, and poll mode's latency and idle cost.

* Trigger cost: pgbench INSERT rate into "Booking" with no trigger, the seed guide's
  pg_notify-only trigger, Relay's trigger in notify and in poll mode (and poll mode's trigger
  as it was before migration 0014, building the payload itself), and the floor of any
  trigger that makes the change durable (a PL/pgSQL trigger inserting a minimal row into
  relay.events), with 1 and 8 writers, on one durable server; and into "Payment", a table
  of the same shape attached with `relay attach` (its generated trigger), in both modes.
  Each round runs every variant back to back (in alternating order) and ratios are taken
  within a round, then the median.
  The attached source's cost per row alone, without the commit's fsync (which dominates,
  and swings, the pgbench rates): 1,000-row INSERTs into both tables, interleaved in
  transactions that are rolled back.
* Trigger parts: PostgreSQL's CPU time per INSERT transaction (1 pgbench writer, from
  /proc, on a server that does not flush), with the trigger built up part by part: the
  PL/pgSQL call, a minimal row in relay.events (its heap tuple and two index entries), the
  compact row's values (the poll-mode trigger) or the whole payload (poll mode before 0014),
  then notify mode's NOTIFY; and what the sequencer then spends per event on compact rows
  (building their payload) against rows written whole. Per
  transaction, not per row in a loop: opening a table and its indexes and setting up the
  trigger are paid once per transaction, and they are most of the cost.
* Poll mode: commit -> /ws client latency against the poll interval, and PostgreSQL's CPU
  (all its processes, from /proc) while a relay polls an idle database, against notify mode.
* Wal mode: pgbench INSERT rate into "Booking" in wal mode, with a `relay run` process
  reading the slot meanwhile (started for that run only: its reading decodes the whole
  server's WAL), and into the same table published with a bare loop consuming a slot of its
  own every 50 ms (pg_logical_slot_get_binary_changes, the changes dropped: the least any
  consumer of the slot costs), against the same table with no capture at all, 1 and 8
  writers, in alternating order per round; how long the reader takes to catch up after a
  run; and commit -> /ws client latency.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import websockets

from bench.common import Row, median, percentile, row, server
from bench.live import mint, serve
from relay import app
from relay.config import Settings
from relay.embedded import EmbeddedPostgres
from relay.store import Store, migrate
from relay.wal import switch

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
# Trigger bodies for the parts and the floor (replacing relay.notify_booking_changes()).
EMPTY_BODY = "BEGIN RETURN NULL; END;"
ROW_BODY = """BEGIN
    INSERT INTO relay.events (channel, merchant_id, payload)
    VALUES ('booking_created', NEW."merchantId", '{}');
    RETURN NULL;
END;"""
REPLACE_FUNCTION = (
    "CREATE OR REPLACE FUNCTION relay.notify_booking_changes() RETURNS trigger LANGUAGE plpgsql AS $$ {} $$"
)
# The best a user could do without Relay: the table published for logical decoding, a slot of
# its own, and a loop that reads the slot every 50 ms and does nothing with the changes.
BARE_SETUP = (
    'ALTER TABLE "Booking" REPLICA IDENTITY FULL',
    'CREATE PUBLICATION bare FOR TABLE "Booking"',
    "SELECT pg_create_logical_replication_slot('bare', 'pgoutput')",  # in a transaction of its own
)
BARE_READ = """SELECT count(*) FROM pg_logical_slot_get_binary_changes(
    'bare', NULL, NULL, 'proto_version', '1', 'publication_names', 'bare')"""
BARE_INTERVAL = 0.05
VARIANTS = ("none", "seed", "notify", "poll", "poll_whole", "floor", "attached_notify", "attached_poll")


async def make_database(pg: EmbeddedPostgres, name: str, variant: str) -> str:
    """A database with "Booking" and the variant's trigger (see VARIANTS, and the parts')."""
    admin = await asyncpg.connect(pg.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    conn = await asyncpg.connect(pg.url_for(name))
    try:
        await conn.execute(BOOKING)
        if variant == "seed":
            await conn.execute(SEED_TRIGGER)
            return pg.url_for(name)
        if variant == "none":
            return pg.url_for(name)
        if variant == "bare":
            for statement in BARE_SETUP:
                await conn.execute(statement)
            return pg.url_for(name)
        await migrate(conn)
        if variant.startswith("attached"):
            await conn.execute(PAYMENT)
            await Store(conn).attach_source(*PAYMENT_SOURCE)
        if variant.endswith("poll") or variant == "poll_whole":
            await Store(conn).set_capture("poll")
        if variant == "poll_whole":  # poll mode's trigger before 0014: the payload built whole
            await conn.execute(await conn.fetchval("SELECT relay.booking_function_sql('wal')"))
        if variant == "wal":
            await switch(Store(conn), Store(conn), "wal")
        if variant == "no_trigger":
            await conn.execute('DROP TRIGGER booking_changes_trigger ON "Booking"')
        elif variant == "empty":
            await conn.execute(REPLACE_FUNCTION.format(EMPTY_BODY))
        elif variant in ("events_row", "floor"):
            await conn.execute(REPLACE_FUNCTION.format(ROW_BODY))
    finally:
        await conn.close()
    return pg.url_for(name)


def pgbench(pg: EmbeddedPostgres, database: str, clients: int, seconds: float, script: str) -> float:
    result = subprocess.run(
        [
            str(pg.bin / "pgbench"),
            *("-n", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres"),
            *("-c", str(clients), "-j", str(min(clients, 2)), "-T", str(int(seconds)), "-f", script),
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
    scripts = {v: _script(PAYMENT_SCRIPT if v.startswith("attached") else INSERT_SCRIPT) for v in VARIANTS}
    for v in VARIANTS:
        await make_database(pg, f"cost_{v}", v)
    rates: dict[tuple[str, int], list[float]] = {}
    for r in range(rounds):
        for clients in (1, 8):
            order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
            for v in order:
                rates.setdefault((v, clients), []).append(
                    await asyncio.to_thread(pgbench, pg, f"cost_{v}", clients, seconds, scripts[v])
                )
    for name in scripts.values():
        os.unlink(name)
    rows: list[Row] = []
    for clients in (1, 8):
        # Rates drift on a shared machine: compare each variant with the one measured next
        # to it in the same round, and report medians over rounds.
        def paired(a: str, b: str, n: int = clients) -> float:
            return median([x / y for x, y in zip(rates[(a, n)], rates[(b, n)], strict=True)])

        mid = {v: median(rates[(v, clients)]) for v in VARIANTS}
        writers = f"{clients} writers" if clients > 1 else "1 writer"

        def compared(metric: str, a: str, b: str, goal: str, mid: dict[str, float] = mid) -> Row:
            return row(metric, mid[a], mid[b], goal, unit="tx/s", ratio=paired(a, b))

        rows += [
            compared(f"seed trigger INSERT rate vs no trigger, {writers}", "seed", "none", "NOTIFY's floor"),
            compared(f"Relay trigger INSERT rate vs seed trigger, {writers}", "notify", "seed", ">= 0.95"),
            compared(
                f"Relay trigger, notify mode, INSERT rate vs no trigger, {writers}", "notify", "none", "—"
            ),
            compared(
                f"Relay trigger, poll mode, INSERT rate vs no trigger, {writers}",
                "poll",
                "none",
                ">= 0.9" if clients == 1 else ">= 0.8",
            ),
            compared(
                f"poll mode before 0014 (payload built by the trigger) INSERT rate vs no trigger, {writers}",
                "poll_whole",
                "none",
                "—",
            ),
            compared(
                f"floor of any durable trigger (a minimal row) INSERT rate vs no trigger, {writers}",
                "floor",
                "none",
                "poll mode's ceiling",
            ),
            compared(
                f"attached source trigger INSERT rate vs Relay booking trigger, notify mode, {writers}",
                "attached_notify",
                "notify",
                ">= 0.95",
            ),
            compared(
                f"attached source trigger INSERT rate vs Relay booking trigger, poll mode, {writers}",
                "attached_poll",
                "poll",
                ">= 0.95",
            ),
        ]
    return rows


def _cpu_ns(pid: int) -> int:
    """Nanoseconds process ``pid`` has run on a CPU (scheduler statistics)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


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


async def trigger_parts(pg: EmbeddedPostgres, seconds: float, rounds: int) -> list[Row]:
    """PostgreSQL's CPU per INSERT transaction for each variant of the trigger (1 writer)."""
    parts = ("no_trigger", "empty", "events_row", "poll", "poll_whole", "notify")
    script = _script(INSERT_SCRIPT)
    for p in parts:
        await make_database(pg, f"parts_{p}", p)
    samples: dict[str, list[float]] = {p: [] for p in parts}
    for r in range(rounds):
        for p in parts if r % 2 == 0 else tuple(reversed(parts)):
            before = _postgres_cpu_ns(pg)
            rate = await asyncio.to_thread(pgbench, pg, f"parts_{p}", 1, seconds, script)
            await asyncio.sleep(0.3)  # the postmaster has reaped pgbench's backend
            samples[p].append((_postgres_cpu_ns(pg) - before) / 1000 / (rate * int(seconds)))
    os.unlink(script)
    us = {p: median(v) for p, v in samples.items()}
    sequencing = {p: await _sequencing_us(pg.url_for(f"parts_{p}")) for p in ("poll", "poll_whole")}

    def part(metric: str, with_part: str, without: str) -> Row:
        return row(
            f"trigger part: {metric}, CPU µs per INSERT transaction (baseline: with it)",
            us[with_part] - us[without],
            us[with_part],
            "",
            unit="µs",
        )

    return [
        row("PostgreSQL CPU µs per INSERT transaction, no trigger (1 writer)", us["no_trigger"],
            us["no_trigger"], "", unit="µs"),
        part("the PL/pgSQL trigger call", "empty", "no_trigger"),
        part("a minimal row in relay.events (heap + 2 index entries)", "events_row", "empty"),
        part("the compact row's values (= the poll-mode trigger)", "poll", "events_row"),
        part("the payload and eventId built whole (= poll mode's trigger before 0014)", "poll_whole",
             "events_row"),
        part("notify mode's trigger instead of poll mode's before 0014", "notify", "poll_whole"),
        row("sequencer µs per event, poll mode's compact rows (baseline: rows written whole, before 0014)",
            sequencing["poll"], sequencing["poll_whole"], "", unit="µs"),
    ]  # fmt: skip


async def _sequencing_us(url: str, batch: int = 20_000, passes: int = 3) -> float:
    """Wall-clock µs per event of relay.sequence_events over what pgbench left unsequenced."""
    conn = await asyncpg.connect(url)
    try:
        took = []
        for _ in range(passes):
            started = time.perf_counter()
            count = await conn.fetchval("SELECT relay.sequence_events($1)", batch)
            if count:
                took.append((time.perf_counter() - started) / count * 1e6)
        return median(took)
    finally:
        await conn.close()


async def leading(base: str, gauge: str) -> None:
    """Wait until the relay process at ``base`` leads its capture mode (``gauge`` is 1)."""
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + 10
        while f"{gauge} 1.0" not in (await client.get(f"{base}/metrics")).text:
            assert time.monotonic() < deadline, f"the relay does not lead ({gauge})"
            await asyncio.sleep(0.1)


RECORDED = 'SELECT (SELECT count(*) FROM "Booking") = (SELECT count(*) FROM relay.events)'


async def _wal_run(
    pg: EmbeddedPostgres, url: str, admin: asyncpg.Connection, clients: int, seconds: float, script: str
) -> tuple[float, float, float]:
    """One pgbench run in wal mode while a relay process reads the slot: its rate, the
    seconds after it until every INSERT is an event, and the CPU seconds the server and the
    reader spent from the run's start until then."""
    async with serve("relay", url) as relay:
        await leading(relay.url, "relay_wal_leader")
        cpu = _postgres_cpu_ns(pg) + _cpu_ns(relay.pid)
        rate = await asyncio.to_thread(pgbench, pg, "walcost_wal", clients, seconds, script)
        started = time.perf_counter()
        while not await admin.fetchval(RECORDED):
            await asyncio.sleep(0.01)
        caught_up = time.perf_counter() - started
        await asyncio.sleep(0.3)  # the postmaster has reaped pgbench's backends
        cpu = _postgres_cpu_ns(pg) + _cpu_ns(relay.pid) - cpu
        return rate, caught_up, cpu / 1e9


async def _bare_run(
    pg: EmbeddedPostgres, url: str, clients: int, seconds: float, script: str
) -> tuple[float, float]:
    """One pgbench run into the published table while a bare loop consumes its slot: its
    rate, and the server's CPU seconds meanwhile (the loop's own CPU is its backend's)."""
    reader = await asyncpg.connect(url)
    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            await reader.fetchval(BARE_READ)
            try:
                await asyncio.wait_for(stop.wait(), BARE_INTERVAL)
            except TimeoutError:
                pass
        await reader.fetchval(BARE_READ)  # what the run left

    consuming = asyncio.create_task(consume())
    cpu = _postgres_cpu_ns(pg)
    try:
        rate = await asyncio.to_thread(pgbench, pg, "walcost_bare", clients, seconds, script)
    finally:
        stop.set()
        await consuming
        await reader.close()
    await asyncio.sleep(0.3)  # the postmaster has reaped pgbench's backends
    return rate, (_postgres_cpu_ns(pg) - cpu) / 1e9


async def _none_run(pg: EmbeddedPostgres, clients: int, seconds: float, script: str) -> tuple[float, float]:
    """One pgbench run with no capture: its rate, and the server's CPU seconds meanwhile."""
    cpu = _postgres_cpu_ns(pg)
    rate = await asyncio.to_thread(pgbench, pg, "walcost_none", clients, seconds, script)
    await asyncio.sleep(0.3)  # the postmaster has reaped pgbench's backends
    return rate, (_postgres_cpu_ns(pg) - cpu) / 1e9


async def wal_cost(pg: EmbeddedPostgres, seconds: float, rounds: int) -> list[Row]:
    """INSERT rate in wal mode with a relay reading the slot, and with a bare loop consuming a
    slot of its own (nothing done with the changes), against no capture at all."""
    script = _script(INSERT_SCRIPT)
    variants = ("none", "wal", "bare")
    urls = {v: await make_database(pg, f"walcost_{v}", v) for v in variants}
    rates: dict[tuple[str, int], list[float]] = {}
    catch_up: list[float] = []
    # CPU µs per INSERT: the server's with no capture, and the server's and the reader's in wal mode
    cpu_us: dict[str, list[float]] = {"none": [], "wal": [], "bare": []}
    admin = await asyncpg.connect(urls["wal"])
    try:
        for r in range(rounds):
            for clients in (1, 8):
                for v in variants if r % 2 == 0 else tuple(reversed(variants)):
                    if v == "none":
                        rate, cpu = await _none_run(pg, clients, seconds, script)
                        cpu_us["none"].append(cpu * 1e6 / (rate * int(seconds)))
                    elif v == "bare":
                        rate, cpu = await _bare_run(pg, urls["bare"], clients, seconds, script)
                        cpu_us["bare"].append(cpu * 1e6 / (rate * int(seconds)))
                    else:
                        rate, caught_up, cpu = await _wal_run(
                            pg, urls["wal"], admin, clients, seconds, script
                        )
                        catch_up.append(caught_up)
                        cpu_us["wal"].append(cpu * 1e6 / (rate * int(seconds)))
                    rates.setdefault((v, clients), []).append(rate)
        await switch(Store(admin), Store(admin), "notify")  # the slot's name is the server's: free it
        await admin.execute("SELECT pg_drop_replication_slot('bare')")
    finally:
        await admin.close()
        os.unlink(script)
    rows: list[Row] = []
    for clients in (1, 8):
        writers = f"{clients} writers" if clients > 1 else "1 writer"

        def paired(a: str, b: str, n: int = clients) -> float:
            return median([x / y for x, y in zip(rates[(a, n)], rates[(b, n)], strict=True)])

        rows += [
            row(
                f"wal mode INSERT rate (a relay reading the slot) vs no capture, {writers}",
                median(rates[("wal", clients)]),
                median(rates[("none", clients)]),
                ">= 0.9" if clients > 1 else ">= 0.95",
                unit="tx/s",
                ratio=paired("wal", "none"),
            ),
            row(
                f"bare slot consumer INSERT rate (published table, slot read every "
                f"{BARE_INTERVAL * 1000:g} ms, changes dropped) vs no capture, {writers}",
                median(rates[("bare", clients)]),
                median(rates[("none", clients)]),
                "wal mode's ceiling",
                unit="tx/s",
                ratio=paired("bare", "none"),
            ),
        ]
    rows.append(
        row("wal mode: every INSERT recorded as an event, s after a pgbench run ended (max over runs)",
            max(catch_up), 0.0, "", unit="s", difference=True)
    )  # fmt: skip
    wal_us, bare_us, none_us = median(cpu_us["wal"]), median(cpu_us["bare"]), median(cpu_us["none"])
    rows += [
        row("wal mode: CPU µs per INSERT, PostgreSQL + the reader process (baseline: PostgreSQL, no capture)",
            wal_us, none_us, "", unit="µs"),
        row("bare slot consumer: CPU µs per INSERT, PostgreSQL (baseline: PostgreSQL, no capture)",
            bare_us, none_us, "", unit="µs"),
    ]  # fmt: skip
    return rows


async def poll_latency(pg: EmbeddedPostgres, events: int, interval: float, mode: str = "poll") -> list[Row]:
    """Commit -> a /ws client of `relay run` (a process of its own) in poll or wal mode,
    commits spread evenly over the poll phase."""
    url = await make_database(pg, f"{mode}_latency", mode)
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    writer = await asyncpg.connect(url)
    async with serve("relay", url) as relay:
        await leading(relay.url, "relay_poller_leader" if mode == "poll" else "relay_wal_leader")
        ws_url = relay.url.replace("http", "ws") + f"/ws?token={mint('m1', 'u1')}"
        async with websockets.connect(ws_url) as ws:
            await ws.recv()  # connected

            async def receive() -> None:
                while len(received) < events:
                    message = json.loads(await ws.recv())
                    if message.get("type") == "event":
                        received[message["data"]["id"]] = time.perf_counter()

            reader = asyncio.create_task(receive())
            for i in range(events):
                booking = f"lat-{i}"
                await writer.execute(
                    """INSERT INTO "Booking" (id, "merchantId", status) VALUES ($1, 'm1', 'PENDING')""",
                    booking,
                )
                sent[booking] = time.perf_counter()
                await asyncio.sleep(random.uniform(0.005, 0.015))
            await asyncio.wait_for(reader, 10)
    await writer.close()
    ms = [(received[b] - sent[b]) * 1000 for b in sent if b in received]
    floor = interval * 1000
    if mode == "wal":
        return [
            row(f"wal mode commit->/ws client p{p} ms (relay run, polling the slot every {floor:g} ms)",
                percentile(ms, p), 0.0, "<= 30 ms" if p == 99 else "", unit="ms", difference=True)
            for p in (50, 99)
        ]  # fmt: skip
    return [
        row(f"poll mode commit->/ws client p{p} ms (relay run; baseline: the poll interval)",
            percentile(ms, p), floor, "difference <= 5 ms" if p == 99 else "", unit="ms", difference=True)
        for p in (50, 99)
    ]  # fmt: skip


def _postgres_cpu_ns(pg: EmbeddedPostgres) -> int:
    """CPU time so far of the server: its processes alive now, and those that ended (counted
    in the postmaster's children's times once it reaped them)."""
    postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    ended = (int(fields[13]) + int(fields[14])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    total = ended + _cpu_ns(postmaster)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                total += _cpu_ns(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


async def idle_cost(pg: EmbeddedPostgres, seconds: float) -> list[Row]:
    """PostgreSQL's CPU while one relay follows an idle database, in poll and in notify mode."""
    share: dict[str, float] = {}
    for mode in ("notify", "poll"):
        url = await make_database(pg, f"idle_{mode}", mode)
        async with app.start(Settings(database_url=url, http_port=0), serve_http=False) as relay:
            await asyncio.wait_for(relay.listener.connected.wait(), 10)
            if mode == "poll":
                await asyncio.wait_for(relay.poller.leading.wait(), 10)
            await asyncio.sleep(1.0)  # start-up queries done
            before, started = _postgres_cpu_ns(pg), time.perf_counter()
            await asyncio.sleep(seconds)
            after, took = _postgres_cpu_ns(pg), time.perf_counter() - started
        share[mode] = (after - before) / 1e9 / took * 100
    return [
        row("PostgreSQL CPU % of one core, idle database, poll mode (baseline: notify mode)", share["poll"],
            share["notify"], "< 2 %", unit="%")
    ]  # fmt: skip


async def _run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    with server(durable=True) as pg:
        rows += await trigger_cost(pg, seconds=2 if quick else 4, rounds=1 if quick else 5)
        rows += await trigger_row_cost(pg.url_for("cost_attached_notify"), rounds=1 if quick else 5)
        rows += await poll_latency(pg, events=100 if quick else 1000, interval=Settings().poll_interval)
        rows += await wal_cost(pg, seconds=2 if quick else 4, rounds=1 if quick else 5)
        rows += await poll_latency(
            pg, events=100 if quick else 1000, interval=Settings().poll_interval, mode="wal"
        )
    with server(durable=True) as pg:  # idle: no database here has anything left to vacuum
        rows += await idle_cost(pg, seconds=3 if quick else 10)
    with server(durable=False) as pg:  # CPU only: no flush to wait for, nor its system time
        rows += await trigger_parts(pg, seconds=2 if quick else 4, rounds=1 if quick else 5)
    return rows


def run(quick: bool = False) -> list[Row]:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    from bench.report import print_rows

    print_rows(run(quick="--quick" in sys.argv))
