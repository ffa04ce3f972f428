"""HTTP routes for Web Push: the VAPID public key, subscriptions, and the browser scripts."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources

import asyncpg
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay.auth import TokenVerifier
from relay.config import Settings
from relay.db import TRANSIENT_ERRORS
from relay.egress import Resolver
from relay.events import Sources
from relay.http_auth import MAX_BODY, authenticate, error, read_json
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


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    found = []
    for item in exc.errors():
        name = ".".join(str(part) for part in item["loc"]) or "body"
        found.append({"field": name, "message": str(item["msg"]).removeprefix("Value error, ")})
    return found


def invalid(exc: ValidationError) -> JSONResponse:
    """422 naming every bad field: ``{"error": "keys.auth: must be 16 bytes", "errors": [...]}``."""
    errors = _field_errors(exc)
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse({"error": message, "errors": errors}, status_code=422)


def field_error(field: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": f"{field}: {message}", "errors": [{"field": field, "message": message}]}, status_code=422
    )


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
        return JSONResponse({"publicKey": public_key})

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
            except ValidationError as exc:
                return invalid(exc)
            await store.delete_subscription(gone.endpoint, claims.merchant_id, claims.user_id)
            return Response(status_code=204)
        try:
            sub = SubscriptionIn.model_validate(body)
        except ValidationError as exc:
            return invalid(exc)
        problem = await endpoint_problem(sub.endpoint, settings.egress_allow, resolver, settings.dns_timeout)
        if problem is not None:
            return field_error("endpoint", problem)
        known = Sources(await store.sources()).channels
        try:
            sub = sub.model_copy(update={"channels": sub.channel_filter(known)})
        except ValueError as exc:
            return field_error("channels", str(exc))
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
        return JSONResponse({"id": subscription_id, "channels": sub.channels or list(known)}, status_code=201)

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
