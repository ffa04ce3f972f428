"""The ASGI app: the calendar page, health, readiness, metrics, the OpenAPI document, and the
routes the packages hand it (the composition root collects them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay import metrics
from relay.http_auth import error


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"


class NotReady(BaseModel):
    status: Literal["unavailable"] = "unavailable"
    error: str
    problems: list[str]


def build_app(
    routes: Sequence[BaseRoute],
    *,
    readiness: Callable[[], Awaitable[list[str]]],
    refresh_gauges: Callable[[], Awaitable[None]],
    allowed_origins: list[str],
    api_document: dict[str, Any],
) -> Starlette:
    """``readiness()`` lists what keeps the relay from being ready (empty: ready);
    ``refresh_gauges()`` runs before every /metrics scrape; ``api_document`` is served at
    /openapi.json."""

    async def healthz(_request: Request) -> Response:
        return JSONResponse(Health().model_dump())

    async def readyz(_request: Request) -> Response:
        problems = await readiness()
        if problems:
            body = NotReady(error="not ready: " + "; ".join(problems), problems=problems)
            return JSONResponse(body.model_dump(), status_code=503)
        return JSONResponse(Ready().model_dump())

    async def metrics_endpoint(_request: Request) -> Response:
        await refresh_gauges()
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(_request: Request) -> Response:
        return JSONResponse(api_document)

    async def calendar(_request: Request) -> Response:
        return HTMLResponse(resources.files("relay").joinpath("static/index.html").read_text("utf-8"))

    socketio_client = resources.files("relay").joinpath("static/socket.io.min.js").read_bytes()

    async def socketio_client_script(_request: Request) -> Response:
        # socket.io-client's browser bundle (MIT), for the calendar page's ?via=socketio
        return Response(socketio_client, media_type="text/javascript")

    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=allowed_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    ]
    return Starlette(
        routes=[
            Route("/", calendar),
            Route("/static/socket.io.min.js", socketio_client_script),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/openapi.json", openapi_json),
            *routes,
        ],
        middleware=middleware if allowed_origins else None,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own 404 / 405 as JSON errors like every other (with its ``Allow`` header)."""
    assert isinstance(exc, HTTPException)
    response = error(exc.status_code, exc.detail)
    response.headers.update(exc.headers or {})
    return response


async def _server_error(_request: Request, _exc: Exception) -> Response:
    """A bug answers JSON too (the traceback is logged by Starlette's error middleware)."""
    return error(500, "internal server error")
