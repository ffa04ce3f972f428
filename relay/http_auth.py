"""Starlette helpers shared by the token-protected HTTP routes."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from relay.auth import AuthError, Claims, TokenVerifier


def error(status: int, message: str) -> JSONResponse:
    """Every error the HTTP API returns is JSON with a message."""
    return JSONResponse({"error": message}, status_code=status)


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
