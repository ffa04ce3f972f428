"""VAPID (RFC 8292): the application server's key pair and cached ``Authorization`` headers."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from relay.config import Settings
from relay.errors import ConfigError

# A token lives 12 h (RFC 8292 allows at most 24 h) and is re-signed one hour before
# it expires, so a push service never sees one about to lapse.
TOKEN_LIFETIME = 12 * 3600
REFRESH_BEFORE = 3600
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
KEY_HELP = "must be a base64url raw 32-byte P-256 private key, as printed by `relay vapid-keys`"


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url (``-`` and ``_``); padding optional. Raises ValueError."""
    stripped = text.rstrip("=")
    if not stripped or len(text) - len(stripped) > 2:
        raise ValueError("not base64url")
    try:
        return base64.b64decode(stripped + "=" * (-len(stripped) % 4), altchars=b"-_", validate=True)
    except binascii.Error:
        raise ValueError("not base64url") from None


def public_key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def generate_key_pair() -> tuple[str, str]:
    """A new VAPID key pair: (base64url raw 32-byte private key, base64url 65-byte public point)."""
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    return b64url_encode(raw), b64url_encode(public_key_bytes(key))


def parse_private_key(text: str) -> ec.EllipticCurvePrivateKey:
    """The key of ``RELAY_VAPID_PRIVATE_KEY``; ConfigError with one clear line otherwise."""
    try:
        raw = b64url_decode(text.strip())
        if len(raw) != 32:
            raise ValueError(f"decodes to {len(raw)} bytes, not 32")
        scalar = int.from_bytes(raw, "big")
        if not 0 < scalar < P256_ORDER:  # checked here: older cryptography releases reduce it
            raise ValueError("not a P-256 private scalar (zero, or not below the curve order)")
        return ec.derive_private_key(scalar, ec.SECP256R1())
    except ValueError as exc:
        raise ConfigError(f"invalid setting RELAY_VAPID_PRIVATE_KEY: {KEY_HELP} ({exc})") from None


def subject_problem(subject: str) -> str | None:
    """Why ``subject`` is not a usable VAPID contact (RFC 8292: a mailto: or https: URI)."""
    if subject.startswith("mailto:"):
        local, _, domain = subject.removeprefix("mailto:").partition("@")
        if not local or not domain or any(c.isspace() for c in subject):
            return "a mailto: subject needs an address, e.g. mailto:ops@example.com"
        return None
    if subject.startswith("https:"):
        if not urlsplit(subject).hostname:
            return "an https: subject needs a host, e.g. https://example.com/contact"
        return None
    return "must start with mailto: or https:"


def origin_of(url: str) -> str:
    """The push service origin, the ``aud`` of its VAPID token: scheme://host[:port]."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    port = f":{parts.port}" if parts.port is not None and parts.port != default_port else ""
    return f"{parts.scheme}://{host}{port}"


@dataclass(frozen=True, slots=True)
class _Cached:
    header: str
    expires_at: float


class VapidSigner:
    """Signs VAPID tokens with py-vapid, one per push-service origin, cached until shortly
    before they expire (signing costs an ECDSA signature; most sends reuse a header)."""

    def __init__(
        self,
        private_key: ec.EllipticCurvePrivateKey,
        subject: str,
        *,
        lifetime: float = TOKEN_LIFETIME,
        refresh_before: float = REFRESH_BEFORE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < lifetime <= 24 * 3600 or not 0 <= refresh_before < lifetime:
            raise ValueError("VAPID token lifetime must be within 24 h and exceed the refresh margin")
        # Our own subject check (subject_problem) replaces py-vapid's, which refuses https
        # subjects with a path although RFC 8292 allows any https URL.
        self._vapid = Vapid02(private_key, conf={"no-strict": True})
        self.subject = subject
        self.public_key = b64url_encode(public_key_bytes(private_key))
        self._lifetime = lifetime
        self._refresh_before = refresh_before
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self.signatures = 0  # how many tokens were signed (the rest came from the cache)

    @classmethod
    def from_settings(cls, settings: Settings) -> VapidSigner:
        """The signer for the configured key and subject; ConfigError naming the bad variable."""
        if not settings.vapid_private_key:
            raise ConfigError("RELAY_VAPID_PRIVATE_KEY is missing: Web Push is off")
        key = parse_private_key(settings.vapid_private_key)
        if not settings.vapid_subject:
            raise ConfigError(
                "RELAY_VAPID_SUBJECT is missing: set a mailto: or https: contact (required with "
                "RELAY_VAPID_PRIVATE_KEY)"
            )
        problem = subject_problem(settings.vapid_subject)
        if problem:
            raise ConfigError(f"invalid setting RELAY_VAPID_SUBJECT: {problem}")
        return cls(key, settings.vapid_subject)

    def header_for(self, endpoint: str) -> str:
        """The ``Authorization: vapid t=…,k=…`` value for a subscription endpoint."""
        origin = origin_of(endpoint)
        now = self._clock()
        cached = self._cache.get(origin)
        if cached is not None and now < cached.expires_at - self._refresh_before:
            return cached.header
        expires_at = int(now + self._lifetime)
        signed = self._vapid.sign({"aud": origin, "sub": self.subject, "exp": expires_at})
        header = str(signed["Authorization"])
        self._cache[origin] = _Cached(header, expires_at)
        self.signatures += 1
        return header
