"""Binding a store `manager_id` to a manager's account (issue 4 item 5): admins set it, only on a
`manager` account, one account per id; `core.users.service.manager_binding` reads it for the store
API's `STORE_REQUIRE_AUTH=true` check."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import text

from core.db import get_sync_engine, session_scope
from core.users import service
from core.users.models import Role
from tests.conftest import make_user

PASSWORD = "password123"


def binding(user_id: int) -> str | None:
    with session_scope() as s:
        return service.manager_binding(s, user_id)


def assert_error(response: httpx.Response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def audit_details(user_id: int) -> list[dict | None]:
    with get_sync_engine().connect() as conn:
        rows = conn.execute(
            text("SELECT details FROM audit_log WHERE entity = 'user' AND entity_id = :id ORDER BY id"),
            {"id": str(user_id)},
        )
        return [r[0] for r in rows]


# --- create --------------------------------------------------------------------------------------


async def test_an_admin_creates_a_bound_manager(client):
    response = await client.post(
        "/users", json={"username": "mona", "password": PASSWORD, "role": "manager", "manager_id": "mgr_123"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["manager_id"] == "mgr_123"
    assert binding(body["id"]) == "mgr_123"
    assert (await client.get(f"/users/{body['id']}")).json()["manager_id"] == "mgr_123"


async def test_manager_id_is_always_in_the_output(client, anon):
    response = await anon.post("/users", json={"username": "carl", "password": PASSWORD})
    assert response.json()["manager_id"] is None
    listed = (await client.get("/users")).json()
    assert all("manager_id" in u for u in listed)


async def test_only_an_admin_may_bind_at_creation(anon):
    manager = make_user(Role.MANAGER)
    body = {"username": "eve", "password": PASSWORD, "manager_id": "mgr_1"}
    assert_error(await anon.post("/users", json=body), 403, "Forbidden")
    assert_error(await anon.post("/users", json=body, headers=manager.basic), 403, "Forbidden")
    assert_error(
        await anon.post("/users", json={**body, "role": "manager"}, headers=manager.basic), 403, "Forbidden"
    )


@pytest.mark.parametrize("role", ["customer", "admin"])
async def test_binding_a_non_manager_at_creation_is_400(client, role):
    response = await client.post(
        "/users", json={"username": "nina", "password": PASSWORD, "role": role, "manager_id": "mgr_1"}
    )
    body = assert_error(response, 400, "Invalid input")
    assert body["message"] == (
        f"A manager id can only be bound to a user with the role 'manager'; this user's role is '{role}'."
    )
    assert (await client.get("/users", params={"role": role})).headers["x-total-count"] == (
        "1" if role == "admin" else "0"
    )


@pytest.mark.parametrize("value", ["", "mgr 1", "mgr/1", "m" * 65, "mgr_é", 123])
async def test_a_malformed_manager_id_is_400(client, value):
    response = await client.post(
        "/users", json={"username": "nina", "password": PASSWORD, "role": "manager", "manager_id": value}
    )
    body = assert_error(response, 400, "Invalid input")
    assert "manager_id" in [f["field"] for f in body["details"]["fields"]]


async def test_a_taken_manager_id_at_creation_is_409_and_creates_nobody(client):
    first = make_user(Role.MANAGER)
    assert (await client.patch(f"/users/{first.id}", json={"manager_id": "mgr_9"})).status_code == 200
    response = await client.post(
        "/users", json={"username": "late", "password": PASSWORD, "role": "manager", "manager_id": "mgr_9"}
    )
    body = assert_error(response, 409, "Conflict")
    assert body["message"] == "The manager id 'mgr_9' is already bound to another user."
    assert body["details"] == {"manager_id": "mgr_9"}
    # The whole registration rolled back: the username is free.
    again = await client.post("/users", json={"username": "late", "password": PASSWORD, "role": "manager"})
    assert again.status_code == 201, again.text


# --- update --------------------------------------------------------------------------------------


async def test_an_admin_binds_rebinds_and_unbinds(client):
    manager = make_user(Role.MANAGER)
    response = await client.patch(f"/users/{manager.id}", json={"manager_id": "mgr_1"})
    assert response.status_code == 200, response.text
    assert response.json()["manager_id"] == "mgr_1"
    assert binding(manager.id) == "mgr_1"

    response = await client.patch(f"/users/{manager.id}", json={"manager_id": "mgr_2"})
    assert response.json()["manager_id"] == "mgr_2"

    # Leaving the field out keeps the binding.
    response = await client.patch(f"/users/{manager.id}", json={"password": "another-password"})
    assert response.json()["manager_id"] == "mgr_2"

    response = await client.patch(f"/users/{manager.id}", json={"manager_id": None})
    assert response.status_code == 200
    assert response.json()["manager_id"] is None
    assert binding(manager.id) is None
    assert audit_details(manager.id) == [
        {"fields": ["manager_id"], "manager_id": "mgr_1"},
        {"fields": ["manager_id"], "manager_id": "mgr_2"},
        {"fields": ["password"]},
        {"fields": ["manager_id"], "manager_id": None},
    ]


async def test_an_unbound_id_can_be_bound_again_by_another_manager(client):
    a, b = make_user(Role.MANAGER), make_user(Role.MANAGER)
    await client.patch(f"/users/{a.id}", json={"manager_id": "mgr_1"})
    await client.patch(f"/users/{a.id}", json={"manager_id": None})
    response = await client.patch(f"/users/{b.id}", json={"manager_id": "mgr_1"})
    assert response.status_code == 200, response.text
    assert binding(b.id) == "mgr_1"


async def test_the_same_id_again_changes_nothing(client):
    manager = make_user(Role.MANAGER)
    await client.patch(f"/users/{manager.id}", json={"manager_id": "mgr_1"})
    response = await client.patch(f"/users/{manager.id}", json={"manager_id": "mgr_1"})
    assert response.status_code == 200
    assert response.json()["manager_id"] == "mgr_1"
    assert audit_details(manager.id)[-1] == {"fields": []}


async def test_a_manager_cannot_bind_or_unbind_themself(client, anon):
    manager = make_user(Role.MANAGER)
    await client.patch(f"/users/{manager.id}", json={"manager_id": "mgr_1"})
    for value in ("mgr_2", None):
        response = await anon.patch(f"/users/{manager.id}", json={"manager_id": value}, headers=manager.basic)
        body = assert_error(response, 403, "Forbidden")
        assert body["message"] == "Only an admin can set a user's manager id."
    assert binding(manager.id) == "mgr_1"


async def test_binding_a_customer_is_400_unless_promoted_in_the_same_request(client):
    customer = make_user(Role.CUSTOMER)
    body = assert_error(
        await client.patch(f"/users/{customer.id}", json={"manager_id": "mgr_1"}), 400, "Invalid input"
    )
    assert "role 'manager'" in body["message"]
    assert binding(customer.id) is None

    response = await client.patch(f"/users/{customer.id}", json={"role": "manager", "manager_id": "mgr_1"})
    assert response.status_code == 200, response.text
    assert (response.json()["role"], response.json()["manager_id"]) == ("manager", "mgr_1")


async def test_binding_while_demoting_is_400(client):
    manager = make_user(Role.MANAGER)
    response = await client.patch(f"/users/{manager.id}", json={"role": "customer", "manager_id": "mgr_1"})
    assert_error(response, 400, "Invalid input")
    assert (await client.get(f"/users/{manager.id}")).json()["role"] == "manager"


@pytest.mark.parametrize("role", ["customer", "admin"])
async def test_losing_the_manager_role_unbinds(client, role):
    manager = make_user(Role.MANAGER)
    await client.patch(f"/users/{manager.id}", json={"manager_id": "mgr_1"})
    response = await client.patch(f"/users/{manager.id}", json={"role": role})
    assert response.status_code == 200, response.text
    assert response.json()["manager_id"] is None
    assert binding(manager.id) is None
    assert audit_details(manager.id)[-1] == {
        "fields": ["role", "manager_id"],
        "role": role,
        "manager_id": None,
    }


async def test_an_id_bound_to_another_user_is_409_and_nothing_changes(client, anon):
    a, b = make_user(Role.MANAGER), make_user(Role.MANAGER)
    await client.patch(f"/users/{a.id}", json={"manager_id": "mgr_1"})
    await client.patch(f"/users/{b.id}", json={"manager_id": "mgr_2"})
    response = await client.patch(
        f"/users/{b.id}", json={"manager_id": "mgr_1", "password": "changed-password"}
    )
    body = assert_error(response, 409, "Conflict")
    assert body["details"] == {"manager_id": "mgr_1"}
    assert (binding(a.id), binding(b.id)) == ("mgr_1", "mgr_2")
    # The password change of the same request rolled back too.
    assert (await anon.post("/login", headers=b.basic)).status_code == 200
    assert len(audit_details(b.id)) == 1


async def test_two_admins_binding_one_id_at_once_one_wins(client):
    managers = [make_user(Role.MANAGER) for _ in range(4)]
    responses = await asyncio.gather(
        *(client.patch(f"/users/{m.id}", json={"manager_id": "mgr_race"}) for m in managers)
    )
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409]
    assert [binding(m.id) for m in managers].count("mgr_race") == 1


async def test_a_missing_user_is_404(client):
    assert_error(await client.patch("/users/999", json={"manager_id": "mgr_1"}), 404, "User not found")


# --- manager_binding -----------------------------------------------------------------------------


async def test_manager_binding_of_unbound_and_missing_users_is_none(client):
    manager = make_user(Role.MANAGER)
    assert binding(manager.id) is None
    assert binding(1) is None  # the admin
    assert binding(999) is None
