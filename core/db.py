"""Database plumbing: the declarative base, engines and session factories.

The API uses an `AsyncEngine` (psycopg 3 async, or aiosqlite on the embedded default); the worker, the
CLI and the migrations use a synchronous `Engine` on the same database. Domain services are written once,
against a synchronous `Session`; the API runs them with `AsyncSession.run_sync`, so the worker and the
API share one code path (docs/architecture.md).

Sessions commit at the edge only (STYLE.md rule 1): `session_scope()` here for tasks and the CLI,
`api.deps.get_session` for requests.
"""

from __future__ import annotations

import asyncio
import logging
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Self

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import DateTime, Engine, MetaData, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from core import uow
from core.config import Settings, settings

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that always comes back in UTC, on PostgreSQL and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def on_postgresql(session: Session | AsyncSession) -> bool:
    """Whether `session` is bound to PostgreSQL; otherwise it runs on SQLite, the embedded default
    (CONTRACT.md, "Runtime"). The one test repositories use where the two dialects need different
    SQL; it reads the bind without starting a transaction."""
    return session.get_bind().dialect.name == "postgresql"


def dialect_insert(session: Session) -> Callable[[Any], postgresql.Insert | sqlite.Insert]:
    """The `insert()` construct of `session`'s dialect (PostgreSQL's or SQLite's), the two that have
    `on_conflict_do_nothing()` and `on_conflict_do_update()`: an `INSERT ... ON CONFLICT` written once
    runs on both."""
    return postgresql.insert if on_postgresql(session) else sqlite.insert


def pg_array(values: Iterable[int | str | None]) -> str:
    """`values` as one PostgreSQL array literal (`{1,2,NULL,"a \\"b\\""}`), to bind as a single text
    parameter and cast in SQL (`CAST(:ids AS integer[])`). psycopg adapts a Python list element by
    element in Python, about 3 µs per element on this project's machines; this string costs a
    fraction of that and PostgreSQL parses it in C. Strings are always quoted, with backslashes and
    double quotes escaped (the array input syntax of the PostgreSQL manual, "Arrays"); None is NULL."""
    return "{" + ",".join(_array_element(value) for value in values) + "}"


def _array_element(value: int | str | None) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def connect_options(cfg: Settings = settings) -> dict[str, Any]:
    """libpq parameters of every PostgreSQL connection orderflow opens (engines and the statement
    pool): `connect_timeout` (seconds) and, in `options`, the session's `statement_timeout` and
    `lock_timeout` (milliseconds; 0 leaves PostgreSQL's default, none). They travel in the startup
    packet, so they cost no round trip. A statement cancelled by them raises
    `psycopg.errors.QueryCanceled` or `psycopg.errors.LockNotAvailable` (SQLSTATE 57014, 55P03),
    which the HTTP edge answers as a 500 and the worker retries as a transient fault."""
    settings_sent = [
        f"-c {name}={value}"
        for name, value in (
            ("statement_timeout", cfg.db_statement_timeout_ms),
            ("lock_timeout", cfg.db_lock_timeout_ms),
        )
        if value
    ]
    options: dict[str, Any] = {"connect_timeout": cfg.db_connect_timeout_seconds}
    if settings_sent:
        options["options"] = " ".join(settings_sent)
    return options


def closed_by_server(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """True when an idle connection can no longer be used: it is closed or broken, or its socket is
    readable. An idle connection has nothing to read unless the server spoke first, and what a server
    says unasked on an idle session is its goodbye: the FATAL error of `pg_terminate_backend`, of a
    shutdown or of `idle_session_timeout`, or the end of the stream. One `poll()` system call with a
    zero timeout: no round trip to the server (unlike `pool_pre_ping`, SQLAlchemy's "pessimistic"
    disconnect handling)."""
    if conn.closed or conn.broken:
        return True
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK:
        return True
    try:
        fd = pgconn.socket
    except psycopg.OperationalError:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def _skip_closed_connections(engine: Engine) -> None:
    """On checkout, a pooled connection the server closed is replaced by a new one (the pool
    reconnects and retries the checkout when a `checkout` listener raises `DisconnectionError`), so
    that a PostgreSQL restart or a terminated backend costs no request an error."""
    if engine.dialect.name != "postgresql":
        return

    @event.listens_for(engine, "checkout")
    def _on_checkout(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if closed_by_server(record.driver_connection):
            raise DisconnectionError("the server closed this pooled connection")


def _engine_kwargs(cfg: Settings, url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        cfg.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return {"connect_args": {"timeout": 30}}
    return {
        "pool_size": cfg.db_pool_size,
        "max_overflow": cfg.db_max_overflow,
        "pool_timeout": cfg.db_pool_timeout_seconds,
        "pool_pre_ping": cfg.db_pool_pre_ping,
        "pool_recycle": cfg.db_pool_recycle_seconds,
        "connect_args": connect_options(cfg),
    }


def _tune_sqlite(engine: Engine) -> None:
    """SQLite for the embedded default: WAL, foreign keys, and real transactions.

    The sqlite3 driver starts a transaction only before a write, so `SELECT ... FOR UPDATE` (which
    SQLite ignores) would lock nothing and two sessions could both read an order as `pending`.
    Every transaction here begins with `BEGIN IMMEDIATE` instead, taking SQLite's single write
    lock up front: transactions run one at a time, which is what the row locks achieve on
    PostgreSQL (SQLAlchemy's documented recipe for pysqlite/aiosqlite transactions).
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver must not issue its own BEGIN
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_sync_engine(cfg: Settings = settings) -> Engine:
    engine = create_engine(cfg.sync_database_url, **_engine_kwargs(cfg, cfg.sync_database_url))
    _tune_sqlite(engine)
    _skip_closed_connections(engine)
    return engine


def make_async_engine(cfg: Settings = settings, **options: Any) -> AsyncEngine:
    """The API's engine; `options` go to `create_async_engine` (e.g. `isolation_level`)."""
    kwargs = {**_engine_kwargs(cfg, cfg.async_database_url), **options}
    engine = create_async_engine(cfg.async_database_url, **kwargs)
    _tune_sqlite(engine.sync_engine)
    _skip_closed_connections(engine.sync_engine)
    return engine


def make_async_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


# --- single statements on the hot path --------------------------------------------------------------


class StatementPool(AsyncConnectionPool):
    """psycopg's `AsyncConnectionPool` with two changes for the request path.

    * It never hands out a connection the server closed (`closed_by_server`, no round trip): such a
      connection is closed and given back, the pool opens a replacement, and the next one is tried,
      within the same `timeout`. (psycopg_pool's own `check` hook would put a connection that only
      looks idle back in the pool and back off for a second or more between tries.)
    * While the server refuses connections, a request fails at once instead of waiting out `timeout`.
      psycopg_pool reconnects in the background with a growing backoff (1, 2, 4 s, ...), and a
      request that finds no idle connection waits in its queue. Once a connection attempt has failed
      (`outage` holds its error), a request that finds no idle connection, or is waiting for one,
      opens a connection of its own: while the server is down its refusal is the request's error
      (`psycopg.OperationalError`, the 500 of CONTRACT.md "Errors") within the connect, and once the
      server is back that connection serves the request and is closed when given back. The outage
      ends when the pool itself has a new connection again (`configure`), so no request waits out
      the pool's backoff after the server is back.
    """

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        #: The error of the latest failed connection attempt; None once the pool has reconnected.
        self.outage: psycopg.OperationalError | None = None
        self._outage_began = asyncio.Event()
        self._own: set[psycopg.AsyncConnection[Any]] = set()
        self._probe: asyncio.Future[None] | None = None
        self._conninfo = conninfo
        self._options: dict[str, Any] = dict(kwargs.get("kwargs") or {})
        pool = self

        class Connection(psycopg.AsyncConnection[Any]):
            """Tells the pool of every failed connection attempt (the pool's own and the requests')."""

            @classmethod
            async def connect(cls, conninfo: str = "", **options: Any) -> Self:
                try:
                    return await super().connect(conninfo, **options)
                except psycopg.OperationalError as exc:
                    pool._connect_failed(exc)
                    raise

        super().__init__(conninfo, connection_class=Connection, configure=self._pool_connected, **kwargs)

    def _connect_failed(self, exc: psycopg.OperationalError) -> None:
        if self.outage is None:
            log.warning(
                "%s: the database refuses connections; requests fail at once until it is back", self.name
            )
        self.outage = exc
        self._outage_began.set()

    async def _pool_connected(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """psycopg_pool's `configure` hook: the pool made a connection, so the outage is over."""
        if self.outage is not None:
            log.warning("%s: the database accepts connections again", self.name)
        self.outage = None
        self._outage_began.clear()

    def _idle(self) -> bool:
        """Whether a connection waits in the pool (psycopg_pool's `pool_available`)."""
        return self.get_stats().get(self._POOL_AVAILABLE, 0) > 0

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:  # noqa: ASYNC109 - psycopg_pool's signature
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if self.outage is not None and not self._idle():
                return await self._connect_own()
            conn = await self._pooled(max(0.0, deadline - time.monotonic()))
            if conn is None:  # a connection attempt failed while this request waited
                continue
            if not closed_by_server(conn):
                return conn
            await conn.close()
            await self.putconn(conn)  # closed: the pool drops it and opens a replacement

    async def _pooled(self, within: float) -> psycopg.AsyncConnection[Any] | None:
        """A connection of the pool within `within` seconds (else psycopg_pool's `PoolTimeout`), or
        None when a connection attempt fails while the request waits for one."""
        if self._idle():
            return await super().getconn(within)
        waiting = asyncio.ensure_future(super().getconn(within))
        failed = asyncio.ensure_future(self._outage_began.wait())
        try:
            await asyncio.wait((waiting, failed), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            waiting.cancel()  # psycopg_pool gives back a connection handed to a cancelled waiter
            raise
        finally:
            failed.cancel()
        if not waiting.done():
            waiting.cancel()
            await asyncio.wait((waiting,))
            if waiting.cancelled() or waiting.exception() is not None:
                return None
        return waiting.result()

    async def _connect_own(self) -> psycopg.AsyncConnection[Any]:
        """A connection outside the pool (closed by `putconn`); raises the server's refusal. One
        attempt at a time: while one is on its way, the others wait for its outcome and share its
        refusal, so a server that does not answer at all (`DB_CONNECT_TIMEOUT_SECONDS` per attempt)
        costs one attempt, not one per request. Once one succeeds, the pool is asked to grow if it has
        given up reconnecting (psycopg_pool stops after `reconnect_timeout` and tries again only when
        asked)."""
        if self._probe is not None:
            await asyncio.shield(self._probe)  # raises the refusal the attempt on its way met
            conn = await self.connection_class.connect(self._conninfo, **self._options)
        else:
            probe = self._probe = asyncio.get_running_loop().create_future()
            probe.add_done_callback(_retrieved)
            try:
                conn = await self.connection_class.connect(self._conninfo, **self._options)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    probe.set_exception(exc)
                else:
                    probe.cancel()
                raise
            finally:
                self._probe = None
            probe.set_result(None)
        try:
            await self.check()  # no connection in the pool to check: only its `_maybe_grow_pool`
        except BaseException:
            await conn.close()
            raise
        self._own.add(conn)
        return conn

    async def putconn(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn in self._own:
            self._own.discard(conn)
            await conn.close()
            return
        await super().putconn(conn)


def _retrieved(future: asyncio.Future[None]) -> None:
    """Marks a future's exception as retrieved (asyncio logs one that nobody awaited)."""
    _ = future.cancelled() or future.exception()


def libpq_dsn(database_url: str) -> str:
    """`DATABASE_URL` (SQLAlchemy's form, `postgresql+psycopg://...`) as libpq and psycopg read it
    (`postgresql://...`), password included."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_statement_pool(cfg: Settings = settings) -> StatementPool | None:
    """A psycopg pool of autocommit connections for the API's single-statement writes (order intake):
    no ORM session, no transaction to begin or end, statements prepared by psycopg on each connection
    after their first uses. At most `DB_POOL_SIZE` connections (a request waits for a free one rather
    than opening more: each costs a PostgreSQL backend), for at most `DB_POOL_TIMEOUT_SECONDS`
    (then `psycopg_pool.PoolTimeout`). A connection the server closed is never handed out
    (`StatementPool`), and reconnection attempts after an outage give up after
    `DB_POOL_TIMEOUT_SECONDS`, so that the next request starts a new one at once instead of waiting
    out the pool's growing backoff. None on SQLite. Open it with `await pool.open()`."""
    if cfg.database_url is None:
        return None
    return StatementPool(
        libpq_dsn(cfg.database_url),
        min_size=min(4, cfg.db_pool_size),
        max_size=cfg.db_pool_size,
        kwargs={"autocommit": True, **connect_options(cfg)},
        timeout=cfg.db_pool_timeout_seconds,
        reconnect_timeout=cfg.db_pool_timeout_seconds,
        max_lifetime=cfg.db_pool_recycle_seconds,
        open=False,
        name="orderflow-statements",
    )


_lock = threading.Lock()
_sync_engine: Engine | None = None
_sync_sessionmaker: sessionmaker[Session] | None = None


def get_sync_engine() -> Engine:
    """The process-wide synchronous engine (created on first use, after a fork too)."""
    global _sync_engine, _sync_sessionmaker
    with _lock:
        if _sync_engine is None:
            _sync_engine = make_sync_engine(settings)
            _sync_sessionmaker = sessionmaker(_sync_engine, expire_on_commit=False, autoflush=False)
        return _sync_engine


def dispose_sync_engine() -> None:
    """Drop the pooled connections (used after a fork: a child must not share its parent's sockets)."""
    global _sync_engine, _sync_sessionmaker
    with _lock:
        if _sync_engine is not None:
            _sync_engine.dispose(close=False)
        _sync_engine = None
        _sync_sessionmaker = None


@contextmanager
def session_scope() -> Iterator[Session]:
    """A synchronous unit of work: a session that commits when the block ends, then runs the
    transaction's after-commit effects (`core.uow.run_sync`), and rolls back on any exception (the
    effects are then dropped)."""
    get_sync_engine()
    assert _sync_sessionmaker is not None
    session = _sync_sessionmaker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    uow.run_sync(uow.take_effects(session))
