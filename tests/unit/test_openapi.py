"""The OpenAPI document describes exactly the plain HTTP routes the app serves."""

from __future__ import annotations

from starlette.routing import Route

from relay import openapi
from relay.config import Settings
from tests.support import http_routes

# Not request/response API: the calendar page and the browser scripts (WebSocket and
# Socket.IO are not `Route`s).
UNDOCUMENTED = {"/", "/sw.js", "/static/push.js", "/static/socket.io.min.js"}
METHODS = {"get", "post", "put", "patch", "delete"}


def routed() -> dict[str, set[str]]:
    """Every HTTP Route of the built app: path (with plain ``{name}`` parameters) -> methods."""
    settings = Settings(database_url="postgresql://relay@localhost/relay", jwt_secret="x" * 32)
    found: dict[str, set[str]] = {}
    for route in http_routes(settings):
        if isinstance(route, Route) and route.path not in UNDOCUMENTED:
            found.setdefault(route.path_format, set()).update(m.lower() for m in route.methods or ())
    return found


def documented() -> dict[str, set[str]]:
    return {path: set(item) & METHODS for path, item in openapi.document()["paths"].items()}


def test_every_routed_http_path_is_documented_and_every_documented_path_is_routed() -> None:
    assert set(routed()) == set(documented())


def test_every_documented_operation_is_served_with_its_method() -> None:
    served = routed()
    for path, methods in documented().items():
        assert methods <= served[path], f"{path}: documented {methods}, routed {served[path]}"


def test_every_error_response_uses_the_error_schema() -> None:
    doc = openapi.document()
    shared = doc["components"]["responses"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or path == "/readyz":
                    continue
                name = response["$ref"].rsplit("/", 1)[-1]
                schema = shared[name]["content"]["application/json"]["schema"]["$ref"]
                assert schema.endswith(("/Error", "/ValidationError")), f"{method} {path} {status}"


def test_token_routes_declare_the_bearer_scheme() -> None:
    doc = openapi.document()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path in ("/events", "/webhooks", "/webhooks/{endpoint_id}", "/push/subscriptions"):
        for operation in doc["paths"][path].values():
            assert operation["security"] == [{"bearerAuth": []}], path
