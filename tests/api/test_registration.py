"""Registration rules and the first admin (CONTRACT.md, "Users and authentication"; issue 3)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from api.main import create_app
from core.config import Settings
from core.db import get_sync_engine
from tests.conftest import ADMIN, basic_header, make_user


def user_rows(username: str) -> list[tuple[str, str]]:
    with get_sync_engine().connect() as conn:
        rows = conn.execute(
            text("SELECT username, role FROM users WHERE lower(username) = lower(:u)"), {"u": username}
        )
        return [tuple(r) for r in rows]


async def test_anyone_registers_a_customer(anon):
    response = await anon.post("/users", json={"username": "alice", "password": "password123"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "username", "role", "created_at"}
    assert (body["username"], body["role"]) == ("alice", "customer")
    assert response.headers["location"] == f"/users/{body['id']}"
    assert "password" not in response.text
    assert (await anon.get("/products", headers=basic_header("alice", "password123"))).status_code == 200


@pytest.mark.parametrize("role", ["manager", "admin", "MANAGER"])
async def test_other_roles_need_an_admin(anon, role):
    body = {"username": "boss", "password": "password123", "role": role}
    refused = await anon.post("/users", json=body)
    assert refused.status_code == 403
    assert refused.json()["error"] == "Forbidden"
    for who in (make_user("customer"), make_user("manager")):
        assert (await anon.post("/users", json=body, headers=who.bearer)).status_code == 403
    assert (await anon.post("/users", json=body, headers=basic_header("admin", "wrong"))).status_code == 401
    created = await anon.post("/users", json=body, headers=ADMIN.basic)
    assert created.status_code == 201
    assert created.json()["role"] == role.lower()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "mallory", "password": "password123", "id": 1}, "id"),
        ({"username": "mallory", "password": "password123", "password_hash": "$2b$12$x"}, "password_hash"),
        ({"username": "mallory", "password": "password123", "created_at": "2020-01-01"}, "created_at"),
        ({"username": "mallory", "password": "password123", "role": "root"}, "role"),
        ({"password": "password123"}, "username"),
        ({"username": "mallory"}, "password"),
        ({"username": "ab", "password": "password123"}, "username"),
        ({"username": "a" * 51, "password": "password123"}, "username"),
        ({"username": "has space", "password": "password123"}, "username"),
        ({"username": "at@sign", "password": "password123"}, "username"),
        ({"username": "jürgen", "password": "password123"}, "username"),
        ({"username": "mallory", "password": "1234567"}, "password"),
        ({"username": "mallory", "password": "p" * 73}, "password"),
        ({"username": "mallory", "password": "é" * 37}, "password"),
        ({"username": 12345, "password": "password123"}, "username"),
    ],
)
async def test_invalid_registrations_are_400_naming_the_field(anon, body, field):
    response = await anon.post("/users", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "Invalid input"
    assert field in [f["field"] for f in response.json()["details"]["fields"]]
    assert user_rows("mallory") == []


async def test_password_limits_are_bytes_and_never_truncated(anon):
    for name, password in (("eight", "p" * 8), ("seventytwo", "p" * 72), ("accents", "é" * 36)):
        assert (await anon.post("/users", json={"username": name, "password": password})).status_code == 201
        assert (await anon.get("/products", headers=basic_header(name, password))).status_code == 200
    too_long = await anon.post("/users", json={"username": "long", "password": "é" * 37})
    assert "72 bytes" in too_long.json()["message"]
    # bcrypt ignores bytes after 72; we never let that make a longer password valid.
    assert (
        await anon.get("/products", headers=basic_header("seventytwo", "p" * 72 + "x"))
    ).status_code == 401


async def test_usernames_are_unique_in_any_case(anon):
    assert (
        await anon.post("/users", json={"username": "Alice", "password": "password123"})
    ).status_code == 201
    for name in ("Alice", "alice", "ALICE"):
        response = await anon.post("/users", json={"username": name, "password": "password123"})
        assert response.status_code == 409
        assert response.json()["error"] == "Conflict"
    assert user_rows("alice") == [("Alice", "customer")]


async def test_concurrent_registrations_of_one_name_make_one_user(anon):
    body = {"username": "racer", "password": "password123"}
    answers = await asyncio.gather(*(anon.post("/users", json=body) for _ in range(10)))
    assert sorted(r.status_code for r in answers) == [201] + [409] * 9
    assert len(user_rows("racer")) == 1


def first_admin_settings(username: str = "root", password: str = "root-password") -> Settings:
    return Settings(first_admin_username=username, first_admin_password=password)


async def test_first_admin_is_created_once_even_by_concurrent_starts():
    apps = [create_app(first_admin_settings(), start_embedded_worker=False) for _ in range(3)]

    async def start(application):
        async with application.router.lifespan_context(application):
            await asyncio.sleep(0)

    await asyncio.gather(*(start(a) for a in apps))
    await start(create_app(first_admin_settings(password="another-password"), start_embedded_worker=False))
    assert user_rows("root") == [("root", "admin")]


async def test_first_admin_can_log_in(anon):
    application = create_app(first_admin_settings(), start_embedded_worker=False)
    async with application.router.lifespan_context(application):
        pass
    login = await anon.post("/login", headers=basic_header("root", "root-password"))
    assert login.status_code == 200
    assert login.json()["token_type"] == "bearer"


async def test_first_admin_leaves_an_existing_user_alone():
    make_user("customer", username="root")
    application = create_app(first_admin_settings(), start_embedded_worker=False)
    async with application.router.lifespan_context(application):
        pass
    assert user_rows("root") == [("root", "customer")]
