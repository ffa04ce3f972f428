"""One root for Relay's errors; retryable and permanent failures are distinct types."""

from __future__ import annotations


class RelayError(Exception):
    """Relay failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(RelayError):
    """A setting is missing or invalid."""


class SetupError(RelayError):
    """The database is not set up for Relay."""


class RetryableError(RelayError):
    """A delivery attempt failed in a way that may succeed later."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(RelayError):
    """A delivery attempt failed in a way that will not succeed by retrying."""
