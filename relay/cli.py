"""The `relay` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

from relay import logs
from relay.capture import MODES
from relay.config import Settings, load_settings
from relay.db import connect_once
from relay.errors import RelayError
from relay.events import Sources
from relay.store import Store
from relay.webhooks import cli as webhooks_cli

Command = Callable[[argparse.Namespace, Settings], int]


def cmd_migrate(_args: argparse.Namespace, settings: Settings) -> int:
    from relay.store import migrate

    async def go() -> list[str]:
        conn = await connect_once(settings.require_database_url())
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    applied = asyncio.run(go())
    print(f"applied {', '.join(applied)}" if applied else "already up to date")
    return 0


def cmd_run(_args: argparse.Namespace, settings: Settings) -> int:
    from relay.app import run

    settings.require_database_url()
    asyncio.run(run(settings))
    return 0


def cmd_check(_args: argparse.Namespace, settings: Settings) -> int:
    from relay.check import check, describe

    try:
        lines = asyncio.run(check(settings))
    except RelayError:
        raise
    except Exception as exc:  # a check that broke still answers with one line, never a traceback
        lines = [("fail", f"relay check stopped: {describe(exc)}")]
    for status, message in lines:
        print(f"{status:4} {message}")
    return 1 if any(status == "fail" for status, _ in lines) else 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from relay.demo import run_demo

    asyncio.run(run_demo(settings, port=args.port))
    return 0


def cmd_vapid_keys(_args: argparse.Namespace, _settings: Settings) -> int:
    from relay.push.vapid import generate_key_pair

    private, public = generate_key_pair()
    print(f"RELAY_VAPID_PRIVATE_KEY={private}")
    print(f"RELAY_VAPID_PUBLIC_KEY={public}")
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from relay.auth import mint_token

    print(mint_token(settings, merchant_id=args.merchant, user_id=args.user, ttl=args.ttl))
    return 0


def _columns(value: str) -> list[str]:
    """A comma list of column names, each taken exactly as written."""
    return [c.strip() for c in value.split(",") if c.strip()]


def _on_store(settings: Settings, act: Callable[[Store], Awaitable[int]]) -> int:
    async def go() -> int:
        conn = await connect_once(settings.require_database_url())
        try:
            return await act(Store(conn))
        finally:
            await conn.close()

    return asyncio.run(go())


def cmd_attach(args: argparse.Namespace, settings: Settings) -> int:
    async def act(store: Store) -> int:
        source = await store.attach_source(
            args.table, args.entity, args.tenant_column, args.key, args.watch, args.fields
        )
        print(json.dumps(source.public(), separators=(",", ":")))
        return 0

    return _on_store(settings, act)


def cmd_detach(args: argparse.Namespace, settings: Settings) -> int:
    async def act(store: Store) -> int:
        print(json.dumps((await store.detach_source(args.table)).public(), separators=(",", ":")))
        return 0

    return _on_store(settings, act)


def cmd_sources(_args: argparse.Namespace, settings: Settings) -> int:
    async def act(store: Store) -> int:
        for source in Sources(await store.sources()).sources:
            print(json.dumps(source.public(), separators=(",", ":")))
        return 0

    return _on_store(settings, act)


def cmd_capture(args: argparse.Namespace, settings: Settings) -> int:
    from relay.wal import switch

    async def act(store: Store) -> int:
        if args.mode is not None:
            # Session-bound work (the wal reader's lock, leaving wal mode) on the listen URL.
            session = await connect_once(settings.listen_url)
            try:
                await switch(store, Store(session), args.mode)
            finally:
                await session.close()
        print(await store.capture_mode())
        return 0

    return _on_store(settings, act)


def add_source_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    attach = sub.add_parser(
        "attach", help="make a table a source: its row changes become events (prints it as JSON)"
    )
    attach.add_argument("table", metavar="TABLE", help="as written, optionally schema.table (always quoted)")
    attach.add_argument(
        "--entity", required=True, metavar="NAME", help="events NAME_created/_updated/_deleted"
    )
    attach.add_argument("--tenant-column", required=True, metavar="COLUMN", help="the events' merchantId")
    attach.add_argument("--key", default="id", metavar="COLUMN", help="the events' id (default id)")
    attach.add_argument(
        "--watch",
        type=_columns,
        default=[],
        metavar="C1,C2",
        help="an UPDATE is an event only if one changed",
    )
    attach.add_argument(
        "--fields", type=_columns, default=[], metavar="C1,C2", help="columns added to payloads"
    )
    attach.set_defaults(func=cmd_attach)
    detach = sub.add_parser("detach", help="remove a source's trigger (recorded events are still delivered)")
    detach.add_argument("table", metavar="TABLE")
    detach.set_defaults(func=cmd_detach)
    sub.add_parser("sources", help="list the sources, one JSON object per line").set_defaults(
        func=cmd_sources
    )
    capture = sub.add_parser(
        "capture", help="print the capture mode, or switch every source to MODE (prints the mode)"
    )
    capture.add_argument("mode", nargs="?", choices=MODES, metavar="MODE", help="notify, poll or wal")
    capture.set_defaults(func=cmd_capture)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("migrate", help='apply sql/ migrations and attach the trigger to "Booking"').set_defaults(
        func=cmd_migrate
    )
    sub.add_parser("run", help="listener, dispatcher, scheduler and HTTP server").set_defaults(func=cmd_run)
    sub.add_parser("check", help="configuration, database and LISTEN checks").set_defaults(func=cmd_check)
    demo = sub.add_parser("demo", help="everything, with an embedded PostgreSQL, no set-up")
    demo.add_argument("--port", type=int, default=None, help="HTTP port (default RELAY_HTTP_PORT)")
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("vapid-keys", help="print a new VAPID key pair for Web Push").set_defaults(
        func=cmd_vapid_keys
    )
    webhooks_cli.add_parser(sub)
    add_source_parsers(sub)
    token = sub.add_parser("token", help="print a development JWT signed with RELAY_JWT_SECRET")
    token.add_argument("--merchant", required=True, help="the merchantId claim")
    token.add_argument("--user", required=True, help="the sub claim (user id)")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        logs.setup(settings.log_format)
        result: int = args.func(args, settings)
        return result
    except RelayError as exc:
        print(f"relay {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
