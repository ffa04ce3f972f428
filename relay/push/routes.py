"""HTTP routes for Web Push: the VAPID public key, subscriptions, and the browser scripts."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources

import asyncpg
import pydantic
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay.auth import TokenVerifier
from relay.config import Settings
from relay.db import TRANSIENT_ERRORS
from relay.egress import Resolver
from relay.events import EventFilter, Sources
from relay.http_auth import MAX_BODY, FieldError, authenticate, error, invalid, read_json
from relay.push.subscriptions import (
    EndpointIn,
    LimitReached,
    SubscriptionIn,
    endpoint_problem,
    store_subscription,
)
from relay.store import Store

logger = logging.getLogger(__name__)

PUSH_OFF = "Web Push is off: set RELAY_VAPID_PRIVATE_KEY and RELAY_VAPID_SUBJECT (see `relay vapid-keys`)"


class VapidPublicKey(BaseModel):
    publicKey: str = Field(
        description="base64url of the 65-byte uncompressed P-256 point (the browser's applicationServerKey)"
    )


class SubscriptionStored(BaseModel):
    id: int
    channels: list[EventFilter]


def field_errors(exc: pydantic.ValidationError) -> list[FieldError]:
    found = []
    for item in exc.errors():
        name = ".".join(str(part) for part in item["loc"]) or "body"
        found.append(FieldError(field=name, message=str(item["msg"]).removeprefix("Value error, ")))
    return found


def routes(
    store: Store,
    verifier: TokenVerifier | None,
    public_key: str | None,
    settings: Settings,
    resolver: Resolver,
) -> list[BaseRoute]:
    """The Web Push routes; ``public_key`` None (Web Push off) answers 503, as does ``verifier``
    None (no JWT key) on the token routes. ``settings`` gives the egress allow-list, the DNS
    timeout and the subscription limits; ``resolver`` looks up plain-http endpoints."""

    async def vapid_public_key(_request: Request) -> Response:
        if public_key is None:
            return error(503, PUSH_OFF)
        return JSONResponse(VapidPublicKey(publicKey=public_key).model_dump())

    async def subscriptions(request: Request) -> Response:
        try:
            return await _subscriptions(request)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            logger.warning("push subscriptions: database error (%s: %s)", type(exc).__name__, exc)
            return error(503, "database unavailable; try again")

    async def _subscriptions(request: Request) -> Response:
        if request.method not in ("POST", "DELETE"):
            response = error(405, "use POST to subscribe or DELETE to unsubscribe")
            response.headers["Allow"] = "POST, DELETE"
            return response
        if public_key is None:
            return error(503, PUSH_OFF)
        claims = authenticate(request, verifier)
        if isinstance(claims, Response):
            return claims
        body = await read_json(request, MAX_BODY)
        if isinstance(body, Response):
            return body
        if request.method == "DELETE":
            try:
                gone = EndpointIn.model_validate(body)
            except pydantic.ValidationError as exc:
                return invalid(field_errors(exc))
            await store.delete_subscription(gone.endpoint, claims.merchant_id, claims.user_id)
            return Response(status_code=204)
        try:
            sub = SubscriptionIn.model_validate(body)
        except pydantic.ValidationError as exc:
            return invalid(field_errors(exc))
        problem = await endpoint_problem(sub.endpoint, settings.egress_allow, resolver, settings.dns_timeout)
        if problem is not None:
            return invalid([FieldError(field="endpoint", message=problem)])
        known = Sources(await store.sources()).channels
        try:
            sub = sub.model_copy(update={"channels": sub.channel_filter(known)})
        except ValueError as exc:
            return invalid([FieldError(field="channels", message=str(exc))])
        try:
            subscription_id, created = await store_subscription(
                store, settings, claims.merchant_id, claims.user_id, sub
            )
        except LimitReached as exc:
            return error(409, str(exc))
        logger.info(
            "push subscription %s %s",
            subscription_id,
            "created" if created else "updated",
            extra={
                "destination": "push",
                "merchant_id": claims.merchant_id,
                "subscription_id": subscription_id,
            },
        )
        stored = SubscriptionStored(id=subscription_id, channels=sub.channels or list(known))
        return JSONResponse(stored.model_dump(), status_code=201)

    return [
        Route("/push/vapid-public-key", vapid_public_key, methods=["GET"]),
        # Every method, so a wrong one gets a JSON 405 rather than Starlette's plain text.
        Route("/push/subscriptions", subscriptions, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/sw.js", _static("sw.js", {"Service-Worker-Allowed": "/", "Cache-Control": "no-cache"})),
        Route("/static/push.js", _static("push.js", {"Cache-Control": "no-cache"})),
    ]


def _static(name: str, headers: dict[str, str]) -> Callable[[Request], Awaitable[Response]]:
    text = resources.files("relay").joinpath("static", name).read_bytes()

    async def serve(_request: Request) -> Response:
        return Response(text, media_type="text/javascript", headers=headers)

    return serve
