"""Bearer tokens end with what they claim (CONTRACT.md, "Users and authentication"): within
`AUTH_USER_CACHE_SECONDS` of a password change or a user's deletion every older token is a 401
(`WWW-Authenticate: Bearer error="invalid_token"`, RFC 6750 section 3), and a role change is what the
old token grants; a validly signed token whose `sub` names no user, or is no positive int64, is a 401
on every surface (never a 201 or a 500); and the check costs at most one read of the user's row per
`AUTH_USER_CACHE_SECONDS` per process, shared by concurrent requests.

Changes are made through the session's app (`client`, the seeded admin) or in the database, and
observed through a second app with its own caches and a short `AUTH_USER_CACHE_SECONDS`, as another
API process would see them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from core.config import settings
from core.db import get_sync_engine
from core.users.models import Role
from core.users.security import Principal, issue_token
from tests.api.test_orders import wait_for_idle_queue
from tests.api.test_store import CONTRACT_BATCH, assert_store_error
from tests.apps import running_app
from tests.conftest import ADMIN, basic_header, make_product, make_user
from tests.workers.helpers import lock_waiters

pytestmark = pytest.mark.usefixtures("celery_worker")

SECRET = settings.effective_jwt_secret
BEARER_CHALLENGE = 'Bearer error="invalid_token"'
#: The bound under test, in seconds; small so that the tests wait little.
TTL = 0.5
#: What a poll may take beyond the bound (scheduling of a loaded 2-core machine).
SLACK = 1.0
PRODUCT = {"name": "Widget", "price": 2.5, "stock": 5}


@pytest.fixture(autouse=True)
def _settled_queue():
    yield
    wait_for_idle_queue()


@asynccontextmanager
async def second_app(**overrides: object) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Another API process, in effect: an app of its own (own caches) with `AUTH_USER_CACHE_SECONDS`
    = `TTL` unless overridden, and an anonymous client of it."""
    cfg = settings.model_copy(update={"auth_user_cache_seconds": TTL, **overrides})
    async with running_app(cfg) as application:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://orderflow.test") as c:
            yield application, c
        await application.state.dispatcher.drain()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(c: httpx.AsyncClient, username: str, password: str) -> dict[str, str]:
    response = await c.post("/login", headers=basic_header(username, password))
    assert response.status_code == 200, response.text
    return bearer(response.json()["access_token"])


def assert_401(response: httpx.Response) -> dict:
    """The contract's 401 for a bad token: envelope and the RFC 6750 challenge."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == BEARER_CHALLENGE
    body = response.json()
    assert (body["error"], body["code"]) == ("Unauthorized", "UNAUTHORIZED")
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def seconds_until(status: int, request: Callable[[], Awaitable[httpx.Response]]) -> float:
    """Seconds from now until `request()` answers `status`, polled every 50 ms; fails after
    `TTL + SLACK` seconds."""
    start = time.monotonic()
    while True:
        response = await request()
        elapsed = time.monotonic() - start
        if response.status_code == status:
            return elapsed
        assert elapsed < TTL + SLACK, (status, response.status_code, response.text)
        await asyncio.sleep(0.05)


def delete_user(user_id: int) -> None:
    with get_sync_engine().begin() as conn:
        conn.execute(text("DELETE FROM users WHERE id = :id"), {"id": user_id})


def forged(sub: object, role: str = "admin", **claims: object) -> dict[str, str]:
    """A token signed with the real key, naming `sub` (any JSON value) with `role`."""
    now = time.time()
    body = {"sub": sub, "username": "ghost", "role": role, "iat": now, "exp": now + 600, **claims}
    return bearer(jwt.encode(body, SECRET, algorithm="HS256"))


@pytest.fixture
def count_user_reads() -> AsyncIterator[list[str]]:
    """The user-row reads a bearer check makes (the query of `core.users.repository.token_subject`),
    counted on every SQLAlchemy engine of this process."""
    reads: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany) -> None:
        if "users.password_changed_at" in statement and "FROM users" in statement:
            reads.append(statement)

    event.listen(Engine, "before_cursor_execute", before)
    yield reads
    event.remove(Engine, "before_cursor_execute", before)


# --- role changes ---------------------------------------------------------------------------------


async def test_a_demoted_managers_old_token_loses_manager_rights_within_the_bound(client):
    manager = make_user(Role.MANAGER)
    async with second_app() as (_, c):
        old = await login(c, manager.username, manager.password)
        assert (await c.post("/products", json=PRODUCT, headers=old)).status_code == 201
        demoted = await client.patch(f"/users/{manager.id}", json={"role": "customer"})
        assert demoted.status_code == 200, demoted.text

        took = await seconds_until(403, lambda: c.post("/products", json=PRODUCT, headers=old))
        assert took <= TTL + SLACK
        forbidden = await c.post("/products", json=PRODUCT, headers=old)
        assert forbidden.status_code == 403
        assert forbidden.json()["details"] == {"role": "customer"}
        # Still a valid login, with the powers of the role stored now.
        assert (await c.get("/products", headers=old)).status_code == 200

        # A fresh token after the change works at once, as a customer.
        fresh = await login(c, manager.username, manager.password)
        product = make_product()
        order = await c.post("/orders", json={"product_id": product["id"], "quantity": 1}, headers=fresh)
        assert order.status_code == 202, order.text
        assert order.json()["user_id"] == manager.id
        assert (await c.post("/products", json=PRODUCT, headers=fresh)).status_code == 403


async def test_a_promoted_customers_token_grants_the_new_role_within_the_bound(client):
    customer = make_user(Role.CUSTOMER)
    async with second_app() as (_, c):
        token = await login(c, customer.username, customer.password)
        assert (await c.post("/products", json=PRODUCT, headers=token)).status_code == 403
        promoted = await client.patch(f"/users/{customer.id}", json={"role": "manager"})
        assert promoted.status_code == 200, promoted.text
        took = await seconds_until(201, lambda: c.post("/products", json=PRODUCT, headers=token))
        assert took <= TTL + SLACK


async def test_a_role_change_made_in_this_process_takes_effect_at_once():
    manager = make_user(Role.MANAGER)
    async with second_app(auth_user_cache_seconds=3600) as (_, c):
        old = await login(c, manager.username, manager.password)
        assert (await c.post("/products", json=PRODUCT, headers=old)).status_code == 201
        demoted = await c.patch(f"/users/{manager.id}", json={"role": "customer"}, headers=ADMIN.basic)
        assert demoted.status_code == 200, demoted.text
        assert (await c.post("/products", json=PRODUCT, headers=old)).status_code == 403


async def test_a_demoted_admins_old_token_loses_the_store_api_within_the_bound(client):
    """With STORE_REQUIRE_AUTH=true an admin acts for any manager id; once demoted to an unbound
    manager, the old token acts for none (the store reads the stored role too)."""
    admin = make_user(Role.ADMIN)
    async with second_app(store_require_auth=True) as (_, c):
        old = await login(c, admin.username, admin.password)
        created = await c.post("/api/inventory/products", json=CONTRACT_BATCH, headers=old)
        assert created.status_code == 201, created.text
        demoted = await client.patch(f"/users/{admin.id}", json={"role": "manager"})
        assert demoted.status_code == 200, demoted.text

        took = await seconds_until(
            403, lambda: c.post("/api/inventory/products", json=CONTRACT_BATCH, headers=old)
        )
        assert took <= TTL + SLACK
        error = assert_store_error(
            await c.post("/api/inventory/products", json=CONTRACT_BATCH, headers=old), 403, "FORBIDDEN"
        )
        assert "not bound" in error["message"]


# --- password changes -----------------------------------------------------------------------------


async def test_a_password_change_ends_older_tokens_within_the_bound(client):
    user = make_user(Role.CUSTOMER)
    async with second_app() as (_, c):
        old = await login(c, user.username, user.password)
        assert (await c.get("/products", headers=old)).status_code == 200
        changed = await client.patch(f"/users/{user.id}", json={"password": "a-brand-new-password"})
        assert changed.status_code == 200, changed.text

        took = await seconds_until(401, lambda: c.get("/products", headers=old))
        assert took <= TTL + SLACK
        body = assert_401(await c.get("/products", headers=old))
        assert "password was changed" in body["message"]
        product = make_product()
        line = {"product_id": product["id"], "quantity": 1}
        assert_401(await c.post("/orders", json=line, headers=old))

        # A token issued after the change works at once, in this process and in the other one.
        fresh = await login(c, user.username, "a-brand-new-password")
        assert (await c.get("/products", headers=fresh)).status_code == 200
        assert (await c.post("/orders", json=line, headers=fresh)).status_code == 202
        assert (await client.get("/products", headers=fresh)).status_code == 200


async def test_a_password_change_made_in_this_process_ends_older_tokens_at_once():
    user = make_user(Role.CUSTOMER)
    async with second_app(auth_user_cache_seconds=3600) as (_, c):
        old = await login(c, user.username, user.password)
        assert (await c.get("/products", headers=old)).status_code == 200
        changed = await c.patch(f"/users/{user.id}", json={"password": "changed-by-me"}, headers=old)
        assert changed.status_code == 200, changed.text
        assert_401(await c.get("/products", headers=old))
        fresh = await login(c, user.username, "changed-by-me")
        assert (await c.get("/products", headers=fresh)).status_code == 200


async def test_user_management_refuses_a_token_older_than_the_password_at_once(client):
    """User management re-reads its caller past the cache: an old token is a 401 there at once."""
    user = make_user(Role.CUSTOMER)
    async with second_app(auth_user_cache_seconds=3600) as (_, c):
        old = await login(c, user.username, user.password)
        assert (await c.get(f"/users/{user.id}", headers=old)).status_code == 200
        reset = await client.patch(f"/users/{user.id}", json={"password": "reset-by-admin"})
        assert reset.status_code == 200, reset.text
        assert_401(await c.get(f"/users/{user.id}", headers=old))


async def test_a_login_that_overlaps_a_password_change_gets_a_token_that_ends_with_it():
    """The token's `iat` is when the credentials were read: a password change committed after that
    read (while bcrypt checked the old password) ends the token as well."""
    user = make_user(Role.CUSTOMER)
    async with second_app() as (_, c):
        token = await login(c, user.username, user.password)
        iat = jwt.decode(token["Authorization"][7:], SECRET, algorithms=["HS256"])["iat"]
        with get_sync_engine().begin() as conn:
            # As if the change had landed a millisecond after the login read the row.
            conn.execute(
                text("UPDATE users SET password_changed_at = to_timestamp(:t) WHERE id = :id"),
                {"t": iat + 0.001, "id": user.id},
            )
        assert_401(await c.get("/products", headers=token))


# --- deleted users and unknown subjects -----------------------------------------------------------


async def test_a_deleted_users_token_is_401_within_the_bound():
    user = make_user(Role.MANAGER)
    async with second_app() as (_, c):
        token = await login(c, user.username, user.password)
        assert (await c.post("/products", json=PRODUCT, headers=token)).status_code == 201
        delete_user(user.id)
        assert await seconds_until(401, lambda: c.get("/products", headers=token)) <= TTL + SLACK
        body = assert_401(await c.post("/products", json=PRODUCT, headers=token))
        assert "no longer exists" in body["message"]


async def test_a_token_of_a_deleted_user_does_not_pass_for_a_new_user_with_the_same_id():
    """Should an id be given out again (SQLite reuses the highest one after a delete), the old token
    still fails: it was issued before the new user existed."""
    ghost = make_user(Role.ADMIN)
    token = ghost.bearer
    delete_user(ghost.id)
    with get_sync_engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, username, password_hash, role, created_at, updated_at,"
                " password_changed_at) VALUES (:id, 'newcomer', 'x', 'customer', now(), now(), now())"
            ),
            {"id": ghost.id},
        )
    async with second_app() as (_, c):
        assert_401(await c.get("/products", headers=token))


async def test_a_validly_signed_token_of_an_unknown_user_is_401_everywhere(anon, client):
    product = make_product()
    ghost = bearer(issue_token(Principal(999_999, "ghost", Role.ADMIN), SECRET, 600))
    for response in (
        await anon.post("/orders", json={"product_id": product["id"], "quantity": 1}, headers=ghost),
        await anon.post("/products", json=PRODUCT, headers=ghost),
        await anon.get("/products", headers=ghost),
        await anon.get("/users", headers=ghost),
    ):
        assert "no longer exists" in assert_401(response)["message"]
    assert (await client.get("/products")).json() == [product]
    assert (await client.get("/orders")).json() == []


async def test_a_validly_signed_token_of_an_unknown_user_is_401_on_the_store_api():
    ghost = bearer(issue_token(Principal(999_999, "ghost", Role.ADMIN), SECRET, 600))
    async with second_app(store_require_auth=True) as (_, c):
        response = await c.post("/api/inventory/products", json=CONTRACT_BATCH, headers=ghost)
        assert_store_error(response, 401, "UNAUTHORIZED")
        assert response.headers["www-authenticate"] == BEARER_CHALLENGE


@pytest.mark.parametrize(
    "sub",
    [
        pytest.param(str(2**63), id="2**63"),
        pytest.param(str(2**64 + 1), id="2**64+1"),
        pytest.param("9" * 40, id="40-digits"),
        pytest.param("abc", id="abc"),
        pytest.param("0", id="zero"),
        pytest.param("-1", id="negative"),
        pytest.param("+1", id="plus-sign"),
        pytest.param("01", id="leading-zero"),
        pytest.param(" 1", id="leading-space"),
        pytest.param("1_0", id="underscore"),
        pytest.param("\u0661", id="arabic-indic-one"),
        pytest.param("1\x00", id="nul"),
        pytest.param(2**63, id="json-number-2**63"),
        pytest.param(1, id="json-number-1"),
        pytest.param(None, id="null"),
    ],
)
async def test_a_sub_that_is_not_a_positive_int64_is_401_not_500(anon, client, sub):
    product = make_product()
    headers = forged(sub)
    assert_401(await anon.post("/products", json=PRODUCT, headers=headers))
    assert_401(await anon.post("/orders", json={"product_id": product["id"], "quantity": 1}, headers=headers))


@pytest.mark.parametrize("sub", [str(2**31), str(2**63 - 1)], ids=["2**31", "2**63-1"])
async def test_a_sub_within_int64_but_naming_no_user_is_401(anon, sub):
    assert (
        "no longer exists"
        in assert_401(await anon.post("/products", json=PRODUCT, headers=forged(sub)))["message"]
    )


# --- cost ---------------------------------------------------------------------------------------


async def test_bearer_reads_a_users_row_at_most_once_per_bound(client, count_user_reads):
    """`POST /orders` with one token: 40 requests (20 at a time, so that they miss the cache
    together) cost one read of the user's row; after the bound, the next request one more."""
    customer = make_user(Role.CUSTOMER)
    product = make_product(stock=1000)
    line = {"product_id": product["id"], "quantity": 1}
    async with second_app(auth_user_cache_seconds=2) as (_, c):
        token = await login(c, customer.username, customer.password)
        count_user_reads.clear()
        for _ in range(2):
            answers = await asyncio.gather(*(c.post("/orders", json=line, headers=token) for _ in range(20)))
            assert [r.status_code for r in answers] == [202] * 20, answers[0].text
        assert len(count_user_reads) == 1
        await asyncio.sleep(2.1)
        assert (await c.post("/orders", json=line, headers=token)).status_code == 202
        assert len(count_user_reads) == 2


async def test_auth_user_cache_seconds_zero_reads_the_row_on_every_request(client, count_user_reads):
    user = make_user(Role.CUSTOMER)
    async with second_app(auth_user_cache_seconds=0) as (_, c):
        token = await login(c, user.username, user.password)
        count_user_reads.clear()
        for _ in range(3):
            assert (await c.get("/products", headers=token)).status_code == 200
        assert len(count_user_reads) == 3
        delete_user(user.id)
        assert_401(await c.get("/products", headers=token))


# --- the single flight of the user's row ----------------------------------------------------------


async def _until_lock_waiters(count: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    """Poll (without blocking the event loop) until exactly `count` backends wait on a lock."""
    while lock_waiters() != count:
        assert time.monotonic() < deadline, f"not {count} lock waiter(s) within {within} s"
        await asyncio.sleep(0.02)


async def test_a_failed_read_of_the_users_row_fails_only_its_own_request():
    """Two bearer checks of one user overlap: the second waits for the first one's read of the row
    (one query, as above). When that read fails (here its `statement_timeout` ends it while the
    table is locked), the first request gets the database error and the waiting one reads the row
    itself once the table is free: a failure is never handed on to the requests that waited."""
    from sqlalchemy.exc import OperationalError

    from api.auth import Authenticator
    from core.db import make_async_engine, make_async_sessionmaker

    user = make_user(Role.CUSTOMER)
    principal = Principal(user.id, user.username, Role.CUSTOMER)
    auth = Authenticator(settings.model_copy(update={"auth_user_cache_seconds": 30}))
    token = auth.issue(principal)
    engine = make_async_engine(settings)
    sessions = make_async_sessionmaker(engine)
    try:
        async with sessions() as failing, sessions() as working:
            await failing.execute(text("SET statement_timeout = '500ms'"))
            with get_sync_engine().connect() as locker:
                locker.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
                first = asyncio.create_task(auth.bearer(failing, token))
                await _until_lock_waiters(1)
                second = asyncio.create_task(auth.bearer(working, token))
                await asyncio.sleep(0.2)
                assert lock_waiters() == 1  # the second request waits for the first one's read
                with pytest.raises(OperationalError, match="statement timeout"):
                    await first
                await _until_lock_waiters(1)  # now the second request's own read
                assert not second.done()
                locker.commit()
            assert await asyncio.wait_for(second, 10) == principal
    finally:
        await engine.dispose()
