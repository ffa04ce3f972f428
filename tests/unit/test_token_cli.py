from __future__ import annotations

import pytest

from relay.auth import TokenVerifier
from relay.cli import main
from relay.config import Settings

SECRET = "cli-test-secret-0123456789abcdef0123456789"


def test_relay_token_prints_one_jwt_the_verifier_accepts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_JWT_SECRET", SECRET)
    monkeypatch.setenv("RELAY_JWT_AUDIENCE", "relay")
    assert main(["token", "--merchant", "m1", "--user", "u1", "--ttl", "120"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    claims = TokenVerifier(Settings(jwt_secret=SECRET, jwt_audience="relay")).verify(out.strip())
    assert (claims.merchant_id, claims.user_id) == ("m1", "u1")
    assert 100 < claims.seconds_left <= 120


def test_relay_token_without_a_secret_fails_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RELAY_JWT_SECRET", raising=False)
    assert main(["token", "--merchant", "m1", "--user", "u1"]) == 1
    assert "RELAY_JWT_SECRET" in capsys.readouterr().err
