"""Test set-up: a real PostgreSQL database built by Alembic and a real Redis (CONTRACT.md; STYLE.md
rule 7). A service that cannot be reached fails the run; nothing is skipped.

The test database and Redis db are chosen here, before any orderflow module reads its settings:
`TEST_DATABASE_URL` / `TEST_REDIS_URL` override the defaults below.
"""

from __future__ import annotations

import os
import sys

ADMIN_DSN = os.environ.get("TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# Unique per run, so that concurrent runs on one machine never share a database or a queue.
RUN_ID = f"{os.getpid()}"
TEST_DB = os.environ.get("TEST_DATABASE_NAME", f"orderflow_test_{RUN_ID}")
os.environ["REDIS_KEY_PREFIX"] = f"test{RUN_ID}:"
os.environ["DATABASE_URL"] = os.environ.get(
    "TEST_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:5432/{TEST_DB}"
)
os.environ["REDIS_URL"] = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The run starts many Python processes (Celery workers, API servers, the CLI): let each read and
# write the bytecode of orderflow's own modules instead of compiling them again, even where the
# environment turns caches off (PYTHONDONTWRITEBYTECODE). The dependencies' bytecode comes from
# `uv sync` (`compile-bytecode` in pyproject.toml).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ["ENVIRONMENT"] = "test"
os.environ["LOG_LEVEL"] = "WARNING"
os.environ["ORDER_SWEEP_INTERVAL_SECONDS"] = "3600"  # sweeps are run by the tests themselves
os.environ["JWT_SECRET_KEY"] = "test-secret-key-of-at-least-32-bytes-long"
# Smaller pools than a production process keeps: a parallel run (`-n 4`) holds four test processes,
# their API apps, Celery workers and servers on one PostgreSQL (max_connections 100 by default).
os.environ.setdefault("DB_POOL_SIZE", "4")
os.environ.setdefault("DB_MAX_OVERFLOW", "6")
os.environ["BCRYPT_ROUNDS"] = "4"  # the cost is a setting; tests that measure it set their own
for _name in ("FIRST_ADMIN_USERNAME", "FIRST_ADMIN_PASSWORD", "STORE_REQUIRE_AUTH"):
    os.environ.pop(_name, None)

import asyncio  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from base64 import b64encode  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import cache  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import psycopg  # noqa: E402
import pytest  # noqa: E402
import redis  # noqa: E402
from psycopg import sql as pgsql  # noqa: E402
from sqlalchemy import event  # noqa: E402

from core import redisconn  # noqa: E402
from core.config import settings  # noqa: E402
from core.db import get_sync_engine, libpq_dsn  # noqa: E402
from core.users.models import Role  # noqa: E402
from core.users.security import Principal, hash_password, issue_token  # noqa: E402
from tests.celery_workers import worker_args  # noqa: E402
from tests.coverage_env import without_greenlets  # noqa: E402
from workers.celery_app import ORDERS_QUEUE, ORDERS_QUEUE_KEY  # noqa: E402

#: Worker subprocess logs of this run; removed at the end unless the run failed.
LOG_DIR = Path(tempfile.mkdtemp(prefix=f"orderflow-tests-{RUN_ID}-"))

#: `REDIS_TIMEOUT_SECONDS` of the test apps that check the store rate limit (its headers or its 429):
#: a Redis step may take longer than the default 0.25 s on a loaded CI machine, and a skipped check
#: answers without its headers and never 429.
LOADED_REDIS_TIMEOUT_SECONDS = 2.0

#: Set while the session's `celery_worker` runs (it consumes the orders queue between tests).
_session_worker_running = False

TABLES = ["audit_log", "stock_movements", "idempotency_keys", "order_lines", "orders", "products", "users"]

#: The admin every test starts with (id 1); the `client` fixture acts as this user.
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin-password"


def _require_services() -> None:
    try:
        with psycopg.connect(ADMIN_DSN, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{TEST_DB}"')
    except psycopg.Error as exc:
        pytest.exit(f"PostgreSQL is required for the tests and is unreachable: {exc}", returncode=3)
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.exit(f"Redis is required for the tests and is unreachable: {exc}", returncode=3)


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[None]:
    """A fresh database, migrated to head by Alembic (never create_all)."""
    _require_services()
    from core.migrate import upgrade

    upgrade()
    yield
    if _reset_connection is not None:
        _reset_connection.close()
    get_sync_engine().dispose()
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


_redis_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    """This test process's client of the test Redis db (one pool for every test's clean-up)."""
    global _redis_client
    if _redis_client is None:
        _redis_client = redis.Redis.from_url(settings.redis_url)
    return _redis_client


def _wait_for_empty_queue(timeout: float = 5) -> None:
    """Block (at most `timeout` seconds) until the session's worker has taken every message of an
    earlier test from the orders queue, so that it does not reserve a new order that reused its id.
    Without a session worker nothing consumes the queue: `_clear_redis` drops what is left."""
    if not _session_worker_running:
        return
    deadline = time.monotonic() + timeout
    while _redis().llen(ORDERS_QUEUE_KEY) and time.monotonic() < deadline:
        time.sleep(0.01)


@cache
def _reset_sql() -> str:
    """The clean-up of `_empty_tables` as one multi-statement script (one round trip, sent with the
    simple query protocol): every table emptied and its id sequence restarted, then the admin of
    `ADMIN` inserted (id 1), in one transaction."""
    admin = pgsql.Literal(_hash(ADMIN_PASSWORD)).as_string()
    statements = [
        "BEGIN",
        "SET LOCAL deadlock_timeout = '20ms'",
        f"LOCK TABLE {', '.join(TABLES)} IN ACCESS EXCLUSIVE MODE",
        # children first: the foreign keys are checked per statement
        *(f"DELETE FROM {table}" for table in TABLES),
        *(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 1, false)" for table in TABLES),
        "INSERT INTO users (username, password_hash, role, created_at, updated_at, password_changed_at)"
        f" VALUES ('{ADMIN_USERNAME}', {admin}, 'admin', now(), now(), now())",
        "COMMIT",
    ]
    return ";\n".join(statements)


_reset_connection: psycopg.Connection | None = None


def _empty_tables() -> None:
    """Empty every table, restart its id sequence (as `TRUNCATE ... RESTART IDENTITY` would, for
    1 ms instead of 15-25 ms) and insert the admin, in one round trip on a connection this test
    process keeps. The ACCESS EXCLUSIVE locks make it wait, like TRUNCATE, for a worker transaction
    still running from the previous test, and the DELETEs then see everything it wrote. That worker
    can hold a lock this needs while waiting for one this took: PostgreSQL then aborts one of them.
    The deadlock check runs after 20 ms here instead of the server's 1 s, and the emptying is
    retried; so is it, on a new connection, when a test restarted PostgreSQL meanwhile."""
    global _reset_connection
    script = _reset_sql()
    for attempt in range(20):
        if _reset_connection is None or _reset_connection.closed:
            _reset_connection = psycopg.connect(libpq_dsn(settings.database_url), autocommit=True)
        try:
            _reset_connection.execute(script)  # type: ignore[arg-type]  # a fixed script, no parameters
            return
        except psycopg.errors.DeadlockDetected:
            _reset_connection.execute("ROLLBACK")
            if attempt == 19:
                raise
            time.sleep(0.02)
        except psycopg.OperationalError:  # the connection was lost (a test restarted PostgreSQL)
            _reset_connection.close()
            if attempt == 19:
                raise


#: True while the tables hold only what `_empty_tables` left: set by it, kept by `rolled_back` tests
#: (whose writes are rolled back), cleared by any other test that touches the database.
_tables_clean = False


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts with empty tables (but the admin) and an empty Redis db; a test marked
    `pure` touches neither and gets no database at all. A test marked `rolled_back` runs in one
    transaction that its `db` fixture rolls back, so the tables are emptied before it only when a
    test before it may have committed."""
    global _tables_clean
    if request.node.get_closest_marker("pure") is not None:
        yield
        return
    request.getfixturevalue("database")
    _wait_for_empty_queue()
    rolled_back = request.node.get_closest_marker("rolled_back") is not None
    if not (rolled_back and _tables_clean):
        _empty_tables()
    _tables_clean = rolled_back
    _clear_redis()
    redisconn.reset_availability()
    if not rolled_back:
        yield
        return
    # A commit of this process's engine (a `session_scope()` beside the `db` session) is real: the
    # next test empties the tables after all. (The `db` session's own commits release savepoints.)
    engine = get_sync_engine()
    event.listen(engine, "commit", _committed)
    try:
        yield
    finally:
        event.remove(engine, "commit", _committed)


def _committed(_connection: object) -> None:
    global _tables_clean
    _tables_clean = False


@cache
def _hash(password: str) -> str:
    return hash_password(password, settings.bcrypt_rounds)


@dataclass(frozen=True)
class TestUser:
    """A user made for a test, with ready `Authorization` headers."""

    __test__ = False  # a helper, not a test class, wherever it is imported

    id: int
    username: str
    password: str
    role: Role

    @property
    def principal(self) -> Principal:
        return Principal(self.id, self.username, self.role)

    @property
    def basic(self) -> dict[str, str]:
        return basic_header(self.username, self.password)

    @property
    def bearer(self) -> dict[str, str]:
        token = issue_token(self.principal, settings.effective_jwt_secret, settings.jwt_expires_seconds)
        return {"Authorization": f"Bearer {token}"}


ADMIN = TestUser(1, ADMIN_USERNAME, ADMIN_PASSWORD, Role.ADMIN)


def basic_header(username: str, password: str) -> dict[str, str]:
    raw = f"{username}:{password}".encode()
    return {"Authorization": "Basic " + b64encode(raw).decode()}


def make_user(
    role: Role | str = Role.CUSTOMER, username: str | None = None, password: str = "password123"
) -> TestUser:
    """Insert a user directly (bcrypt at the test cost) and return it with its credentials."""
    from core.db import session_scope
    from core.users import service

    role = Role(role)
    name = username or f"{role.value}-{uuid.uuid4().hex[:8]}"
    with session_scope() as session:
        service.ensure_user(session, name, _hash(password), role)
        found = service.credentials_of(session, name)
    assert found is not None
    return TestUser(found[0].id, found[0].username, password, role)


def _clear_redis() -> None:
    """Drop the queued messages and orderflow's own keys, but keep kombu's queue bindings (a
    FLUSHDB would make a running worker's queue unreachable)."""
    client = _redis()
    keys = [ORDERS_QUEUE_KEY, *client.scan_iter(f"{settings.redis_key_prefix}orderflow:*", count=10_000)]
    client.delete(*keys)


@pytest.fixture(scope="session")
async def app() -> AsyncIterator[object]:
    """The ASGI app with its lifespan running (no in-process worker: the Redis broker is real)."""
    from api.main import create_app

    application = create_app(settings, start_embedded_worker=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client acting as the seeded admin (Bearer token)."""
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=transport, base_url="http://orderflow.test", headers=ADMIN.bearer
    ) as c:
        yield c
    await app.state.dispatcher.drain()  # publish what the test stored, while its tables still exist


@pytest.fixture
async def anon(app: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no credentials."""
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://orderflow.test") as c:
        yield c
    await app.state.dispatcher.drain()


@pytest.fixture
def db(request: pytest.FixtureRequest) -> Iterator[object]:
    """A synchronous session for arranging and asserting (committed by the test when needed). In a
    test marked `rolled_back` it works inside one transaction on its own connection, rolled back at
    the end: the test's `commit()`s release savepoints, and nothing it wrote outlives it (its
    after-commit effects are dropped with it)."""
    from core.db import session_scope

    if request.node.get_closest_marker("rolled_back") is None:
        with session_scope() as session:
            yield session
        return
    from sqlalchemy.orm import Session

    with get_sync_engine().connect() as connection:
        outer = connection.begin()
        session = Session(
            connection, join_transaction_mode="create_savepoint", expire_on_commit=False, autoflush=False
        )
        try:
            yield session
        finally:
            session.close()
            outer.rollback()


#: A product's fields where a test does not name them (`make_product`, `create_product`).
PRODUCT_DEFAULTS: dict[str, object] = {"name": "Product A", "price": 15.99, "stock": 10}


def make_product(**fields: object) -> dict:
    """A product stored through the products service, as `POST /products` stores it (opening stock in
    the ledger, the commit's effects run) but without a request (no audit row), returned as the API
    renders it (`ProductRead`): the factory for tests whose subject is not product creation."""
    from core.db import session_scope
    from core.products import service
    from core.products.schemas import ProductCreate, ProductRead

    data = ProductCreate.model_validate({**PRODUCT_DEFAULTS, **fields})
    with session_scope() as session:
        product = service.create_product(session, data, actor=ADMIN_USERNAME)
        return ProductRead.model_validate(product).model_dump(mode="json")


async def create_product(client: httpx.AsyncClient, **fields: object) -> dict:
    """A product created over HTTP by `client` (`POST /products`, 201), for tests of that route and
    of what it records (the audit log)."""
    response = await client.post("/products", json={**PRODUCT_DEFAULTS, **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def gather_limited(coros: list, limit: int = 50) -> list:
    sem = asyncio.Semaphore(limit)

    async def run(coro):
        async with sem:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


def spawn_worker(
    args: list[str], node: str, env: dict[str, str] | None = None, ping: Any = None, within: float = 60
) -> subprocess.Popen:
    """Start `python <args> -n <node>` (a Celery worker's command line) with `env` over this process's
    environment, its output in `LOG_DIR/<node name>.log` (`proc.log_path`), and return once the node
    answers a ping through `ping` (a Celery app; the orderflow app by default). RuntimeError, with the
    log's tail, when it exits first or stays silent for `within` seconds."""
    if ping is None:
        from workers.celery_app import app as ping

    log_path = LOG_DIR / f"{node.split('@')[0]}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *args, "-n", node],
            env=without_greenlets({**os.environ, **(env or {})}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ping.control.ping(destination=[node], timeout=0.5):
            return proc
    else:
        proc.kill()
        proc.wait(10)
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    raise RuntimeError(f"worker {node} exited or did not answer a ping within {within:g} s:\n{tail}")


def start_worker_process(
    queue: str = ORDERS_QUEUE, concurrency: int = 2, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start a real `celery worker` (prefork pool) as a subprocess and wait until it answers a ping."""
    return spawn_worker(
        worker_args(concurrency, queue), f"worker-test-{uuid.uuid4().hex[:8]}@localhost", extra_env, within=30
    )


def stop_worker_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="session")
def celery_worker(database: None) -> Iterator[subprocess.Popen]:
    """A real Celery worker (2 prefork processes) consuming the orders queue on the real Redis."""
    global _session_worker_running
    proc = start_worker_process()
    _session_worker_running = True
    yield proc
    _session_worker_running = False
    stop_worker_process(proc)


#: Test files that take longest (whole stacks, faults that last 10-45 s, fuzzing, visibility
#: timeouts), longest first: a parallel run hands them out at its start instead of waiting on one at its
#: end. The three fault files each run their own stack, so their outages overlap.
SLOW_FIRST = (
    "tests/fuzz/",
    "tests/faults/test_postgres_faults.py",
    "tests/faults/test_redis_faults.py",
    "tests/workers/test_pipeline.py",
    "tests/workers/test_batch.py",
    "tests/workers/test_shutdown.py",
    "tests/api/test_redis_frozen.py",
    "tests/faults/",
    "tests/test_readme.py",
    "tests/core/test_reservation_properties.py",
    "tests/workers/",
    "tests/orderflow/test_embedded.py",
    "tests/test_docs_browser.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid
        return next((i for i, prefix in enumerate(SLOW_FIRST) if path.startswith(prefix)), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: the order within a file is kept


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.faults.run import LINES

    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller prints the fault lines
        workeroutput["fault_lines"] = list(LINES)
    if exitstatus == 0:
        shutil.rmtree(LOG_DIR, ignore_errors=True)
    else:
        print(f"\nworker logs of this run: {LOG_DIR}")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist's controller: keep the fault lines a worker reported (see `pytest_sessionfinish`)."""
    from tests.faults.run import LINES

    LINES.extend(getattr(node, "workeroutput", {}).get("fault_lines", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's one line per fault (tests/faults/run.py), in CI output without `-s`."""
    from tests.faults.run import LINES

    if LINES:
        terminalreporter.write_sep("=", "fault suite: one line per fault")
        for line in LINES:
            terminalreporter.write_line(line)
