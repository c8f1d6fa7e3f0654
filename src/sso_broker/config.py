"""Settings: every knob is an ``SSO_BROKER_*`` environment variable (also read from ``.env``)."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from sso_broker.redis_client import RedisAddress

if TYPE_CHECKING:  # the identity-provider types are the server's, not the command line's
    from sso_broker.idp.base import AdapterConfig

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/sso-broker.db"
KEY_FILE_NAME = "encryption.keys"

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Settings(BaseSettings):
    """The service's configuration, validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="SSO_BROKER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    database_url: str = DEFAULT_DATABASE_URL
    public_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8000")
    frontend_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:3000")
    sign_in_start_url: AnyHttpUrl | None = None
    sign_in_complete_url: AnyHttpUrl | None = None
    sign_in_error_url: AnyHttpUrl | None = None
    logged_out_url: AnyHttpUrl | None = None
    entra_authority: AnyHttpUrl = AnyHttpUrl("https://login.microsoftonline.com")
    pingone_authority: AnyHttpUrl = AnyHttpUrl("https://auth.pingone.com")
    # Development and tests only: also accept http:// issuers on a loopback host.
    allow_http_issuers: bool = False
    session_audience: str = Field(default="patchworks-dashboard", min_length=1)
    access_token_ttl: int = Field(default=900, ge=60, le=86_400)
    session_max_age: int = Field(default=43_200, ge=300, le=30 * 86_400)
    encryption_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    rate_limit_enabled: bool = True
    log_level: LogLevel = "info"
    # json: one JSON object a line; text: one readable line (a person at a terminal);
    # auto: text when standard error is a terminal, JSON otherwise (files, pipes, collectors).
    log_format: Literal["auto", "json", "text"] = "auto"
    access_log: bool = True
    # Tuning knobs beyond the core settings; each is documented in the README (Configuration).
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_timeout: float = Field(default=5.0, gt=0, le=60)
    http_timeout: float = Field(default=10.0, gt=0, le=120)
    # A provider's circuit breaker (sso/breaker.py): this many timeouts, failed connections
    # or 5xx answers in a row open it (0: never), and its sign-ins then fail at once, but for
    # one probe each time this many seconds have passed.
    idp_breaker_failures: int = Field(default=3, ge=0, le=1000)
    idp_breaker_open_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Rate limits, per minute. Counters live in Redis when SSO_BROKER_REDIS_URL names one,
    # otherwise in the database: either way every replica counts against the same limit.
    redis_url: SecretStr | None = None
    rate_limit_sign_in_per_ip: int = Field(default=60, ge=1)
    rate_limit_sign_in_per_provider: int = Field(default=1200, ge=1)
    rate_limit_token_per_ip: int = Field(default=120, ge=1)
    # Seconds after a refresh token was rotated in which presenting it again answers the
    # same successor instead of ending the session (two tabs, a retried request); 0: off.
    refresh_reuse_grace: int = Field(default=10, ge=0, le=300)
    # Days before a provider's client_secret_expires_at from which it carries the warning
    # client_secret_expiring, and the `expiring-secrets` command's default window.
    secret_expiry_warning_days: int = Field(default=30, ge=0, le=3650)
    # How long a certificate the service makes for private_key_jwt is valid.
    certificate_validity_days: int = Field(default=365, ge=1, le=3650)
    # GET /metrics in Prometheus' text format, and each request's timing for it.
    metrics_enabled: bool = True
    # Seconds between each process's purges of expired login states, codes and refresh
    # tokens (housekeeping.py); 0: none (another process or a cron job must do it then).
    housekeeping_interval: int = Field(default=60, ge=0, le=86_400)
    # After SIGTERM: seconds the requests in flight get to finish before they are cut off.
    shutdown_grace: int = Field(default=20, ge=0, le=3600)

    @field_validator("encryption_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except Exception as e:
            raise ValueError(
                "SSO_BROKER_DATABASE_URL is not a database URL; expected "
                "sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user@host/db"
            ) from e
        if url.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise ValueError(
                f"SSO_BROKER_DATABASE_URL uses driver {url.drivername!r}; use "
                "'sqlite+aiosqlite' (embedded) or 'postgresql+asyncpg' (production)"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                RedisAddress.parse(value.get_secret_value())
            except ValueError as e:  # the message never repeats the URL: it may hold a password
                raise ValueError(
                    f"SSO_BROKER_REDIS_URL is not a Redis URL the service can use ({e}); "
                    "expected redis://[[user]:password@]host[:port][/db], rediss://… (TLS) "
                    "or unix://[[user]:password@]/path/to/socket[?db=N]"
                ) from None
        return value

    @model_validator(mode="after")
    def _check_production_keys(self) -> Settings:
        if not self.is_embedded and not self.encryption_keys:
            raise ValueError(
                "SSO_BROKER_ENCRYPTION_KEYS must be set when the database is not the embedded "
                "SQLite one: every replica needs the same keys. Generate one with "
                "`python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`"
            )
        return self

    @property
    def is_embedded(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @cached_property
    def data_dir(self) -> Path:
        """The embedded database's folder, which also holds the generated key file."""
        database = make_url(self.database_url).database
        if not database or database == ":memory:":
            return Path("var")
        return Path(database).parent

    @property
    def key_file(self) -> Path:
        return self.data_dir / KEY_FILE_NAME

    @cached_property
    def public_base(self) -> str:
        return str(self.public_url).rstrip("/")

    @cached_property
    def frontend_base(self) -> str:
        return str(self.frontend_url).rstrip("/")

    @cached_property
    def frontend_origin(self) -> str:
        return _origin(self.frontend_base)

    @cached_property
    def sign_in_start(self) -> str:
        """Where an initiate without the frontend's PKCE challenge (the My Apps tile, a
        bookmark) sends the browser, so the frontend can make one and come back."""
        if self.sign_in_start_url is not None:
            return str(self.sign_in_start_url)
        return f"{self.frontend_base}/sso/start"

    @cached_property
    def sign_in_complete(self) -> str:
        if self.sign_in_complete_url is not None:
            return str(self.sign_in_complete_url)
        return f"{self.frontend_base}/sso/complete"

    @cached_property
    def sign_in_error(self) -> str:
        if self.sign_in_error_url is not None:
            return str(self.sign_in_error_url)
        return f"{self.frontend_base}/sso/error"

    @cached_property
    def logged_out(self) -> str:
        if self.logged_out_url is not None:
            return str(self.logged_out_url)
        return f"{self.frontend_base}/sso/logged-out"

    @cached_property
    def entra_authority_base(self) -> str:
        return str(self.entra_authority).rstrip("/")

    @cached_property
    def adapter_config(self) -> AdapterConfig:
        from sso_broker.idp.base import AdapterConfig

        return AdapterConfig(
            entra_authority=self.entra_authority_base,
            pingone_authority=str(self.pingone_authority).rstrip("/"),
            allow_http_issuers=self.allow_http_issuers,
        )

    @cached_property
    def trusted_idp_hosts(self) -> frozenset[str]:
        """The identity-provider hosts the operator named, trusted whatever they resolve to."""
        return frozenset(
            host.lower()
            for host in (self.entra_authority.host, self.pingone_authority.host)
            if host
        )

    @property
    def secure_cookies(self) -> bool:
        return self.public_base.startswith("https://")

    @property
    def logging_level(self) -> int:
        return logging.getLevelNamesMapping()[self.log_level.upper()]
