"""``GET /events?since=CURSOR&limit=N``: the polling fallback for pages whose socket cannot connect.

Events are read by position (assigned in visibility order by the feed's sequencer), so
a cursor never skips an event that committed late. A request first waits (briefly) for
the feed to catch up, so it sees what committed before it. Without ``since`` the page
starts at the oldest retained event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay.auth import TokenVerifier
from relay.events import ChannelName, decode_cursor, encode_cursor
from relay.http_auth import authenticate, error
from relay.store import Store

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Past this a request answers with what is sequenced (the feed may be waiting for the database).
CATCH_UP_WAIT = 2.0

CatchUp = Callable[[], Awaitable[None]]


class EventsQuery(BaseModel):
    """The query of ``GET /events`` (checked by hand below, to answer 400 with a message)."""

    since: str | None = Field(
        default=None,
        pattern="^[0-9]{1,18}$",
        description="A cursor this API returned; omitted: from the oldest retained event.",
    )
    limit: int | None = Field(
        default=None, ge=1, description=f"Events per page, default 100; values above {MAX_LIMIT} are capped."
    )


class PolledEvent(BaseModel):
    channel: ChannelName
    cursor: str
    data: dict[str, Any] = Field(description="The seed's NOTIFY payload plus eventId.")


class EventPage(BaseModel):
    events: list[PolledEvent]
    next: str = Field(description="Pass back as `since` on the next poll.")


def routes(store: Store, verifier: TokenVerifier | None, caught_up: CatchUp) -> list[BaseRoute]:
    """``GET /events`` reading ``store`` once the feed has ``caught_up()``; 503 while
    ``verifier`` is None (no JWT key)."""

    async def events(request: Request) -> Response:
        return await list_events(store, verifier, caught_up, request)

    return [Route("/events", events, methods=["GET"])]


async def list_events(
    store: Store, verifier: TokenVerifier | None, caught_up: CatchUp, request: Request
) -> Response:
    claims = authenticate(request, verifier)
    if isinstance(claims, Response):
        return claims
    since = request.query_params.get("since")
    raw_limit = request.query_params.get("limit")
    try:
        after = decode_cursor(since) if since is not None else None
    except ValueError:
        return error(400, "invalid cursor: pass back a cursor this API returned")
    try:
        limit = min(int(raw_limit), MAX_LIMIT) if raw_limit is not None else DEFAULT_LIMIT
    except ValueError:
        limit = 0
    if limit < 1:
        return error(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(caught_up(), CATCH_UP_WAIT)
    if after is None:
        after = await store.oldest_position()
    page = await store.merchant_events(claims.merchant_id, after, limit)
    body = EventPage(
        events=[PolledEvent(channel=e.channel, cursor=e.cursor, data=dict(e.data)) for e in page],
        next=page[-1].cursor if page else encode_cursor(after),
    )
    return JSONResponse(body.model_dump())
