from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from relay import cli
from relay.config import Settings
from relay.errors import ConfigError
from relay.push.vapid import (
    VapidSigner,
    b64url_decode,
    b64url_encode,
    generate_key_pair,
    parse_private_key,
    public_key_bytes,
)


def test_vapid_keys_prints_exactly_two_lines_with_a_matching_pair(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["vapid-keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    name_private, private = lines[0].split("=", 1)
    name_public, public = lines[1].split("=", 1)
    assert (name_private, name_public) == ("RELAY_VAPID_PRIVATE_KEY", "RELAY_VAPID_PUBLIC_KEY")
    assert "=" not in private + public  # base64url without padding
    assert len(b64url_decode(private)) == 32
    raw_public = b64url_decode(public)
    assert len(raw_public) == 65 and raw_public[0] == 4
    assert public_key_bytes(parse_private_key(private)) == raw_public


@pytest.mark.parametrize(
    "bad",
    [
        "not base64!",
        b64url_encode(b"\x01" * 31),
        b64url_encode(b"\x00" * 32),  # zero is not a valid scalar
        b64url_encode(b"\xff" * 32),  # above the curve order
        "-----BEGIN PRIVATE KEY-----",
    ],
)
def test_malformed_private_key_is_one_line_config_error_naming_the_variable(bad: str) -> None:
    settings = Settings(vapid_private_key=bad, vapid_subject="mailto:ops@example.com")
    with pytest.raises(ConfigError) as err:
        VapidSigner.from_settings(settings)
    assert "RELAY_VAPID_PRIVATE_KEY" in str(err.value)
    assert "\n" not in str(err.value)


def test_private_key_without_subject_is_refused() -> None:
    key, _ = generate_key_pair()
    with pytest.raises(ConfigError, match="RELAY_VAPID_SUBJECT"):
        VapidSigner.from_settings(Settings(vapid_private_key=key))


def test_header_is_cached_per_origin_until_shortly_before_exp() -> None:
    now = [1_000_000.0]
    signer = VapidSigner(
        ec.generate_private_key(ec.SECP256R1()),
        "mailto:ops@example.com",
        lifetime=3600,
        refresh_before=60,
        clock=lambda: now[0],
    )
    first = signer.header_for("https://push.example.com/a")
    assert signer.header_for("https://push.example.com/b") == first  # same origin
    other = signer.header_for("https://other.example.net/a")
    assert other != first
    assert signer.signatures == 2
    now[0] += 3600 - 61
    assert signer.header_for("https://push.example.com/c") == first
    now[0] += 2  # inside the refresh margin
    assert signer.header_for("https://push.example.com/c") != first
    assert signer.signatures == 3


def test_token_lifetime_beyond_24h_is_refused() -> None:
    with pytest.raises(ValueError):
        VapidSigner(ec.generate_private_key(ec.SECP256R1()), "mailto:a@b.c", lifetime=24 * 3600 + 1)


def test_relay_check_fails_on_a_malformed_vapid_key() -> None:
    from relay.check import push_key_problems

    good, _ = generate_key_pair()
    assert push_key_problems(Settings(vapid_private_key=good, vapid_subject="mailto:a@b.co")) == []
    [(status, message)] = push_key_problems(Settings(vapid_private_key="abc", vapid_subject="mailto:a@b.co"))
    assert status == "fail" and "RELAY_VAPID_PRIVATE_KEY" in message


@pytest.mark.parametrize(
    "subject", ["mailto:ops@example.com", "https://example.com", "https://shop.example/push/contact"]
)
def test_mailto_and_https_subjects_are_accepted_and_signed(subject: str) -> None:
    key, _ = generate_key_pair()
    signer = VapidSigner.from_settings(Settings(vapid_private_key=key, vapid_subject=subject))
    assert signer.header_for("https://push.example.com/x").startswith("vapid t=")


@pytest.mark.parametrize("subject", ["mailto:", "mailto:ops", "https://", "https:nohost"])
def test_unusable_subject_is_a_config_error(subject: str) -> None:
    key, _ = generate_key_pair()
    with pytest.raises(ConfigError, match="RELAY_VAPID_SUBJECT"):
        VapidSigner.from_settings(Settings(vapid_private_key=key, vapid_subject=subject))
