"""The OpenAPI 3.1 document of Relay's plain HTTP API, served at ``GET /openapi.json``.

WebSocket (``/ws``), Socket.IO, the calendar page and the browser scripts are not plain
HTTP request/response routes and are described in the README instead. A unit test checks
that every routed HTTP path is documented here and every documented path is routed;
``tests/e2e/test_fuzz_http.py`` fuzzes a running relay against this document.
"""

from __future__ import annotations

from typing import Any

from relay.events import CHANNELS
from relay.http_auth import MAX_BODY
from relay.live.polling import MAX_LIMIT
from relay.push.subscriptions import MAX_ENDPOINT, MAX_EXPIRATION_MS

Schema = dict[str, Any]

BIGINT_MAX = 2**63 - 1
ERROR_MEDIA = "application/json"
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(ok: dict[str, Schema], *errors: str) -> dict[str, Schema]:
    """An operation's responses: its own successes plus shared error responses by status."""
    out: dict[str, Schema] = dict(ok)
    for status in errors:
        out[status] = {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
    return out


# status -> (component name, description)
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


def _components() -> Schema:
    # Event names of the attached sources (NAME_created, ...): which exist is the database's
    # business (`relay sources`); a name no source has is refused with 422.
    channel = {
        "type": "string",
        "pattern": "^[a-z][a-z0-9_]{0,29}_(created|updated|deleted)$",
        "examples": list(CHANNELS),
    }
    event_filter = {
        "type": "string",
        "pattern": r"^[a-z][a-z0-9_]{0,29}_(created|updated|deleted|\*)$",
        "description": "An event name, or NAME_* for every event of source NAME.",
        "examples": [*CHANNELS, "booking_*"],
    }
    timestamp = {"type": ["string", "null"], "format": "date-time"}
    schemas: dict[str, Schema] = {
        "Error": {
            "type": "object",
            "description": "Every error response of the HTTP API.",
            "required": ["error"],
            "properties": {"error": {"type": "string", "description": "What went wrong, for people."}},
        },
        "ValidationError": {
            "allOf": [
                _ref("Error"),
                {
                    "type": "object",
                    "properties": {
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["field", "message"],
                                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                            },
                        }
                    },
                },
            ]
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Ready": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ready"}},
        },
        "NotReady": {
            "type": "object",
            "required": ["status", "error", "problems"],
            "properties": {
                "status": {"const": "unavailable"},
                "error": {"type": "string"},
                "problems": {"type": "array", "items": {"type": "string"}},
            },
        },
        "VapidPublicKey": {
            "type": "object",
            "required": ["publicKey"],
            "properties": {
                "publicKey": {
                    "type": "string",
                    "description": "base64url of the 65-byte uncompressed P-256 point "
                    "(the browser's applicationServerKey)",
                }
            },
        },
        "PushSubscription": {
            "type": "object",
            "description": "A browser `PushSubscription.toJSON()`, plus an optional channel filter.",
            "required": ["endpoint", "keys"],
            "properties": {
                "endpoint": {"type": "string", "format": "uri", "maxLength": MAX_ENDPOINT},
                "keys": {
                    "type": "object",
                    "required": ["p256dh", "auth"],
                    "properties": {
                        "p256dh": {"type": "string", "description": "base64url, 65-byte P-256 point"},
                        "auth": {"type": "string", "description": "base64url, 16 bytes"},
                    },
                },
                "expirationTime": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_EXPIRATION_MS},
                "channels": {"type": "array", "items": event_filter, "minItems": 1},
            },
        },
        "PushSubscriptionStored": {
            "type": "object",
            "required": ["id", "channels"],
            "properties": {
                "id": {"type": "integer"},
                "channels": {"type": "array", "items": event_filter},
            },
        },
        "PushEndpoint": {
            "type": "object",
            "required": ["endpoint"],
            "properties": {"endpoint": {"type": "string", "minLength": 1, "maxLength": MAX_ENDPOINT}},
        },
        "Event": {
            "type": "object",
            "required": ["channel", "cursor", "data"],
            "properties": {
                "channel": channel,
                "cursor": {"type": "string"},
                "data": {"type": "object", "description": "The seed's NOTIFY payload plus eventId."},
            },
        },
        "EventPage": {
            "type": "object",
            "required": ["events", "next"],
            "properties": {
                "events": {"type": "array", "items": _ref("Event")},
                "next": {"type": "string", "description": "Pass back as `since` on the next poll."},
            },
        },
        "WebhookEndpointIn": {
            "type": "object",
            "required": ["url"],
            "properties": {
                "url": {"type": "string", "format": "uri", "maxLength": 2048},
                "events": {
                    "type": ["array", "null"],
                    "items": event_filter,
                    "description": "Events to deliver; omitted, null or empty: every event.",
                },
            },
        },
        "WebhookEndpoint": {
            "type": "object",
            "required": [
                "id",
                "merchantId",
                "url",
                "events",
                "enabled",
                "disabledReason",
                "failingSince",
                "createdAt",
            ],
            "properties": {
                "id": {"type": "integer"},
                "merchantId": {"type": "string"},
                "url": {"type": "string"},
                "events": {"type": ["array", "null"], "items": event_filter},
                "enabled": {"type": "boolean"},
                "disabledReason": {"type": ["string", "null"]},
                "failingSince": timestamp,
                "createdAt": timestamp,
            },
        },
        "WebhookEndpointCreated": {
            "allOf": [
                _ref("WebhookEndpoint"),
                {
                    "type": "object",
                    "required": ["secret"],
                    "properties": {
                        "secret": {
                            "type": "string",
                            "pattern": "^whsec_",
                            "description": "Standard Webhooks signing secret; shown only once.",
                        }
                    },
                },
            ]
        },
        "WebhookEndpointList": {
            "type": "object",
            "required": ["endpoints"],
            "properties": {"endpoints": {"type": "array", "items": _ref("WebhookEndpoint")}},
        },
        "WebhookEndpointId": {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX}},
        },
    }
    responses: dict[str, Schema] = {}
    for status, (name, description) in ERROR_RESPONSES.items():
        responses[name] = _json(_ref("ValidationError" if status == "422" else "Error"), description)
    return {
        "schemas": schemas,
        "responses": responses,
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "Claims `sub` (user id), `merchantId` (scopes every request), `exp`.",
            }
        },
    }


def _paths() -> Schema:
    token_errors = ("401", "503")
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: 200 while the process serves HTTP.",
                "responses": {"200": _json(_ref("Health"), "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: 200 while the listener is connected and the database answers.",
                "responses": {
                    "200": _json(_ref("Ready"), "Ready."),
                    "503": _json(_ref("NotReady"), "Not ready; `problems` says why."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format).",
                "responses": {
                    "200": {
                        "description": "Prometheus text.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }
        },
        "/push/vapid-public-key": {
            "get": {
                "operationId": "vapidPublicKey",
                "summary": "The VAPID public key for `pushManager.subscribe`.",
                "responses": _responses({"200": _json(_ref("VapidPublicKey"), "The key.")}, "503"),
            }
        },
        "/push/subscriptions": {
            "post": {
                "operationId": "subscribePush",
                "summary": "Store a browser push subscription for the token's user and merchant.",
                "description": (
                    "One subscription per merchant and endpoint: re-posting it under the same merchant "
                    "updates it (and gives it to the posting user); another merchant's post of the same "
                    "endpoint is stored as that merchant's own. 409 past RELAY_PUSH_SUBSCRIPTIONS_PER_USER "
                    "or RELAY_PUSH_SUBSCRIPTIONS_PER_MERCHANT live subscriptions."
                ),
                "security": BEARER,
                "requestBody": {
                    "required": True,
                    "description": f"At most {MAX_BODY} bytes.",
                    "content": {"application/json": {"schema": _ref("PushSubscription")}},
                },
                "responses": _responses(
                    {"201": _json(_ref("PushSubscriptionStored"), "Stored (created or updated).")},
                    "400",
                    "401",
                    "405",
                    "409",
                    "413",
                    "422",
                    "503",
                ),
            },
            "delete": {
                "operationId": "unsubscribePush",
                "summary": "Remove the token's user's subscription with this endpoint.",
                "security": BEARER,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("PushEndpoint")}},
                },
                "responses": _responses(
                    {"204": {"description": "Removed (or there was none)."}},
                    "400",
                    "401",
                    "405",
                    "413",
                    "422",
                    "503",
                ),
            },
        },
        "/events": {
            "get": {
                "operationId": "pollEvents",
                "summary": "The merchant's events after a cursor, in commit order (polling fallback).",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "A cursor this API returned; omitted: from the oldest retained event.",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": f"Events per page, default 100; values above {MAX_LIMIT} are capped.",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                ],
                "responses": _responses(
                    {"200": _json(_ref("EventPage"), "A page of events.")}, "400", *token_errors
                ),
            }
        },
        "/webhooks": {
            "get": {
                "operationId": "listWebhooks",
                "summary": "The token's merchant's webhook endpoints.",
                "security": BEARER,
                "responses": _responses(
                    {"200": _json(_ref("WebhookEndpointList"), "The endpoints.")}, *token_errors
                ),
            },
            "post": {
                "operationId": "addWebhook",
                "summary": "Register a webhook endpoint; the answer carries its signing secret.",
                "description": "409 once the merchant has RELAY_WEBHOOK_ENDPOINTS_PER_MERCHANT endpoints.",
                "security": BEARER,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("WebhookEndpointIn")}},
                },
                "responses": _responses(
                    {"201": _json(_ref("WebhookEndpointCreated"), "Registered.")},
                    "400",
                    "409",
                    "413",
                    "422",
                    *token_errors,
                ),
            },
            "delete": {
                "operationId": "removeWebhook",
                "summary": "Remove one of the merchant's endpoints; its pending deliveries are cancelled.",
                "security": BEARER,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("WebhookEndpointId")}},
                },
                "responses": _responses(
                    {"204": {"description": "Removed."}}, "400", "404", "413", "422", *token_errors
                ),
            },
        },
        "/webhooks/{endpoint_id}": {
            "delete": {
                "operationId": "removeWebhookById",
                "summary": "Remove one of the merchant's endpoints by id.",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "endpoint_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": BIGINT_MAX},
                    }
                ],
                "responses": _responses({"204": {"description": "Removed."}}, "404", *token_errors),
            }
        },
    }


def document() -> Schema:
    """The OpenAPI document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Relay",
            "version": "0.1.0",
            "description": "Real-time notifications of row changes (bookings and every attached source). "
            'Every error is JSON `{"error": "<message>"}`.',
        },
        "paths": _paths(),
        "components": _components(),
    }
