"""Settings: every variable typed; a bad one stops start-up with one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from relay.config import load_settings
from relay.errors import ConfigError


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_HTTP_PORT", "eighty"),
        ("RELAY_HTTP_PORT", "70000"),
        ("RELAY_RETRY_SCHEDULE", "0,5s,soon"),
        ("RELAY_RECONCILE_INTERVAL", "-1"),
        ("RELAY_EGRESS_ALLOW", "10.0.0.0/33"),
        ("RELAY_JWT_ALGORITHMS", "HS256,none"),
        ("RELAY_VAPID_SUBJECT", "admin@example.com"),
        ("RELAY_LOG_FORMAT", "xml"),
        ("RELAY_DATABASE_POOLER", "maybe"),
    ],
)
def test_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(f"invalid setting {variable}: ")
    assert "\n" not in message


def test_defaults_and_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/app")
    monkeypatch.setenv("RELAY_EGRESS_ALLOW", "127.0.0.0/8, ::1")
    monkeypatch.setenv("RELAY_ALLOWED_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("RELAY_RETRY_SCHEDULE", "0,250ms,1.5m,2h,1d")
    settings = load_settings()
    assert settings.listen_url == "postgresql://db/app"
    assert settings.http_host == "0.0.0.0" and settings.http_port == 8080
    assert settings.jwt_algorithms == ["HS256"] and not settings.jwt_enabled and not settings.push_enabled
    assert [str(n) for n in settings.egress_allow] == ["127.0.0.0/8", "::1/128"]
    assert settings.allowed_origins == ["https://a.example", "https://b.example"]
    assert settings.retry_schedule.delays == (0, 0.25, 90, 7200, 86400)
    assert settings.reconcile_interval == 30
    assert settings.database_pooler == "auto"


def test_listen_url_defaults_to_database_url_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://pooler:6432/app")
    monkeypatch.setenv("RELAY_LISTEN_DATABASE_URL", "postgresql://direct:5432/app")
    assert load_settings().listen_url == "postgresql://direct:5432/app"


def test_run_without_database_url_fails_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "relay", "run"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "relay run: DATABASE_URL is missing: set it to your PostgreSQL DSN"


def test_invalid_setting_stops_the_cli_before_anything_else() -> None:
    env = {**os.environ, "RELAY_HTTP_PORT": "eighty"}
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "relay check: invalid setting RELAY_HTTP_PORT: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]
