"""Starlette helpers shared by the token-protected HTTP routes."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from relay.auth import AuthError, Claims, TokenVerifier


class Error(BaseModel):
    """Every error response of the HTTP API."""

    error: str = Field(description="What went wrong, for people.")


class FieldError(BaseModel):
    field: str
    message: str


class ValidationError(Error):
    """A refused field (422): the message names every bad field, ``errors`` lists them."""

    errors: list[FieldError] = []


def error(status: int, message: str) -> JSONResponse:
    """Every error the HTTP API returns is JSON with a message."""
    return JSONResponse(Error(error=message).model_dump(), status_code=status)


def invalid(errors: list[FieldError]) -> JSONResponse:
    """422 naming every bad field: ``{"error": "keys.auth: must be 16 bytes", "errors": [...]}``."""
    message = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return JSONResponse(ValidationError(error=message, errors=errors).model_dump(), status_code=422)


MAX_BODY = 16 * 1024


async def read_json(request: Request, max_bytes: int = MAX_BODY) -> object | JSONResponse:
    """The request's JSON body, or the error to send: 413 past ``max_bytes``, 400 when it is not
    JSON that could be stored (nested past the parser's limit, lone UTF-16 surrogates)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return error(413, f"body larger than {max_bytes} bytes")
    try:
        parsed: object = json.loads(body)
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeError):
        return error(400, "body is not JSON")
    return parsed


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticate(conn: HTTPConnection, verifier: TokenVerifier | None) -> Claims | JSONResponse:
    """The token's claims, or the response to send: 503 while token routes are off, else 401."""
    if verifier is None:
        return error(503, "token routes are off: set RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY")
    try:
        return verifier.verify(bearer_token(conn))
    except AuthError as exc:
        return error(401, str(exc))


def origin_allowed(conn: HTTPConnection, allowed: list[str]) -> bool:
    """RELAY_ALLOWED_ORIGINS for browsers; unset means same-origin only. No Origin: not a browser."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    if allowed:
        return "*" in allowed or origin.rstrip("/") in {a.rstrip("/") for a in allowed}
    parts = urlsplit(origin)
    host = conn.headers.get("host", "")
    secure = conn.url.scheme in ("https", "wss")
    return parts.netloc.lower() == host.lower() and parts.scheme == ("https" if secure else "http")
