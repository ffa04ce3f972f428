"""ASGI routes: health, readiness and metrics (channels add their own routes)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from relay import metrics, openapi
from relay.http_auth import error
from relay.live import polling, socketio, websocket
from relay.live.wire import CaptureSend
from relay.push.routes import push_routes
from relay.webhooks.routes import webhook_routes

if TYPE_CHECKING:
    from relay.app import Relay


def build_app(relay: Relay, extra_routes: list[BaseRoute] | None = None) -> ASGIApp:
    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        problems = await relay.readiness_problems()
        if problems:
            message = "not ready: " + "; ".join(problems)
            body = {"status": "unavailable", "error": message, "problems": problems}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(_request: Request) -> Response:
        await relay.refresh_gauges()
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    api_document = openapi.document()

    async def openapi_json(_request: Request) -> Response:
        return JSONResponse(api_document)

    async def calendar(_request: Request) -> Response:
        return HTMLResponse(resources.files("relay").joinpath("static/index.html").read_text("utf-8"))

    routes: list[BaseRoute] = [
        Route("/", calendar),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/openapi.json", openapi_json),
        *push_routes(relay),
        *webhook_routes(relay),
        *websocket.routes(relay),
        *polling.routes(relay),
        *(extra_routes or []),
    ]
    origins = relay.settings.allowed_origins
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware if origins else None,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    return CaptureSend(socketio.mount(relay, app))


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own 404 / 405 as JSON errors like every other (with its ``Allow`` header)."""
    assert isinstance(exc, HTTPException)
    response = error(exc.status_code, exc.detail)
    response.headers.update(exc.headers or {})
    return response


async def _server_error(_request: Request, _exc: Exception) -> Response:
    """A bug answers JSON too (the traceback is logged by Starlette's error middleware)."""
    return error(500, "internal server error")
