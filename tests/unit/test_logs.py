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
