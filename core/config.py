"""Settings: the one place that reads the environment (CONTRACT.md, "Runtime").

Every variable the contract names is a field here; `settings` is imported everywhere else. With neither
`DATABASE_URL` nor `REDIS_URL` set, the service runs on the *embedded default*: a SQLite file under
`DATA_DIR` and Celery's in-memory transport with a worker inside the API process.
"""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration, read from the environment and an optional `.env` file.

    Durations are in seconds. URLs are SQLAlchemy / redis-py URLs.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=False)

    database_url: str | None = Field(
        default=None,
        description="postgresql+psycopg://user:pass@host:5432/db; unset = embedded SQLite",
    )
    redis_url: str | None = Field(
        default=None, description="redis://host:6379/0 (broker, order-event pub/sub); unset = in-memory"
    )
    data_dir: Path = Field(default=Path("./var"), description="Where the embedded SQLite file lives")

    jwt_secret_key: str | None = None
    jwt_expires_seconds: int = Field(default=1800, ge=60)
    first_admin_username: str | None = None
    first_admin_password: str | None = None

    store_rate_limit: str = "100/hour"
    store_require_auth: bool = False
    order_wait_seconds: float = Field(default=10, ge=0, le=60)
    order_sweep_after_seconds: float = Field(default=30, gt=0)
    order_sweep_interval_seconds: float = Field(default=10, gt=0)
    order_max_wait_seconds: float = Field(default=30, gt=0, description="Cap of ?wait=N on GET /orders/{id}")

    # Celery / broker tuning (see docs/operations.md).
    redis_key_prefix: str = Field(
        default="", max_length=64, description="Prefix of every Redis key and channel (shared Redis)"
    )
    broker_visibility_timeout_seconds: int = Field(default=600, ge=10)
    worker_prefetch_multiplier: int = Field(default=1, ge=1)
    worker_send_task_events: bool = Field(
        default=True, description="Task events for Flower (costs CPU per task; see README benchmark)"
    )
    task_max_retries: int = Field(default=5, ge=0)
    task_retry_backoff_max_seconds: int = Field(default=30, ge=1)
    broker_publish_timeout_seconds: float = Field(default=2.0, gt=0)

    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)
    db_pool_pre_ping: bool = Field(
        default=False, description="Test each pooled connection before use (one more round trip)"
    )
    db_statement_timeout_ms: int = Field(default=15000, ge=0)

    flower_basic_auth: str | None = None
    log_level: str = "INFO"
    environment: str = Field(default="production", description="production | development | test")

    @field_validator("database_url", "redis_url", "jwt_secret_key", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def embedded(self) -> bool:
        """True when neither `DATABASE_URL` nor `REDIS_URL` is set (CONTRACT.md, "Runtime")."""
        return self.database_url is None and self.redis_url is None

    @property
    def sqlite_path(self) -> Path:
        return (self.data_dir / "orderflow.sqlite3").resolve()

    @property
    def sync_database_url(self) -> str:
        """URL for the synchronous engine (worker, migrations, CLI)."""
        if self.database_url is None:
            return f"sqlite:///{self.sqlite_path}"
        return self.database_url

    @property
    def async_database_url(self) -> str:
        """URL for the API's asynchronous engine (psycopg 3 async, or aiosqlite when embedded)."""
        if self.database_url is None:
            return f"sqlite+aiosqlite:///{self.sqlite_path}"
        return self.database_url

    @property
    def broker_url(self) -> str:
        return self.redis_url or "memory://"

    @cached_property
    def effective_jwt_secret(self) -> str:
        """The JWT signing key; the embedded default makes a random one per process."""
        return self.jwt_secret_key or secrets.token_urlsafe(48)


settings = Settings()
