"""Logging set-up: human-readable text by default, one JSON object per line on request.

No credential reaches a log line, whoever logs it: tokens in query strings (uvicorn logs
every WebSocket handshake with its full path), JWTs anywhere in a message or traceback,
``Authorization: Bearer`` values, passwords in URLs, webhook secrets, and the paths and
queries of outgoing requests (a push endpoint or a webhook URL can be a capability) are
replaced with ``[redacted]`` before any formatter sees them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import UTC, datetime

# Stable ``extra=`` keys that are worth a column in any log search. ``channel`` is an event's
# channel name (booking_created); ``destination`` is where a delivery goes (webhook, push).
CONTEXT_KEYS = (
    "event_id",
    "channel",
    "merchant_id",
    "destination",
    "delivery_id",
    "endpoint_id",
    "subscription_id",
    "job",
)
# Libraries that log what clients sent or where Relay sends: they get the filter on their
# own loggers too, so it holds under any handler (an embedding application's, pytest's).
LIBRARY_LOGGERS = (
    "uvicorn.error",
    "uvicorn.access",
    "httpx",
    "aiohttp.client",
)
# Loggers whose lines carry the URLs of Relay's own outgoing requests.
OUTGOING = ("httpx", "httpcore", "aiohttp.client")

REDACTED = "[redacted]"
_NAMES = r"(?:access_?token|token|jwt|auth|authorization|password|secret|api_?key)"
_SECRETS = re.compile(
    # a JWS compact token: base64url header and payload (JSON objects, so "eyJ"), signature
    r"eyJ[\w-]*\.[\w-]*\.[\w-]*"
    # name=value in a query string or a form
    rf"|(?P<param>(?<![\w-]){_NAMES}=)[^&\s\"'#]*"
    # "name": "value" in JSON (the auth object of a Socket.IO CONNECT)
    rf'|(?P<field>"{_NAMES}"\s*:\s*)"(?:[^"\\]|\\.)*"'
    r"|(?P<scheme>bearer\s+)[\w.~+/=-]+"
    r"|whsec_[\w+/=]+"
    # the password of scheme://user:password@host
    r"|(?<=://)(?P<user>[^/\s:@]+:)[^/\s@]+@",
    re.IGNORECASE,
)
_URL_REST = re.compile(r"(https?://[^/\s\"'?#]+)[/?#][^\s\"']*")


def _hide(match: re.Match[str]) -> str:
    if match["field"]:
        return f'{match["field"]}"{REDACTED}"'
    if match["user"]:
        return f"{match['user']}{REDACTED}@"
    return (match["param"] or match["scheme"] or "") + REDACTED


def redact(text: str, *, outgoing: bool = False) -> str:
    """``text`` without credentials; ``outgoing`` also drops the paths and queries of URLs."""
    text = _SECRETS.sub(_hide, text)
    if outgoing:
        text = _URL_REST.sub(rf"\1/{REDACTED}", text)
    return text


class RedactCredentials(logging.Filter):
    """Rewrites a record's message (and traceback) without credentials; never drops one."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        outgoing = record.name.startswith(OUTGOING)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging reports it when it formats the record
            return True
        clean = redact(message, outgoing=outgoing)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, outgoing=outgoing)
        return True


REDACT = RedactCredentials()


def guard_library_loggers() -> None:
    """Put the redaction on the loggers of the libraries that see credentials (idempotent)."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if REDACT not in logger.filters:
            logger.addFilter(REDACT)


class Throttled:
    """One logger call at most every ``interval`` seconds, for lines a client can trigger at
    will; the next line that is let through says how many were held back meanwhile."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._next = 0.0
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            message += " (%d more like it not logged)"
            args = (*args, self._held)
        self._held = 0
        self._next = now + self.interval
        self.logger.warning(message, *args)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(
            f"{key}={getattr(record, key)}" for key in CONTEXT_KEYS if getattr(record, key, None) is not None
        )
        return f"{text} [{context}]" if context else text


def setup(log_format: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(REDACT)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    guard_library_loggers()
    for noisy in ("httpx", "httpcore", "apscheduler", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
