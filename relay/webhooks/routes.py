"""``GET/POST/DELETE /webhooks``: the token's merchant manages its own endpoints."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, Field, WithJsonSchema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay.auth import TokenVerifier
from relay.db import TRANSIENT_ERRORS
from relay.egress import EgressRefused, IPNetwork
from relay.events import EventFilter
from relay.http_auth import authenticate, error, read_json
from relay.store import Store
from relay.webhooks.endpoints import EndpointError, EndpointLimitReached, add_endpoint, list_endpoints

logger = logging.getLogger(__name__)

BIGINT_MAX = 2**63 - 1
Timestamp = Annotated[str | None, WithJsonSchema({"type": ["string", "null"], "format": "date-time"})]


class WebhookEndpointIn(BaseModel):
    """``POST /webhooks`` (checked by ``add_endpoint``, to answer with a message per field)."""

    url: str = Field(max_length=2048, json_schema_extra={"format": "uri"})
    events: list[EventFilter] | None = Field(
        default=None, description="Events to deliver; omitted, null or empty: every event."
    )


class WebhookEndpointId(BaseModel):
    id: int = Field(ge=1, le=BIGINT_MAX)


class EndpointPath(BaseModel):
    endpoint_id: int = Field(ge=0, le=BIGINT_MAX)


class WebhookEndpoint(BaseModel):
    id: int
    merchantId: str
    url: str
    events: list[EventFilter] | None
    enabled: bool
    disabledReason: str | None
    failingSince: Timestamp
    createdAt: Timestamp


class WebhookEndpointCreated(WebhookEndpoint):
    secret: str = Field(pattern="^whsec_", description="Standard Webhooks signing secret; shown only once.")


class WebhookEndpointList(BaseModel):
    endpoints: list[WebhookEndpoint]


async def _json_body(request: Request) -> dict[str, Any] | Response:
    body = await read_json(request)
    if isinstance(body, Response):
        return body
    if not isinstance(body, dict):
        return error(400, "body must be a JSON object")
    return body


def routes(
    store: Store, verifier: TokenVerifier | None, egress_allow: Sequence[IPNetwork], endpoint_limit: int
) -> list[BaseRoute]:
    """The merchant webhooks API over ``store``; 503 while ``verifier`` is None (no JWT key).
    A merchant registers at most ``endpoint_limit`` endpoints (409 past it)."""

    async def endpoints(request: Request) -> Response:
        try:
            return await _endpoints(request)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            logger.warning("webhooks API: database error (%s: %s)", type(exc).__name__, exc)
            return error(503, "database unavailable; try again")

    async def _endpoints(request: Request) -> Response:
        claims = authenticate(request, verifier)
        if isinstance(claims, Response):
            return claims
        merchant = claims.merchant_id
        if request.method == "GET":
            listed = WebhookEndpointList.model_validate({"endpoints": await list_endpoints(store, merchant)})
            return JSONResponse(listed.model_dump())
        if request.method == "POST":
            body = await _json_body(request)
            if isinstance(body, Response):
                return body
            try:
                endpoint, secret = await add_endpoint(
                    store,
                    merchant_id=merchant,
                    url=body.get("url"),  # type: ignore[arg-type]  # validated inside
                    events=body.get("events"),
                    allow=egress_allow,
                    limit=endpoint_limit,
                )
            except EgressRefused as exc:
                return error(422, f"url: {exc}")
            except EndpointError as exc:
                return error(422, f"events: {exc}")
            except EndpointLimitReached as exc:
                return error(409, str(exc))
            created = WebhookEndpointCreated.model_validate({**endpoint, "secret": secret})
            return JSONResponse(created.model_dump(), status_code=201)
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
        if not await store.delete_endpoint(endpoint_id, merchant):
            return error(404, "no such webhook endpoint")
        return Response(status_code=204)

    return [
        Route("/webhooks", endpoints, methods=["GET", "POST", "DELETE"]),
        Route("/webhooks/{endpoint_id:int}", endpoints, methods=["DELETE"]),
    ]
