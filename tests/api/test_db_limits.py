"""Every PostgreSQL session orderflow opens carries `DB_STATEMENT_TIMEOUT_MS` and `DB_LOCK_TIMEOUT_MS`
(core.db.connect_options), and a statement that runs into them is cancelled and answered with the
contract's generic 500 (CONTRACT.md, "Errors") instead of holding the request (OWASP API4, unrestricted
resource consumption).

A slow statement is made by holding a lock from another session: `LOCK TABLE products` in an open
transaction, then the app's statements that need the table wait until a timeout cancels them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest
from sqlalchemy import text

from core.config import Settings, settings
from core.db import make_sync_engine
from tests.conftest import ADMIN, make_product

SYNC_URL = settings.database_url.replace("+psycopg", "")


@pytest.fixture
async def limited_app() -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    from api.main import create_app

    cfg = settings.model_copy(update={"db_statement_timeout_ms": 700, "db_lock_timeout_ms": 300})
    application = create_app(cfg, start_embedded_worker=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        base = "http://orderflow.test"
        async with httpx.AsyncClient(transport=transport, base_url=base, headers=ADMIN.bearer) as client:
            yield application, client
        await application.state.dispatcher.drain()


@pytest.fixture
def products_locked() -> Iterator[None]:
    """Another session holds `ACCESS EXCLUSIVE` on `products` until the test ends."""
    with psycopg.connect(SYNC_URL) as conn:
        conn.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def session_limits(rows: list) -> dict[str, str]:
    return {name: value for name, value in rows}


SHOW_LIMITS = (
    "SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout', 'lock_timeout') ORDER BY name"
)


async def test_every_pool_of_the_api_and_the_worker_sets_the_limits(limited_app):
    app, _client = limited_app
    expected = {"lock_timeout": "300", "statement_timeout": "700"}
    async with app.state.sessionmaker() as session:
        assert session_limits((await session.execute(text(SHOW_LIMITS))).all()) == expected
    async with app.state.read_sessionmaker() as session:
        assert session_limits((await session.execute(text(SHOW_LIMITS))).all()) == expected
    async with app.state.statement_pool.connection() as conn:
        assert session_limits(await (await conn.execute(SHOW_LIMITS)).fetchall()) == expected

    worker_engine = make_sync_engine(app.state.settings)
    try:
        with worker_engine.connect() as conn:
            assert session_limits(conn.execute(text(SHOW_LIMITS)).all()) == expected
    finally:
        worker_engine.dispose()


def test_the_defaults_are_documented_values():
    defaults = Settings()
    assert (defaults.db_statement_timeout_ms, defaults.db_lock_timeout_ms) == (15000, 5000)
    assert (defaults.db_pool_timeout_seconds, defaults.db_connect_timeout_seconds) == (10, 5)


def assert_generic_500(response: httpx.Response) -> None:
    assert response.status_code == 500, response.text
    assert response.json()["code"] == "INTERNAL_ERROR"
    for leak in ("canceling", "timeout", "lock", "psycopg", "SELECT", "products"):
        assert leak not in response.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/products", None),  # the autocommit read engine
        ("PATCH", "/products/{id}", {"price": 2}),  # the request engine
        ("POST", "/orders", {"product_id": "{id}", "quantity": 1}),  # the intake statement pool
    ],
)
async def test_a_statement_waiting_on_a_lock_is_cancelled_with_a_clean_500(
    limited_app, request, method, path, body
):
    app, client = limited_app
    product = make_product()
    path = path.format(id=product["id"])
    if body and body.get("product_id") == "{id}":
        body = {**body, "product_id": product["id"]}
    request.getfixturevalue("products_locked")
    started = time.monotonic()
    response = await client.request(method, path, json=body)
    elapsed = time.monotonic() - started
    assert_generic_500(response)
    # Cancelled by lock_timeout (300 ms), well before the statement timeout (700 ms) would.
    assert elapsed < 0.7, elapsed
    assert app.state.settings.db_lock_timeout_ms == 300


async def test_a_statement_running_too_long_is_cancelled_with_a_clean_500():
    """statement_timeout alone (lock_timeout off): a read that waits longer is cancelled."""
    from api.main import create_app

    cfg = settings.model_copy(update={"db_statement_timeout_ms": 400, "db_lock_timeout_ms": 0})
    application = create_app(cfg, start_embedded_worker=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        base = "http://orderflow.test"
        async with httpx.AsyncClient(transport=transport, base_url=base, headers=ADMIN.bearer) as client:
            make_product()
            with psycopg.connect(SYNC_URL) as conn:
                conn.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                response = await client.get("/products")
                elapsed = time.monotonic() - started
                conn.rollback()
            assert_generic_500(response)
            assert 0.4 <= elapsed < 2.0, elapsed
            # The connection is usable again afterwards (the cancel ended the statement, not the session).
            assert (await client.get("/products")).status_code == 200
