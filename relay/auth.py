"""JWT verification for every token-protected route (pyjwt, algorithms pinned by settings)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from relay.errors import RelayError

if TYPE_CHECKING:  # config validates keys with the functions below
    from relay.config import Settings

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")


class AuthError(RelayError):
    """The token is missing or not valid."""


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: str
    merchant_id: str
    expires_at: float

    @property
    def seconds_left(self) -> float:
        return self.expires_at - time.time()


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


class TokenVerifier:
    """Verifies tokens with the configured key; ``none`` and algorithm confusion are refused.

    pyjwt only accepts the algorithms it is given, and the settings only allow algorithms
    the key suits (see :func:`algorithm_problem`), so a token signed with HS256 using a
    public key as the secret is refused when only RS256 is allowed. Any other pyjwt error
    is a refused token too (401), never a server error.
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.jwt_enabled:
            raise AuthError("token routes are off: set RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY")
        self._key = settings.jwt_public_key or settings.jwt_secret or ""
        self._algorithms = list(settings.jwt_algorithms)
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer

    def verify(self, token: str | None) -> Claims:
        if not token:
            raise AuthError("missing token")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.PyJWTError as exc:  # InvalidTokenError, and InvalidKeyError for a key that does not fit
            raise AuthError(f"invalid token: {exc}") from None
        merchant = claims.get("merchantId")
        if not isinstance(merchant, str) or not merchant:
            raise AuthError("invalid token: merchantId claim missing")
        return Claims(user_id=str(claims["sub"]), merchant_id=merchant, expires_at=float(claims["exp"]))


def mint_token(settings: Settings, *, merchant_id: str, user_id: str, ttl: float = 3600) -> str:
    """A development token signed with the configured secret (HS*)."""
    if not settings.jwt_secret:
        raise AuthError("`relay token` needs RELAY_JWT_SECRET")
    algorithm = next((a for a in settings.jwt_algorithms if a.startswith("HS")), None)
    if algorithm is None:
        raise AuthError("`relay token` signs with an HS* algorithm; none is in RELAY_JWT_ALGORITHMS")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "merchantId": merchant_id, "iat": now, "exp": now + int(ttl)}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret, algorithm=algorithm)
