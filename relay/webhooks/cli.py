"""``relay webhooks add|list|disable|enable|rotate-secret|replay``."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable

from relay.config import Settings
from relay.db import connect_once
from relay.egress import EgressRefused
from relay.errors import RelayError
from relay.retry import parse_delay
from relay.store import Store
from relay.webhooks import endpoints as webhooks


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("webhooks", help="manage merchant webhook endpoints")
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="register an endpoint; prints id= and secret= lines")
    add.add_argument("--merchant", required=True)
    add.add_argument("--url", required=True)
    add.add_argument("--events", default=None, help="comma list of event types (default: all)")

    lst = actions.add_parser("list", help="list endpoints (one JSON object per line)")
    lst.add_argument("--merchant", default=None)

    disable = actions.add_parser("disable", help="stop delivering to an endpoint")
    disable.add_argument("id", type=int)
    disable.add_argument("--reason", default="disabled by an operator")

    enable = actions.add_parser("enable", help="deliver to an endpoint again (clears its failure streak)")
    enable.add_argument("id", type=int)

    rotate = actions.add_parser("rotate-secret", help="new secret; the old one also signs during --overlap")
    rotate.add_argument("id", type=int)
    rotate.add_argument("--overlap", default="24h", help="old secret keeps signing this long (24h)")

    replay = actions.add_parser("replay", help="re-send failed (or chosen) deliveries")
    replay.add_argument("--endpoint", type=int, default=None)
    replay.add_argument("--delivery", type=int, action="append", default=None, help="a delivery id (repeat)")


async def _with_store(settings: Settings, action: Callable[[Store], Awaitable[int]]) -> int:
    conn = await connect_once(settings.require_database_url())
    try:
        return await action(Store(conn))
    finally:
        await conn.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    async def act(store: Store) -> int:
        if args.action == "add":
            try:
                endpoint, secret = await webhooks.add_endpoint(
                    store,
                    merchant_id=args.merchant,
                    url=args.url,
                    events=args.events,
                    allow=settings.egress_allow,
                    limit=settings.webhook_endpoints_per_merchant,
                )
            except EgressRefused as exc:
                raise RelayError(f"--url: {exc}") from None
            except webhooks.EndpointError as exc:
                raise RelayError(f"--events: {exc}") from None
            print(f"id={endpoint['id']}")
            print(f"secret={secret}")
            return 0
        if args.action == "list":
            for endpoint in await webhooks.list_endpoints(store, args.merchant):
                print(json.dumps(endpoint))
            return 0
        if args.action == "disable":
            return _report(await store.disable_endpoint(args.id, args.reason), args.id, "disabled")
        if args.action == "enable":
            return _report(await store.enable_endpoint(args.id), args.id, "enabled")
        if args.action == "rotate-secret":
            try:
                overlap = parse_delay(args.overlap)
            except ValueError as exc:
                raise RelayError(f"--overlap: {exc}") from None
            rotated = await webhooks.rotate_secret(store, args.id, overlap)
            if rotated is None:
                raise RelayError(f"no webhook endpoint {args.id}")
            print(f"secret={rotated}")
            return 0
        ids = await store.replay(args.delivery, args.endpoint)
        print(f"replaying {len(ids)} deliveries")
        return 0

    return asyncio.run(_with_store(settings, act))


def _report(changed: bool, endpoint_id: int, what: str) -> int:
    if not changed:
        raise RelayError(f"no webhook endpoint {endpoint_id} to mark {what} (unknown id, or already {what})")
    print(f"{what} {endpoint_id}")
    return 0
