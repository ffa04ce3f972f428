"""One root for Relay's errors. Whether a delivery is retried or given up is an ``Outcome``
kind, decided in one place per destination kind (see ``relay.destinations``)."""

from __future__ import annotations


class RelayError(Exception):
    """Relay failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(RelayError):
    """A setting is missing or invalid."""


class SetupError(RelayError):
    """The database is not set up for Relay."""


class SourceError(RelayError):
    """`relay attach` or `relay detach` refused."""


class CaptureError(RelayError):
    """`relay capture` refused."""
