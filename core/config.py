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

#: Shortest JWT_SECRET_KEY accepted, in bytes (the HS256 output size).
MIN_JWT_SECRET_BYTES = 32


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

    jwt_secret_key: str | None = Field(
        default=None, description="HS256 signing key, at least 32 bytes; unset = random (embedded only)"
    )
    jwt_expires_seconds: int = Field(default=1800, ge=60, le=86_400 * 30)
    first_admin_username: str | None = None
    first_admin_password: str | None = None
    bcrypt_rounds: int = Field(default=12, ge=4, le=16, description="bcrypt cost (log2 of rounds)")
    auth_cache_seconds: float = Field(
        default=300,
        ge=0,
        description="How long a verified Basic credential is remembered; 0 = bcrypt on every request",
    )
    auth_cache_max_entries: int = Field(default=10_000, ge=1)
    auth_user_cache_seconds: float = Field(
        default=5,
        ge=0,
        le=300,
        description=(
            "How long a bearer token's user (role, last password change, existence) is remembered per "
            "process: a password change or a deleted user ends older tokens, and a role change takes "
            "effect, within this bound; 0 = read on every request"
        ),
    )

    store_rate_limit: str = "100/hour"
    store_require_auth: bool = Field(
        default=False,
        description="Store routes need the core API's credentials, and a manager only their manager_id",
    )
    store_cache_seconds: float = Field(
        default=300, ge=0, description="TTL of a cached store listing; 0 = no listing cache"
    )
    order_wait_seconds: float = Field(default=10, ge=0, le=60)
    order_sweep_after_seconds: float = Field(default=30, gt=0)
    order_sweep_interval_seconds: float = Field(default=10, gt=0)
    order_max_wait_seconds: float = Field(default=30, gt=0, description="Cap of ?wait=N on GET /orders/{id}")

    # At most one batch per window and API process (an idle process sends at once, api.dispatch).
    # 20 ms: at half the peak rate a 5 ms window sent most orders as one-order tasks, and the
    # workers' per-task cost queued them (submit->confirmed p99 177-273 ms against 42-60 ms with
    # 20 ms, and 15-20% more CPU per order; docs/performance.md, "Dispatch window").
    dispatch_window_seconds: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Seconds between the starts of an API process's reserve_orders tasks, at least",
    )
    dispatch_max_batch: int = Field(default=100, ge=1, le=1000, description="Most order ids in one task")
    # Group commit of the intake (core.orders.intake.IntakeBatcher, PostgreSQL only): an intake that
    # finds fewer than INTAKE_MAX_STATEMENTS intake statements running runs alone at once; the others
    # queue and go together in the next statement (docs/performance.md, "Group commit of the intake").
    # One statement at a time: at half the peak rate, two let most intakes run alone, one statement
    # each (docs/performance.md, "One intake statement at a time").
    intake_max_batch: int = Field(
        default=64, ge=1, le=1000, description="Most orders one intake statement stores (1: one order each)"
    )
    intake_max_statements: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Intake statements an API process runs at once (at most DB_POOL_SIZE)",
    )
    redis_effect_timeout_seconds: float = Field(
        default=0.25,
        gt=0,
        description="How long a request waits on Redis for an after-commit effect (invalidation, event)",
    )

    redis_timeout_seconds: float = Field(
        default=0.25,
        gt=0,
        le=5,
        description="Longest a request waits on Redis for one step (the store rate limit check, a "
        "listing cache lookup or store, the readiness ping); after a failed step the process skips "
        "them for 1 s (core.redisconn)",
    )
    redis_socket_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="Connect and read timeout of orderflow's own Redis clients (API and workers); a "
        "timed-out command is not retried",
    )

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

    # PostgreSQL limits (docs/operations.md, "Limits"). The timeouts are sent with each new
    # connection (libpq `options`), so they cost no round trip.
    db_pool_size: int = Field(
        default=10, ge=1, description="Connections each pool keeps (per process: two engines in the API)"
    )
    db_max_overflow: int = Field(
        default=20, ge=0, description="Extra connections an engine opens under load, closed when returned"
    )
    db_pool_timeout_seconds: float = Field(
        default=10, gt=0, description="Longest a request or task waits for a free pooled connection"
    )
    db_pool_recycle_seconds: int = Field(
        default=1800, ge=60, description="Pooled connections older than this are replaced by new ones"
    )
    db_pool_pre_ping: bool = Field(
        default=False,
        description="Ask the server before each checkout (one more round trip); off by default: a "
        "connection the server closed is found without one (core.db)",
    )
    db_connect_timeout_seconds: int = Field(
        default=5, ge=2, le=300, description="libpq connect_timeout of every new connection"
    )
    db_statement_timeout_ms: int = Field(
        default=15000, ge=0, description="PostgreSQL statement_timeout of every session; 0 = none"
    )
    db_lock_timeout_ms: int = Field(
        default=5000, ge=0, description="PostgreSQL lock_timeout of every session; 0 = none"
    )

    # HTTP (docs/operations.md, "Limits")
    http_keep_alive_seconds: int = Field(
        default=65,
        ge=1,
        le=3600,
        description="How long `orderflow serve` keeps an idle HTTP/1.1 connection open (uvicorn's "
        "timeout_keep_alive); above the 60 s idle timeout of common load balancers and proxies, so "
        "that they, not the API, close idle connections",
    )

    flower_basic_auth: str | None = None
    log_level: str = "INFO"
    environment: str = Field(default="production", description="production | development | test")

    @field_validator(
        "database_url",
        "redis_url",
        "jwt_secret_key",
        "first_admin_username",
        "first_admin_password",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("store_rate_limit")
    @classmethod
    def _one_rate_limit(cls, value: str) -> str:
        """`STORE_RATE_LIMIT` must be exactly one limit in the `limits` notation (`100/hour`,
        `10 per minute`, `1000/2 hours`) with an amount of at least 1: a bad value stops start-up
        instead of leaving the store API unlimited or closed."""
        from limits import parse_many

        try:
            items = parse_many(value)
        except ValueError:
            items = []
        if len(items) != 1 or items[0].amount < 1:
            raise ValueError(
                f"STORE_RATE_LIMIT must be one rate limit such as '100/hour' or '10 per minute' "
                f"(an amount of at least 1 per second, minute, hour, day, month or year); got {value!r}"
            )
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

    def check_auth_settings(self) -> list[str]:
        """Problems that must stop the API from starting (empty when there are none):

        * outside the embedded default, `JWT_SECRET_KEY` must be set and at least 32 bytes long
          (RFC 7518, section 3.2: an HS256 key at least as long as the hash output);
        * `FIRST_ADMIN_USERNAME` and `FIRST_ADMIN_PASSWORD` are set together or not at all.
        """
        problems = []
        if self.jwt_secret_key is None and not self.embedded:
            problems.append("JWT_SECRET_KEY is not set (generate one: openssl rand -base64 48)")
        elif self.jwt_secret_key is not None and len(self.jwt_secret_key.encode()) < MIN_JWT_SECRET_BYTES:
            problems.append(f"JWT_SECRET_KEY is shorter than {MIN_JWT_SECRET_BYTES} bytes")
        if (self.first_admin_username is None) != (self.first_admin_password is None):
            problems.append("FIRST_ADMIN_USERNAME and FIRST_ADMIN_PASSWORD must be set together")
        return problems


settings = Settings()
