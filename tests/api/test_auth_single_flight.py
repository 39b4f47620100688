"""Basic authentication under load: overlapping identical attempts share one bcrypt check, and a hash
made at another cost is replaced on the next successful login (so every stored hash costs what the
dummy hash of unknown users costs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from api.main import create_app
from core.config import Settings
from core.db import get_sync_engine
from core.users.models import Role
from core.users.security import hash_cost
from tests.conftest import basic_header, make_user


@asynccontextmanager
async def client_of(**overrides: object) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    application = create_app(Settings(**overrides), start_embedded_worker=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://orderflow.test") as c:
            yield application, c


def count_checks(application: FastAPI) -> list[str | None]:
    checker = application.state.auth.checker
    original = checker.check
    calls: list[str | None] = []

    def counting(password: str, password_hash: str | None) -> bool:
        calls.append(password_hash)
        return original(password, password_hash)

    checker.check = counting
    return calls


def stored_hash(user_id: int) -> str:
    with get_sync_engine().connect() as conn:
        return conn.execute(
            text("SELECT password_hash FROM users WHERE id = :i"), {"i": user_id}
        ).scalar_one()


async def test_a_burst_of_identical_attempts_costs_one_bcrypt_check():
    user = make_user(Role.CUSTOMER)
    async with client_of(bcrypt_rounds=8) as (application, c):
        calls = count_checks(application)
        right = await asyncio.gather(*(c.get("/products", headers=user.basic) for _ in range(8)))
        assert [r.status_code for r in right] == [200] * 8
        assert len(calls) == 1
        wrong = basic_header(user.username, "not-the-password")
        refused = await asyncio.gather(*(c.get("/products", headers=wrong) for _ in range(8)))
        assert [r.status_code for r in refused] == [401] * 8
        assert len(calls) == 2  # shared too, and not cached:
        assert (await c.get("/products", headers=wrong)).status_code == 401
        assert len(calls) == 3


async def test_different_passwords_are_never_merged():
    user = make_user(Role.CUSTOMER)
    async with client_of(bcrypt_rounds=8) as (application, c):
        calls = count_checks(application)
        answers = await asyncio.gather(
            c.get("/products", headers=user.basic),
            c.get("/products", headers=basic_header(user.username, user.password + "x")),
            c.get("/products", headers=basic_header(user.username.upper(), user.password)),
        )
        assert [r.status_code for r in answers] == [200, 401, 200]
        assert 2 <= len(calls) <= 3  # the two right ones may share a check; the wrong one never does


async def test_a_hash_of_another_cost_is_replaced_after_a_successful_login():
    user = make_user(Role.MANAGER)  # hashed at the tests' cost, 4
    before = stored_hash(user.id)
    assert hash_cost(before) == 4
    async with client_of(bcrypt_rounds=6) as (_, c):
        assert (
            await c.get("/products", headers=basic_header(user.username, "wrong-password"))
        ).status_code == 401
        assert stored_hash(user.id) == before  # a failed login changes nothing
        assert (await c.get("/products", headers=user.basic)).status_code == 200
        after = stored_hash(user.id)
        assert hash_cost(after) == 6
        # Same password, new hash: it still works, from the cache and from the database.
        assert (await c.get("/products", headers=user.basic)).status_code == 200
    async with client_of(bcrypt_rounds=6) as (application, c):
        calls = count_checks(application)
        assert (await c.get("/products", headers=user.basic)).status_code == 200
        assert calls == [after]
        assert stored_hash(user.id) == after


async def test_registering_with_admin_basic_credentials_from_the_cache_works():
    """POST /users authenticated by a cached Basic credential: the credentials query's transaction
    is closed before the new password is hashed, and the user is created."""
    async with client_of(bcrypt_rounds=4) as (_, c):
        admin = basic_header("admin", "admin-password")
        assert (await c.get("/products", headers=admin)).status_code == 200  # now cached
        created = await c.post(
            "/users",
            json={"username": "new-manager", "password": "password123", "role": "manager"},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        assert created.json()["role"] == "manager"


async def test_with_the_cache_off_every_attempt_pays_bcrypt():
    user = make_user(Role.CUSTOMER)
    async with client_of(auth_cache_seconds=0) as (application, c):
        calls = count_checks(application)
        answers = await asyncio.gather(*(c.get("/products", headers=user.basic) for _ in range(4)))
        assert [r.status_code for r in answers] == [200] * 4
        assert len(calls) == 4
