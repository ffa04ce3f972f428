"""JWT keys and algorithms: which configured key can check tokens of which algorithm.

The settings refuse, at start-up, a key and an algorithm list that cannot work together;
``relay.auth`` verifies tokens with what they allow.
"""

from __future__ import annotations

from collections.abc import Sequence

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")


def is_private_key(pem: str) -> bool:
    """Whether ``pem`` is a private key (which cannot verify a signature here)."""
    try:
        load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        return False
    return True


def algorithm_problem(algorithms: Sequence[str], *, secret: str | None, public_key: str | None) -> str | None:
    """Why the configured key cannot check tokens of one of ``algorithms``, or None.

    The key is ``RELAY_JWT_PUBLIC_KEY`` when set, else ``RELAY_JWT_SECRET``: one key for
    every algorithm, so HS* (a shared secret) and RS*/PS*/ES*/EdDSA (a public key) cannot
    be mixed. pyjwt's own key preparation decides whether a key suits an algorithm (an
    RSA key for RS*/PS*, a key on the right curve for ES*, ...).
    """
    known = jwt.algorithms.get_default_algorithms()
    for name in algorithms:
        if name not in known or name == "none":
            return f"unknown algorithm {name!r} (known: {', '.join(sorted(set(known) - {'none'}))})"
    key, variable = (public_key, "RELAY_JWT_PUBLIC_KEY") if public_key else (secret, "RELAY_JWT_SECRET")
    if not key:
        return None  # token routes are off
    for name in algorithms:
        if public_key and name in HMAC_ALGORITHMS:
            return (
                f"{name} needs RELAY_JWT_SECRET, but RELAY_JWT_PUBLIC_KEY is set and checks every token: "
                "list only the public key's algorithms, or unset RELAY_JWT_PUBLIC_KEY"
            )
        if not public_key and name not in HMAC_ALGORITHMS:
            hmac = ", ".join(HMAC_ALGORITHMS)
            return f"{name} needs RELAY_JWT_PUBLIC_KEY; RELAY_JWT_SECRET suits {hmac} only"
        try:
            known[name].prepare_key(key)
        except (jwt.InvalidKeyError, ValueError, TypeError):
            return f"{variable} is not a key for {name}, which needs {_key_kind(name)}"
    return None


def _key_kind(algorithm: str) -> str:
    if algorithm in HMAC_ALGORITHMS:
        return "a shared secret, not a PEM key"
    curves = {"ES256": "P-256", "ES256K": "secp256k1", "ES384": "P-384", "ES512": "P-521", "ES521": "P-521"}
    if algorithm in curves:
        return f"an EC public key on {curves[algorithm]} (PEM)"
    if algorithm == "EdDSA":
        return "an Ed25519 or Ed448 public key (PEM)"
    return "an RSA public key (PEM)"
