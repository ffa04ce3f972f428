"""JWT verification for every token-protected route (pyjwt, algorithms pinned by settings)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from relay.config import Settings
from relay.errors import RelayError


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


class TokenVerifier:
    """Verifies tokens with the configured key; ``none`` and algorithm confusion are refused.

    pyjwt only accepts the algorithms it is given, and the settings only allow algorithms
    the key suits (see :func:`relay.jwtkeys.algorithm_problem`), so a token signed with HS256 using a
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
