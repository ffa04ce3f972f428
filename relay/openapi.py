"""The OpenAPI 3.1 document of Relay's plain HTTP API, served at ``GET /openapi.json``.

Every schema is generated from the pydantic models the routes validate with and answer
with (``model_json_schema``); this module only lists the operations. WebSocket (``/ws``),
Socket.IO, the calendar page and the browser scripts are not plain HTTP request/response
routes and are described in the README instead. A unit test checks that every routed HTTP
path is documented here and every documented path is routed;
``tests/e2e/test_fuzz_http.py`` fuzzes a running relay against this document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from relay.http import Health, NotReady, Ready
from relay.http_auth import MAX_BODY, Error, ValidationError
from relay.live.polling import EventPage, EventsQuery
from relay.push.routes import SubscriptionStored, VapidPublicKey
from relay.push.subscriptions import EndpointIn, SubscriptionIn
from relay.webhooks.routes import (
    EndpointPath,
    WebhookEndpointCreated,
    WebhookEndpointId,
    WebhookEndpointIn,
    WebhookEndpointList,
)

Schema = dict[str, Any]
REF = "#/components/schemas/{model}"

# status -> (component name, description); 422 answers a ValidationError, the others an Error.
ERROR_RESPONSES: dict[str, tuple[str, str]] = {
    "400": ("BadRequest", "The request is malformed (body not JSON, bad cursor or limit)."),
    "401": ("Unauthorized", "Missing, malformed, wrongly signed or expired bearer token."),
    "404": ("NotFound", "No such resource for the token's merchant."),
    "405": ("MethodNotAllowed", "The method is not supported on this path (see `Allow`)."),
    "409": ("LimitReached", "The merchant (or user) already has as many as its limit allows."),
    "413": ("TooLarge", "The request body is larger than the route accepts."),
    "422": ("Unprocessable", "A field is invalid; the message names it."),
    "503": ("Unavailable", "The route is off (no JWT key or no VAPID key) or the database is unavailable."),
}
TOKEN_ERRORS = ("401", "503")
BODY_ERRORS = ("400", "413", "422")


@dataclass(frozen=True)
class Operation:
    """One documented operation; ``answers`` maps a success status to (model or None, text)."""

    method: Literal["get", "post", "delete"]
    path: str
    operation_id: str
    summary: str
    answers: dict[str, tuple[type[BaseModel] | None, str]]
    errors: tuple[str, ...] = ()
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: type[BaseModel] | None = None
    token: bool = False
    description: str | None = None
    extra: Schema = field(default_factory=dict)


OPERATIONS = (
    Operation(
        "get",
        "/healthz",
        "healthz",
        "Liveness: 200 while the process serves HTTP.",
        {"200": (Health, "Alive.")},
    ),
    Operation(
        "get",
        "/readyz",
        "readyz",
        "Readiness: 200 while the listener is connected and the database answers.",
        {"200": (Ready, "Ready."), "503": (NotReady, "Not ready; `problems` says why.")},
    ),
    Operation(
        "get",
        "/metrics",
        "metrics",
        "Prometheus metrics (text exposition format).",
        {},
        extra={
            "responses": {
                "200": {
                    "description": "Prometheus text.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            }
        },
    ),
    Operation(
        "get",
        "/openapi.json",
        "openapi",
        "This document.",
        {},
        extra={
            "responses": {
                "200": {
                    "description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            }
        },
    ),
    Operation(
        "get",
        "/push/vapid-public-key",
        "vapidPublicKey",
        "The VAPID public key for `pushManager.subscribe`.",
        {"200": (VapidPublicKey, "The key.")},
        ("503",),
    ),
    Operation(
        "post",
        "/push/subscriptions",
        "subscribePush",
        "Store a browser push subscription for the token's user and merchant.",
        {"201": (SubscriptionStored, "Stored (created or updated).")},
        ("400", "401", "405", "409", "413", "422", "503"),
        body=SubscriptionIn,
        token=True,
        description=(
            "One subscription per merchant and endpoint: re-posting it under the same merchant "
            "updates it (and gives it to the posting user); another merchant's post of the same "
            "endpoint is stored as that merchant's own. 409 past RELAY_PUSH_SUBSCRIPTIONS_PER_USER "
            "or RELAY_PUSH_SUBSCRIPTIONS_PER_MERCHANT live subscriptions."
        ),
    ),
    Operation(
        "delete",
        "/push/subscriptions",
        "unsubscribePush",
        "Remove the token's user's subscription with this endpoint.",
        {"204": (None, "Removed (or there was none).")},
        ("400", "401", "405", "413", "422", "503"),
        body=EndpointIn,
        token=True,
    ),
    Operation(
        "get",
        "/events",
        "pollEvents",
        "The merchant's events after a cursor, in commit order (polling fallback).",
        {"200": (EventPage, "A page of events.")},
        ("400", *TOKEN_ERRORS),
        query=EventsQuery,
        token=True,
    ),
    Operation(
        "get",
        "/webhooks",
        "listWebhooks",
        "The token's merchant's webhook endpoints.",
        {"200": (WebhookEndpointList, "The endpoints.")},
        TOKEN_ERRORS,
        token=True,
    ),
    Operation(
        "post",
        "/webhooks",
        "addWebhook",
        "Register a webhook endpoint; the answer carries its signing secret.",
        {"201": (WebhookEndpointCreated, "Registered.")},
        ("400", "409", "413", "422", *TOKEN_ERRORS),
        body=WebhookEndpointIn,
        token=True,
        description="409 once the merchant has RELAY_WEBHOOK_ENDPOINTS_PER_MERCHANT endpoints.",
    ),
    Operation(
        "delete",
        "/webhooks",
        "removeWebhook",
        "Remove one of the merchant's endpoints; its pending deliveries are cancelled.",
        {"204": (None, "Removed.")},
        ("400", "404", "413", "422", *TOKEN_ERRORS),
        body=WebhookEndpointId,
        token=True,
    ),
    Operation(
        "delete",
        "/webhooks/{endpoint_id}",
        "removeWebhookById",
        "Remove one of the merchant's endpoints by id.",
        {"204": (None, "Removed.")},
        ("404", *TOKEN_ERRORS),
        path_params=EndpointPath,
        token=True,
    ),
)


def _parameters(model: type[BaseModel], location: str) -> list[Schema]:
    """A model's fields as OpenAPI parameters (an optional field's schema without its null)."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        prop.pop("default", None)
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if branches:
            prop.update(branches[0])
        parameter: Schema = {"name": name, "in": location, "required": name in required, "schema": prop}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _operation(op: Operation, refs: dict[type[BaseModel], Schema]) -> Schema:
    out: Schema = {"operationId": op.operation_id, "summary": op.summary}
    if op.description:
        out["description"] = op.description
    if op.token:
        out["security"] = [{"bearerAuth": []}]
    parameters = [
        *(_parameters(op.query, "query") if op.query else []),
        *(_parameters(op.path_params, "path") if op.path_params else []),
    ]
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "description": f"At most {MAX_BODY} bytes.",
            "content": {"application/json": {"schema": refs[op.body]}},
        }
    responses: Schema = {}
    for status, (model, text) in op.answers.items():
        responses[status] = {"description": text}
        if model is not None:
            responses[status]["content"] = {"application/json": {"schema": refs[model]}}
    for status in op.errors:
        responses[status] = {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
    return {**out, "responses": responses, **op.extra}


def document() -> Schema:
    """The OpenAPI document (a fresh dict each call)."""
    requests = {op.body for op in OPERATIONS if op.body is not None}
    answers = {model for op in OPERATIONS for model, _ in op.answers.values() if model is not None}
    answers |= {Error, ValidationError}
    keyed, definitions = models_json_schema(
        [(model, "validation") for model in sorted(requests, key=lambda m: m.__name__)]
        + [(model, "serialization") for model in sorted(answers, key=lambda m: m.__name__)],
        ref_template=REF,
    )
    refs: dict[type[BaseModel], Schema] = {
        model: schema for (model, _mode), schema in keyed.items() if issubclass(model, BaseModel)
    }
    paths: Schema = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    responses = {
        name: {
            "description": text,
            "content": {"application/json": {"schema": refs[ValidationError if status == "422" else Error]}},
        }
        for status, (name, text) in ERROR_RESPONSES.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Relay",
            "version": "0.1.0",
            "description": "Real-time notifications of row changes (bookings and every attached source). "
            'Every error is JSON `{"error": "<message>"}`.',
        },
        "paths": paths,
        "components": {
            "schemas": definitions["$defs"],
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Claims `sub` (user id), `merchantId` (scopes every request), `exp`.",
                }
            },
        },
    }
