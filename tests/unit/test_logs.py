from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from relay import logs

CONTEXT = {"event_id": 42, "channel": "booking_created", "merchant_id": "m1", "delivery_id": 7}


def record(message: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad value")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("relay.test", logging.WARNING, __file__, 1, message, args, exc_info)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_json_lines_have_stable_keys_and_the_context() -> None:
    line = logs.JsonFormatter().format(record("delivery %s sent", "d7", **CONTEXT))
    entry = json.loads(line)
    assert list(entry)[:4] == ["time", "level", "logger", "message"]
    assert entry["level"] == "warning"
    assert entry["logger"] == "relay.test"
    assert entry["message"] == "delivery d7 sent"
    assert entry["time"].endswith("+00:00")
    for key, value in CONTEXT.items():
        assert entry[key] == value


def test_json_leaves_out_absent_context_and_keeps_exceptions_on_one_line() -> None:
    line = logs.JsonFormatter().format(record("failed", exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert not set(logs.CONTEXT_KEYS) & set(entry)
    assert "ValueError: bad value" in entry["exception"]


def test_text_lines_are_readable_and_end_with_the_context() -> None:
    line = logs.TextFormatter().format(record("delivery %s sent", "d7", **CONTEXT))
    assert " WARNING relay.test: delivery d7 sent [" in line
    assert line.endswith("[event_id=42 channel=booking_created merchant_id=m1 delivery_id=7]")


def test_text_lines_without_context_have_no_brackets() -> None:
    assert logs.TextFormatter().format(record("plain %s", "line")).endswith("relay.test: plain line")


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
@pytest.mark.parametrize(("fmt", "formatter"), [("json", logs.JsonFormatter), ("text", logs.TextFormatter)])
def test_setup_installs_one_handler_with_the_chosen_format(fmt: str, formatter: type) -> None:
    logs.setup(fmt)
    handlers = logging.getLogger().handlers
    assert len(handlers) == 1
    assert isinstance(handlers[0].formatter, formatter)


def test_relay_log_format_json_makes_the_command_log_json() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "DATABASE_URL"}
    env.update(RELAY_LOG_FORMAT="json", DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")
    code = (
        "import logging, sys\n"
        "from relay import logs\n"
        "from relay.config import load_settings\n"
        "logs.setup(load_settings().log_format)\n"
        "logging.getLogger('relay.x').info('hello %s', 'there', extra={'event_id': 5})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stderr.strip())
    assert entry["message"] == "hello there"
    assert entry["event_id"] == 5
    assert entry["level"] == "info"


JWT = (
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSIsIm1lcmNoYW50SWQiOiJtMSJ9"
    ".p0JIyLvBiTawVj_q5D_UHHD2CS5y4uob9SBOHvZaVv8"
)


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (f'"WebSocket /ws?token={JWT}&since=9" [accepted]', '"WebSocket /ws?token=[redacted]&since=9"'),
        ("GET /socket.io/?EIO=4&token=opaque-value&transport=polling", "?EIO=4&token=[redacted]&transport="),
        ("GET /events?access_token=abc&since=3", "?access_token=[redacted]&since=3"),
        (f'Received packet MESSAGE data 0/notifications,{{"token": "{JWT}", "pid": "p1"}}', '"pid": "p1"'),
        (f"a token {JWT} in a message", "a token [redacted] in a message"),
        ("Authorization: Bearer not-a-jwt.but-secret", "Authorization: Bearer [redacted]"),
        (
            "could not connect to postgresql://relay:pa55@db:5432/relay",
            "postgresql://relay:[redacted]@db:5432",
        ),
        ("secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "secret=[redacted]"),
        ("oauth=stays", "oauth=stays"),
    ],
)
def test_credentials_are_redacted_from_log_text(line: str, kept: str) -> None:
    clean = logs.redact(line)
    assert kept in clean
    for secret in (JWT, "opaque-value", "abc&", "not-a-jwt", "pa55", "whsec_"):
        assert secret not in clean


def test_outgoing_request_lines_keep_only_the_origin() -> None:
    line = 'HTTP Request: POST https://hooks.example.com/services/T0/B0/XyZ?sig=1 "HTTP/1.1 200 OK"'
    clean = 'HTTP Request: POST https://hooks.example.com/[redacted] "HTTP/1.1 200 OK"'
    assert logs.redact(line, outgoing=True) == clean


@pytest.mark.parametrize("formatter", [logs.JsonFormatter(), logs.TextFormatter()])
def test_the_filter_rewrites_messages_arguments_and_tracebacks(formatter: logging.Formatter) -> None:
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        exc_info = sys.exc_info()
    args = ("1.2.3.4:5", f"/ws?token={JWT}")
    made = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, '%s "WebSocket %s"', args, exc_info)
    assert logs.REDACT.filter(made)
    line = formatter.format(made)
    assert JWT not in line
    assert "/ws?token=[redacted]" in line
    assert "ValueError: bad token [redacted]" in line


def test_library_loggers_redact_under_any_handler(caplog: pytest.LogCaptureFixture) -> None:
    logs.guard_library_loggers()
    for name in ("uvicorn.error", "httpx"):
        caplog.set_level(logging.INFO, logger=name)
    logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "1.2.3.4:5", f"/ws?token={JWT}")
    logging.getLogger("httpx").info("HTTP Request: POST %s", "https://push.example/send/capability-id")
    assert JWT not in caplog.text
    assert "capability-id" not in caplog.text
    assert "/ws?token=[redacted]" in caplog.text
    assert "POST https://push.example/[redacted]" in caplog.text


def test_a_throttled_line_is_logged_once_per_interval_then_says_how_many_were_held(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttled = logs.Throttled(logging.getLogger("relay.test"), interval=60)
    for n in range(5):
        throttled.warning("refused %s", n)
    assert [r.getMessage() for r in caplog.records] == ["refused 0"]
    throttled._next = 0.0  # the interval is over
    throttled.warning("refused %s", 5)
    assert caplog.records[-1].getMessage() == "refused 5 (4 more like it not logged)"
