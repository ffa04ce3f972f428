"""One typed Settings object; nothing else in Relay reads ``os.environ``."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relay.errors import ConfigError
from relay.jwtkeys import algorithm_problem, is_private_key
from relay.pooler import PoolerSetting
from relay.retry import DEFAULT_SCHEDULE, RetrySchedule

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
WEBHOOK_ENDPOINTS_PER_MERCHANT = 50


def _split(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Relay's configuration, read from the environment (see DESIGN.md)."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", frozen=True, populate_by_name=True)

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    listen_database_url: str | None = None
    # Whether DATABASE_URL goes through a transaction pooler (see relay/pooler.py).
    database_pooler: PoolerSetting = "auto"
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    # Validated even when unset: the default HS256 does not suit RELAY_JWT_PUBLIC_KEY.
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(default=["HS256"], validate_default=True)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    vapid_private_key: str | None = None
    vapid_subject: str | None = None
    retry_schedule: Annotated[RetrySchedule, NoDecode] = RetrySchedule.parse(DEFAULT_SCHEDULE)
    reconcile_interval: float = Field(default=30.0, gt=0)
    # Seconds between two looks for new events by the poller (capture mode poll).
    poll_interval: float = Field(default=0.02, gt=0, le=60)
    egress_allow: Annotated[list[IPNetwork], NoDecode] = []
    allowed_origins: Annotated[list[str], NoDecode] = []
    log_format: Literal["text", "json"] = "text"
    # Operational knobs beyond the contract; the defaults suit nearly everyone.
    probe_interval: float = Field(default=2.0, gt=0)
    probe_timeout: float = Field(default=2.0, gt=0)
    reconnect_max_delay: float = Field(default=10.0, gt=0)
    retention_days: float = Field(default=14.0, gt=0)
    endpoint_disable_after_days: float = Field(default=5.0, gt=0)
    # How long a claimed delivery stays with one process without a renewal; a process
    # that dies holding deliveries loses them to the others after at most this long.
    delivery_lease: float = Field(default=25.0, gt=0, le=30.0)
    presence_lease: float = Field(default=10.0, ge=1.0, le=12.0)
    webhook_timeout: float = Field(default=15.0, gt=0)
    # Fairness between tenants: how many of the sender's concurrent sends one merchant, and
    # one destination host, may hold; and how long a DNS lookup may take before the send
    # counts as a failed attempt.
    sends_per_merchant: int = Field(default=32, ge=1)
    sends_per_host: int = Field(default=64, ge=1)
    dns_timeout: float = Field(default=2.0, gt=0, le=30.0)
    # What one tenant may register (refused with 409 past the limit).
    push_subscriptions_per_user: int = Field(default=20, ge=1)
    push_subscriptions_per_merchant: int = Field(default=1000, ge=1)
    webhook_endpoints_per_merchant: int = Field(default=WEBHOOK_ENDPOINTS_PER_MERCHANT, ge=1)
    # Seconds a Socket.IO connection has to connect /notifications with a valid token.
    auth_timeout: float = Field(default=5.0, gt=0)

    _split_lists = field_validator("jwt_algorithms", "allowed_origins", mode="before")(_split)

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        return RetrySchedule.parse(value) if isinstance(value, str) else value

    @field_validator("egress_allow", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        items = _split(value)
        if isinstance(items, list):
            return [ipaddress.ip_network(str(item), strict=False) for item in items]
        return items

    @field_validator("jwt_public_key")
    @classmethod
    def _public_not_private(cls, value: str | None) -> str | None:
        if value is not None and is_private_key(value):
            raise ValueError("holds a private key: give its public key")
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _algorithms_suit_the_key(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value:
            raise ValueError("at least one algorithm is required")
        if any(alg.lower() == "none" for alg in value):
            raise ValueError("'none' is not an acceptable algorithm")
        problem = algorithm_problem(
            value, secret=info.data.get("jwt_secret"), public_key=info.data.get("jwt_public_key")
        )
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("vapid_subject")
    @classmethod
    def _subject_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("mailto:", "https:")):
            raise ValueError("must start with mailto: or https:")
        return value

    @model_validator(mode="after")
    def _default_listen_url(self) -> Settings:
        if self.listen_database_url is None and self.database_url is not None:
            object.__setattr__(self, "listen_database_url", self.database_url)
        return self

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key)

    @property
    def push_enabled(self) -> bool:
        return bool(self.vapid_private_key)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("DATABASE_URL is missing: set it to your PostgreSQL DSN")
        return self.database_url

    @property
    def listen_url(self) -> str:
        return self.listen_database_url or self.require_database_url()


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    if field == "database_url":
        return "DATABASE_URL"
    return f"RELAY_{field.upper()}"


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning a validation failure into one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        name = field if field.isupper() else env_name(field)
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {name}: {message}") from None
