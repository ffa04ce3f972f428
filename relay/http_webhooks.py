"""``GET/POST/DELETE /webhooks``: the token's merchant manages its own endpoints."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay.db import TRANSIENT_ERRORS
from relay.egress import EgressRefused
from relay.http_auth import authenticate, error, read_json
from relay.webhooks import (
    EndpointError,
    EndpointLimitReached,
    add_endpoint,
    delete_endpoint,
    list_endpoints,
)

if TYPE_CHECKING:
    from relay.app import Relay


logger = logging.getLogger(__name__)

BIGINT_MAX = 2**63 - 1


async def _json_body(request: Request) -> dict[str, Any] | Response:
    body = await read_json(request)
    if isinstance(body, Response):
        return body
    if not isinstance(body, dict):
        return error(400, "body must be a JSON object")
    return body


def webhook_routes(relay: Relay) -> list[BaseRoute]:
    async def endpoints(request: Request) -> Response:
        try:
            return await _endpoints(request)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            logger.warning("webhooks API: database error (%s: %s)", type(exc).__name__, exc)
            return error(503, "database unavailable; try again")

    async def _endpoints(request: Request) -> Response:
        claims = authenticate(request, relay.verifier)
        if isinstance(claims, Response):
            return claims
        merchant = claims.merchant_id
        if request.method == "GET":
            return JSONResponse({"endpoints": await list_endpoints(relay.pool, merchant)})
        if request.method == "POST":
            body = await _json_body(request)
            if isinstance(body, Response):
                return body
            try:
                endpoint, secret = await add_endpoint(
                    relay.pool,
                    merchant_id=merchant,
                    url=body.get("url"),  # type: ignore[arg-type]  # validated inside
                    events=body.get("events"),
                    allow=relay.settings.egress_allow,
                    limit=relay.settings.webhook_endpoints_per_merchant,
                )
            except EgressRefused as exc:
                return error(422, f"url: {exc}")
            except EndpointError as exc:
                return error(422, f"events: {exc}")
            except EndpointLimitReached as exc:
                return error(409, str(exc))
            return JSONResponse({**endpoint, "secret": secret}, status_code=201)
        # DELETE /webhooks with {"id"}, or DELETE /webhooks/{id}
        raw_id: Any = request.path_params.get("endpoint_id")
        if raw_id is None:
            body = await _json_body(request)
            if isinstance(body, Response):
                return body
            raw_id = body.get("id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, int | str):
            return error(422, "id: expected the endpoint's id")
        try:
            endpoint_id = int(raw_id)
        except ValueError:
            return error(422, "id: expected the endpoint's id")
        if not 0 < endpoint_id <= BIGINT_MAX:
            return error(404, "no such webhook endpoint")
        if not await delete_endpoint(relay.pool, endpoint_id, merchant):
            return error(404, "no such webhook endpoint")
        return Response(status_code=204)

    return [
        Route("/webhooks", endpoints, methods=["GET", "POST", "DELETE"]),
        Route("/webhooks/{endpoint_id:int}", endpoints, methods=["DELETE"]),
    ]
