"""A JWT key and algorithm list that cannot work together stop start-up with one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jwt
import pytest

from relay.auth import AuthError, TokenVerifier
from relay.config import Settings, load_settings
from relay.errors import ConfigError
from tests.jwtkeys import (
    EC_PRIVATE,
    EC_PUBLIC,
    ED_PRIVATE,
    ED_PUBLIC,
    RSA_PRIVATE,
    RSA_PUBLIC,
    SECRET,
    private_pem,
)

JWT_VARIABLES = ("RELAY_JWT_SECRET", "RELAY_JWT_PUBLIC_KEY", "RELAY_JWT_ALGORITHMS")

REFUSED = {
    "public key with RS256,HS256": (
        {"RELAY_JWT_PUBLIC_KEY": RSA_PUBLIC, "RELAY_JWT_ALGORITHMS": "RS256,HS256"},
        "RELAY_JWT_ALGORITHMS: HS256 needs RELAY_JWT_SECRET, but RELAY_JWT_PUBLIC_KEY is set",
    ),
    "both keys with RS256,HS256": (
        {
            "RELAY_JWT_PUBLIC_KEY": RSA_PUBLIC,
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_JWT_ALGORITHMS": "RS256,HS256",
        },
        "RELAY_JWT_ALGORITHMS: HS256 needs RELAY_JWT_SECRET, but RELAY_JWT_PUBLIC_KEY is set",
    ),
    "public key with the default HS256": (
        {"RELAY_JWT_PUBLIC_KEY": RSA_PUBLIC},
        "RELAY_JWT_ALGORITHMS: HS256 needs RELAY_JWT_SECRET, but RELAY_JWT_PUBLIC_KEY is set",
    ),
    "secret with RS256": (
        {"RELAY_JWT_SECRET": SECRET, "RELAY_JWT_ALGORITHMS": "HS256,RS256"},
        "RELAY_JWT_ALGORITHMS: RS256 needs RELAY_JWT_PUBLIC_KEY; "
        "RELAY_JWT_SECRET suits HS256, HS384, HS512 only",
    ),
    "RSA key with ES256": (
        {"RELAY_JWT_PUBLIC_KEY": RSA_PUBLIC, "RELAY_JWT_ALGORITHMS": "RS256,ES256"},
        "RELAY_JWT_ALGORITHMS: RELAY_JWT_PUBLIC_KEY is not a key for ES256, "
        "which needs an EC public key on P-256",
    ),
    "P-256 key with ES384": (
        {"RELAY_JWT_PUBLIC_KEY": EC_PUBLIC, "RELAY_JWT_ALGORITHMS": "ES384"},
        "RELAY_JWT_ALGORITHMS: RELAY_JWT_PUBLIC_KEY is not a key for ES384, "
        "which needs an EC public key on P-384",
    ),
    "not a PEM key": (
        {"RELAY_JWT_PUBLIC_KEY": "not a key", "RELAY_JWT_ALGORITHMS": "RS256"},
        "RELAY_JWT_ALGORITHMS: RELAY_JWT_PUBLIC_KEY is not a key for RS256, which needs an RSA public key",
    ),
    "a private key as the public key": (
        {"RELAY_JWT_PUBLIC_KEY": private_pem(RSA_PRIVATE), "RELAY_JWT_ALGORITHMS": "RS256"},
        "RELAY_JWT_PUBLIC_KEY: holds a private key: give its public key",
    ),
    "a public key as the secret": (
        {"RELAY_JWT_SECRET": RSA_PUBLIC},
        "RELAY_JWT_ALGORITHMS: RELAY_JWT_SECRET is not a key for HS256, "
        "which needs a shared secret, not a PEM key",
    ),
    "unknown algorithm": (
        {"RELAY_JWT_SECRET": SECRET, "RELAY_JWT_ALGORITHMS": "hs256"},
        "RELAY_JWT_ALGORITHMS: unknown algorithm 'hs256'",
    ),
}


def _only(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in JWT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_key_and_algorithms_that_cannot_work_are_refused_with_one_line(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    env, expected = REFUSED[case]
    _only(monkeypatch, env)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(f"invalid setting {expected}"), message
    assert "\n" not in message


def _claims() -> dict[str, object]:
    return {"sub": "u1", "merchantId": "m1", "exp": int(time.time()) + 60}


ACCEPTED = {
    "secret, default HS256": ({"RELAY_JWT_SECRET": SECRET}, SECRET, ["HS256"]),
    "secret, HS256 and HS512": (  # HS512 wants a 64-byte key
        {"RELAY_JWT_SECRET": SECRET * 2, "RELAY_JWT_ALGORITHMS": "HS256,HS512"},
        SECRET * 2,
        ["HS256", "HS512"],
    ),
    "RSA key, RS256, PS256 and RS512": (
        {"RELAY_JWT_PUBLIC_KEY": RSA_PUBLIC, "RELAY_JWT_ALGORITHMS": "RS256,PS256,RS512"},
        RSA_PRIVATE,
        ["RS256", "PS256", "RS512"],
    ),
    "RSA key and a secret for `relay token`, RS256": (
        {"RELAY_JWT_PUBLIC_KEY": RSA_PUBLIC, "RELAY_JWT_SECRET": SECRET, "RELAY_JWT_ALGORITHMS": "RS256"},
        RSA_PRIVATE,
        ["RS256"],
    ),
    "P-256 key, ES256": (
        {"RELAY_JWT_PUBLIC_KEY": EC_PUBLIC, "RELAY_JWT_ALGORITHMS": "ES256"},
        EC_PRIVATE,
        ["ES256"],
    ),
    "Ed25519 key, EdDSA": (
        {"RELAY_JWT_PUBLIC_KEY": ED_PUBLIC, "RELAY_JWT_ALGORITHMS": "EdDSA"},
        ED_PRIVATE,
        ["EdDSA"],
    ),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_a_key_with_algorithms_it_suits_is_accepted_and_verifies_their_tokens(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    env, signing_key, algorithms = ACCEPTED[case]
    _only(monkeypatch, env)
    verifier = TokenVerifier(load_settings())
    for algorithm in algorithms:
        claims = verifier.verify(jwt.encode(_claims(), signing_key, algorithm=algorithm))  # type: ignore[arg-type]
        assert (claims.user_id, claims.merchant_id) == ("u1", "m1")


def test_no_key_leaves_the_algorithms_unchecked_against_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _only(monkeypatch, {"RELAY_JWT_ALGORITHMS": "RS256"})
    assert not load_settings().jwt_enabled


@pytest.mark.parametrize("command", ["run", "check"])
def test_run_and_check_refuse_the_mixed_setting_with_one_line_naming_the_variables(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_JWT_")}
    env.update(
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/postgres",
        RELAY_JWT_PUBLIC_KEY=RSA_PUBLIC,
        RELAY_JWT_ALGORITHMS="RS256,HS256",
    )
    result = subprocess.run(
        [sys.executable, "-m", "relay", command], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"relay {command}: invalid setting RELAY_JWT_ALGORITHMS: HS256 needs RELAY_JWT_SECRET, but "
        "RELAY_JWT_PUBLIC_KEY is set and checks every token: list only the public key's algorithms, "
        "or unset RELAY_JWT_PUBLIC_KEY"
    ]


def test_a_token_the_key_cannot_check_is_refused_not_raised() -> None:
    """Even if a mixed setting got past validation, an HS256 token for a public key is an AuthError
    (401), not pyjwt's InvalidKeyError (a 500)."""
    mixed = Settings(jwt_public_key=RSA_PUBLIC, jwt_algorithms=["RS256"]).model_copy(
        update={"jwt_algorithms": ["RS256", "HS256"]}
    )
    verifier = TokenVerifier(mixed)
    with pytest.raises(AuthError, match="invalid token"):
        verifier.verify(jwt.encode(_claims(), SECRET, algorithm="HS256"))
    assert verifier.verify(jwt.encode(_claims(), RSA_PRIVATE, algorithm="RS256")).merchant_id == "m1"
