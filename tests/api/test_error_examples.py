"""The error examples of `/openapi.json` are what the server sends (docs/errors.md, "How errors are
defined and rendered"; CONTRACT.md, "Core API" and "Store API" envelopes).

Two halves:

* Every documented error example, in both envelopes, is the rendering (`api.errors.core_envelope`
  or `store_envelope`) of an error class's `example()` or of a named `Example` of `api.openapi`; and
  each class's `example()` is documented exactly as rendered wherever a route declares the class.
* A representative set of errors is triggered live, and the live message is the documented one up to
  the numbers (ids, counts, seconds): so a raise site that wrote its own sentence instead of its
  class's template fails here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from string import Formatter
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import api.errors
import api.openapi
import core.errors
import core.users.security
from api.errors import core_envelope, store_envelope
from api.main import create_app
from api.openapi import EXAMPLE_REQUEST_ID, Example
from core.config import settings
from core.errors import DomainError, MalformedCredentials, MalformedToken, TokenExpired
from core.users.models import Role
from core.users.security import issue_token
from tests.conftest import ADMIN, LOADED_REDIS_TIMEOUT_SECONDS, make_product, make_user

# --- the document against the classes -------------------------------------------------------------


def _all_classes(root: type[DomainError] = DomainError) -> Iterator[type[DomainError]]:
    """Every subclass of `root` but private helpers (a leading underscore), which are never raised."""
    for sub in root.__subclasses__():
        if not sub.__name__.startswith("_"):
            yield sub
        yield from _all_classes(sub)


def _is_store(path: str) -> bool:
    return path.startswith("/api/")


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _rendered(error: DomainError, path: str) -> dict[str, Any]:
    """`error` as the document shows it for `path`. FastAPI writes the document without null values
    (`jsonable_encoder(exclude_none=True)`), so `ManagerUnbound`'s `bound_manager_id: null`, which
    the response carries, is not in the example."""
    if _is_store(path):
        return _without_nulls(store_envelope(error))
    return _without_nulls({**core_envelope(error), "request_id": EXAMPLE_REQUEST_ID})


def _sources() -> list[Example]:
    """Everything an error example may be made from: each class's `example()`, the named examples of
    `api.openapi`."""
    modules = (core.errors, api.errors, core.users.security)
    out = [
        Example(cls.example_key(), cls.example())
        for cls in _all_classes()
        if cls.__module__ in {m.__name__ for m in modules}
    ]
    out += [value for value in vars(api.openapi).values() if isinstance(value, Example)]
    return out


def _documented(schema: dict[str, Any]) -> Iterator[tuple[str, str, int, str, dict[str, Any]]]:
    """(path, method, status, example name, value) of every error example of the document."""
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for status, response in operation.get("responses", {}).items():
                if not status.isdigit() or int(status) < 400:
                    continue
                for content in response.get("content", {}).values():
                    for name, example in content.get("examples", {}).items():
                        yield path, method, int(status), name, example["value"]


@pytest.fixture
async def openapi(anon: httpx.AsyncClient) -> dict[str, Any]:
    response = await anon.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _fits(template: str, message: str) -> bool:
    """`message` is `template` with some values filled in."""
    pattern = "".join(
        re.escape(literal) + ("(.+?)" if name is not None else "")
        for literal, name, _, _ in Formatter().parse(template)
    )
    return re.fullmatch(pattern, message) is not None


def _from_a_template(value: dict[str, Any], path: str, status: int) -> bool:
    """`value` is an instance of a class with its code and status, made with other values than its
    `example()` (`Example("order_not_found", OrderNotFound(789))`): its message fits the template
    and its `details` have the example's keys."""
    body = value["error"] if _is_store(path) else value
    for cls in _all_classes():
        example = cls.example()
        if cls.template is None or (cls.code, cls.status) != (body["code"], status):
            continue
        ours = _rendered(example, path)
        keys = (ours["error"] if _is_store(path) else ours)["details"].keys()
        if _fits(cls.template, body["message"]) and body["details"].keys() == keys:
            return True
    return False


async def test_every_error_example_is_a_rendered_error_class(openapi):
    sources = _sources()
    documented = list(_documented(openapi))
    assert len(documented) > 100  # every route documents its errors
    for path, method, status, name, value in documented:
        rendered = [_rendered(s.error, path) for s in sources if s.error.status == status]
        assert value in rendered or _from_a_template(value, path, status), (
            f"{method.upper()} {path} {status} {name!r} is not what the server renders: {value}"
        )


async def test_each_class_example_is_documented_as_rendered_where_declared(openapi):
    """Where a documented example has a class's name, status, code and sentence, it is that class's
    `example()` exactly as rendered (details, title and all). The same name may be another class's
    on other routes (`forbidden`: the role guard in the core API, the manager binding in the store)."""
    documented = list(_documented(openapi))
    seen: set[str] = set()
    for cls in _all_classes():
        example = cls.example()
        for path, method, status, name, value in documented:
            body = value["error"] if _is_store(path) else value
            rendered = _rendered(example, path)
            ours = rendered["error"] if _is_store(path) else rendered
            if (name, status, body["code"]) != (cls.example_key(), example.status, example.code):
                continue
            if body["message"] == ours["message"]:
                assert value == rendered, f"{cls.__name__} at {method.upper()} {path}: {value}"
                seen.add(cls.__name__)
    # The errors the routes declare by type are all found (a renamed example would drop out silently).
    for name in (
        "ProductNotFound",
        "OrderNotFound",
        "UserNotFound",
        "InsufficientStock",
        "ProductDiscontinued",
        "InvalidStatus",
        "InvalidStatusTransition",
        "IdempotencyKeyReused",
        "RoleGrantForbidden",
        "RoleChangeForbidden",
        "ManagerIdGrantForbidden",
        "ManagerIdTaken",
        "UsernameTaken",
        "LastAdmin",
        "DuplicateInBatch",
        "ManagerMismatch",
        "StoreRoleRequired",
        "ManagerUnbound",
        "RoleRequired",
        "TokenExpired",
        "RateLimitExceeded",
        "InternalError",
    ):
        assert name in seen, f"{name}'s example is in no route's documented responses"


# --- live answers against the document ------------------------------------------------------------

_NUMBER = re.compile(r"\d+")


def _shape(text: str) -> str:
    """A message with its numbers blanked (`prod_042` -> `prod_#`), the part a raise site words."""
    return _NUMBER.sub("#", text)


def _doc(schema: dict[str, Any], path: str, method: str, status: int, name: str) -> dict[str, Any]:
    response = schema["paths"][path][method]["responses"][str(status)]
    value: dict[str, Any] = response["content"]["application/json"]["examples"][name]["value"]
    return value["error"] if _is_store(path) else value


def assert_as_documented(
    response: httpx.Response, schema: dict[str, Any], path: str, method: str, name: str
) -> dict[str, Any]:
    """`response` is the documented example `name` of `path`/`method` up to its numbers: status,
    code, title (core), the message's words and the keys of `details`."""
    documented = _doc(schema, path, method, response.status_code, name)
    body = response.json()
    live = body["error"] if _is_store(path) else body
    assert live["code"] == documented["code"]
    assert _shape(live["message"]) == _shape(documented["message"]), (live["message"], documented["message"])
    assert live["details"].keys() == documented["details"].keys()
    if not _is_store(path):
        assert live["error"] == documented["error"]
        assert live["request_id"] == response.headers["x-request-id"]
    return live


async def test_missing_product_is_the_documented_404(client, openapi):
    response = await client.get("/products/987654")
    assert response.status_code == 404
    live = assert_as_documented(response, openapi, "/products/{product_id}", "get", "product_not_found")
    assert live["message"] == "The product with ID 987654 does not exist."


async def test_insufficient_stock_is_the_documented_400(client, openapi):
    product = make_product(name="Product A", stock=5)
    response = await client.post("/orders", json={"product_id": product["id"], "quantity": 10})
    assert response.status_code == 400
    live = assert_as_documented(response, openapi, "/orders", "post", "insufficient_stock")
    assert live["details"] == {"product_id": product["id"], "available": 5, "requested": 10}


async def test_reused_idempotency_key_is_the_documented_409(client, openapi):
    product = make_product(stock=10)
    key = _doc(openapi, "/orders", "post", 409, "conflict")["details"]["idempotency_key"]
    headers = {"Idempotency-Key": key}
    first = await client.post("/orders", json={"product_id": product["id"], "quantity": 1}, headers=headers)
    assert first.status_code == 202
    response = await client.post(
        "/orders", json={"product_id": product["id"], "quantity": 2}, headers=headers
    )
    assert response.status_code == 409
    live = assert_as_documented(response, openapi, "/orders", "post", "conflict")
    assert live["message"] == _doc(openapi, "/orders", "post", 409, "conflict")["message"]


async def test_role_guards_are_the_documented_403s(anon, openapi):
    customer = make_user(Role.CUSTOMER)
    manager = make_user(Role.MANAGER)
    staff = await anon.post("/products", json={"name": "X", "price": 1, "stock": 1}, headers=customer.bearer)
    assert staff.status_code == 403
    live = assert_as_documented(staff, openapi, "/products", "post", "forbidden")
    assert live["message"] == _doc(openapi, "/products", "post", 403, "forbidden")["message"]
    admin = await anon.get("/users", headers=manager.bearer)
    assert admin.status_code == 403
    live = assert_as_documented(admin, openapi, "/users", "get", "forbidden_admin")
    assert live["message"] == _doc(openapi, "/users", "get", 403, "forbidden_admin")["message"]


async def test_user_rules_are_the_documented_403_and_409(anon, openapi):
    username = _doc(openapi, "/users", "post", 409, "username_taken")["details"]["username"]
    customer = make_user(Role.CUSTOMER, username=username)
    role_change = await anon.patch(f"/users/{customer.id}", json={"role": "admin"}, headers=customer.bearer)
    assert role_change.status_code == 403
    assert_as_documented(role_change, openapi, "/users/{user_id}", "patch", "forbidden_role_change")
    grant = await anon.post(
        "/users", json={"username": "newmanager", "password": "password123", "role": "manager"}
    )
    assert grant.status_code == 403
    assert_as_documented(grant, openapi, "/users", "post", "forbidden_role")
    taken = await anon.post("/users", json={"username": customer.username, "password": "password123"})
    assert taken.status_code == 409
    assert_as_documented(taken, openapi, "/users", "post", "username_taken")
    last_admin = await anon.patch(f"/users/{ADMIN.id}", json={"role": "customer"}, headers=ADMIN.bearer)
    assert last_admin.status_code == 409
    assert_as_documented(last_admin, openapi, "/users/{user_id}", "patch", "last_admin")


async def test_expired_token_is_the_documented_401(anon, openapi):
    token = issue_token(
        ADMIN.principal,
        settings.effective_jwt_secret,
        1800,
        now=datetime.now(UTC) - timedelta(hours=2),
    )
    response = await anon.get("/orders", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == TokenExpired.challenge
    live = assert_as_documented(response, openapi, "/orders", "get", "invalid_token")
    assert live["message"] == TokenExpired.template


async def test_invalid_token_and_credentials_are_their_classes_sentences(anon, openapi):
    token = issue_token(ADMIN.principal, settings.effective_jwt_secret, 600)
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    response = await anon.get("/orders", headers={"Authorization": f"Bearer {tampered}"})
    assert response.status_code == 401
    assert response.json() == {
        **core_envelope(MalformedToken()),
        "request_id": response.headers["x-request-id"],
    }
    missing = await anon.get("/orders")
    assert missing.status_code == 401
    assert_as_documented(missing, openapi, "/orders", "get", "unauthorized")
    malformed = await anon.get("/orders", headers={"Authorization": "Basic !!!"})
    assert malformed.json()["message"] == MalformedCredentials.template


async def test_missing_store_product_is_the_documented_404_with_a_public_id(anon, openapi):
    response = await anon.post(
        "/api/inventory/discontinue", json={"manager_id": "mgr_123", "product_id": "prod_987654"}
    )
    assert response.status_code == 404
    live = assert_as_documented(response, openapi, "/api/inventory/discontinue", "post", "product_not_found")
    assert live == {
        "code": "PRODUCT_NOT_FOUND",
        "message": "The product with ID prod_987654 does not exist.",
        "details": {"product_id": "prod_987654"},
    }


@pytest.fixture(scope="module")
async def limited_app() -> AsyncIterator[FastAPI]:
    """An app whose store rate limit is 3 per hour (so the message's unit is the documented one)."""
    cfg = settings.model_copy(
        update={"store_rate_limit": "3/hour", "redis_timeout_seconds": LOADED_REDIS_TIMEOUT_SECONDS}
    )
    application = create_app(cfg, start_embedded_worker=False)
    async with application.router.lifespan_context(application):
        yield application


async def test_store_rate_limit_is_the_documented_429(limited_app, openapi):
    manager_id = f"mgr_{uuid.uuid4().int % 10**9}"
    transport = httpx.ASGITransport(app=limited_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://orderflow.test") as store:
        answers = [
            await store.get("/api/inventory/products", params={"manager_id": manager_id}) for _ in range(4)
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    live = assert_as_documented(answers[-1], openapi, "/api/inventory/products", "get", "rate_limited")
    assert live["details"]["manager_id"] == manager_id
    assert answers[-1].headers["retry-after"] == str(live["details"]["retry_after_seconds"])
