"""The HTTP edge against hostile input (CONTRACT.md, "Core API" and "Store API"):

- a NUL character (U+0000, which PostgreSQL text cannot hold) anywhere in a request, in a body field, a
  query, path or header parameter, is a 400 in the surface's envelope naming the field, never a 500,
  and nothing is written; the rule is checked for every string of every operation of the OpenAPI
  document, so a new route or schema cannot miss it;
- every length the API accepts fits the column that stores it: the longest accepted value works end to
  end, one character more is a 400 naming the field;
- HTTP method semantics (RFC 9110, section 15.5.6): a 405 carries `Allow` with every method of the
  path; a fixed path (`/products/below_requirement`, `/api/orders/process`) is that resource for every
  method, not an id of a neighbouring `/{id}` route; an id in a path is written in digits only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import text

from core.db import session_scope
from core.orders.models import IdempotencyKey
from core.types import MANAGER_ID_MAX_LENGTH
from tests.api.test_orders import wait_for_idle_queue
from tests.conftest import make_product

NUL = "\x00"
MGR = "mgr_123"
ORDER = {
    "manager_id": MGR,
    "customer": {"id": "cust_42", "email": "jane@example.com"},
    "products": [{"product_id": "prod_001", "quantity": 1}],
}
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def counts() -> dict[str, int]:
    with session_scope() as s:
        return {
            table: s.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("products", "orders", "idempotency_keys", "audit_log", "users")
        }


def nul_field(response: httpx.Response, path: str) -> dict[str, Any]:
    """The 400's entry for the field that held the NUL; asserts the envelope of the path's surface
    (nested under `/api/`, the core envelope elsewhere) and that nothing internal leaked."""
    assert response.status_code == 400, response.text
    for leak in ("Traceback", "psycopg", "sqlalchemy", "0x00", "/work/"):
        assert leak not in response.text
    body = response.json()
    if path.startswith("/api/"):
        assert set(body) == {"error"} and body["error"]["code"] == "INVALID_REQUEST", body
        details = body["error"]["details"]
        assert details["field"] == details["fields"][0]["field"]
        entry = details["fields"][0]
        assert "NUL" in body["error"]["message"]
    else:
        assert body["error"] == "Invalid input" and body["code"] == "INVALID_REQUEST", body
        entry = body["details"]["fields"][0]
        assert "NUL" in body["message"]
    assert entry["type"] == "nul_character", entry
    assert "NUL" in entry["message"]
    return entry


# --- NUL characters: the requests of the report ---------------------------------------------------


@pytest.mark.parametrize("field", ["name", "description", "manager_id"])
async def test_nul_in_a_new_products_text_is_400_naming_it(client, field):
    before = counts()
    body = {"name": "Product A", "price": 1, field: f"a{NUL}b"}
    response = await client.post("/products", json=body)
    entry = nul_field(response, "/products")
    assert (entry["field"], entry["in"]) == (field, "body")
    assert counts() == before


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize("field", ["name", "description", "manager_id"])
async def test_nul_in_a_product_update_is_400_naming_it(client, method, field):
    product = make_product()
    response = await client.request(method, f"/products/{product['id']}", json={field: NUL})
    assert nul_field(response, "/products")["field"] == field
    assert (await client.get(f"/products/{product['id']}")).json() == product


async def test_nul_in_a_store_product_name_is_400_naming_it(anon):
    before = counts()
    batch = {"manager_id": MGR, "products": [{"name": f"A{NUL}", "price": 1, "quantity": 1}]}
    response = await anon.post("/api/inventory/products", json=batch)
    assert nul_field(response, "/api/inventory/products")["field"] == "products[0].name"
    assert counts() == before


async def test_nul_in_a_store_customer_id_is_400_and_no_order(anon):
    await anon.post(
        "/api/inventory/products",
        json={"manager_id": MGR, "products": [{"name": "A", "price": 1, "quantity": 5}]},
    )
    before = counts()
    body = {**ORDER, "customer": {"id": f"cust{NUL}42", "email": "jane@example.com"}}
    response = await anon.post("/api/orders/process", json=body)
    assert nul_field(response, "/api/orders/process")["field"] == "customer.id"
    assert counts() == before


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/products", "q"),
        ("/products", "manager_id"),
        ("/audit-log", "actor"),
        ("/audit-log", "entity"),
        ("/audit-log", "entity_id"),
        ("/audit-log", "action"),
        ("/audit-log", "request_id"),
        ("/api/inventory/products", "manager_id"),
    ],
)
async def test_nul_in_a_query_parameter_is_400_naming_it(client, path, param):
    response = await client.get(f"{path}?{param}=%00")
    entry = nul_field(response, path)
    if path.startswith("/api/"):
        assert entry["field"] == param
    else:
        assert (entry["field"], entry["in"]) == (f"query.{param}", "query")


async def test_nul_in_a_header_is_400_naming_it(client):
    product = make_product()
    body = {"product_id": product["id"], "quantity": 1}
    response = await client.post("/orders", json=body, headers={"Idempotency-Key": f"k{NUL}"})
    entry = nul_field(response, "/orders")
    assert (entry["field"], entry["in"]) == ("header.Idempotency-Key", "header")
    assert counts()["orders"] == 0


async def test_nul_in_basic_credentials_is_a_clear_4xx(anon):
    from base64 import b64encode

    for user, password in ((f"ad{NUL}min", "admin-password"), ("admin", f"admin-pass{NUL}")):
        header = "Basic " + b64encode(f"{user}:{password}".encode()).decode()
        response = await anon.post("/login", headers={"Authorization": header})
        assert response.status_code in (400, 401), response.text


async def test_nul_without_credentials_on_a_protected_route_is_401(anon):
    response = await anon.post("/products", json={"name": NUL, "price": 1})
    assert response.status_code == 401
    assert "www-authenticate" in response.headers


async def test_the_six_characters_backslash_u0000_are_ordinary_text(client):
    """Only the character U+0000 is refused, not text that spells its JSON escape."""
    product = make_product(name="A \\u0000 B", description="\\u0000")
    assert product["name"] == "A \\u0000 B"
    response = await client.get("/products", params={"q": "\\u0000"})
    assert [p["id"] for p in response.json()] == [product["id"]]


# --- NUL characters: every string of every operation of the OpenAPI document ----------------------


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _can_be_string(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    schema = _resolve(schema, components)
    if schema.get("type") == "string" or not schema:
        return True
    return any(_can_be_string(s, components) for s in schema.get("anyOf", []) + schema.get("oneOf", []))


def string_leaves(
    schema: dict[str, Any], components: dict[str, Any], path: tuple = (), depth: int = 0
) -> list[tuple]:
    """The location (keys and list indexes) of every value of `schema` that may be a string."""
    schema = _resolve(schema, components)
    if depth > 6:
        return []
    if _can_be_string(schema, components) and path:
        return [path]
    leaves: list[tuple] = []
    for alternative in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        leaves += string_leaves(alternative, components, path, depth + 1)
    for name, sub in schema.get("properties", {}).items():
        leaves += string_leaves(sub, components, (*path, name), depth + 1)
    if "items" in schema:
        leaves += string_leaves(schema["items"], components, (*path, 0), depth + 1)
    return list(dict.fromkeys(leaves))


def body_holding(location: tuple, value: str) -> Any:
    """The smallest JSON document with `value` at `location`."""
    if not location:
        return value
    head, rest = location[0], location[1:]
    return [body_holding(rest, value)] if isinstance(head, int) else {head: body_holding(rest, value)}


def field_name(location: tuple, store: bool) -> str:
    if not store:
        return ".".join(str(part) for part in location)
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


PATH_VALUES = {"order_id": "ord_001", "product_id": "1", "user_id": "1"}


def _url(path: str, replace: dict[str, str]) -> str:
    for name, value in {**PATH_VALUES, **replace}.items():
        path = path.replace("{" + name + "}", value)
    return path


def nul_probes(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str, str]]:
    """(method, url, request kwargs, field, where) for each string the document lets a client send."""
    components = openapi.get("components", {}).get("schemas", {})
    probes = []
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            for param in op.get("parameters", []):
                if not _can_be_string(param.get("schema", {}), components):
                    continue
                name, where = param["name"], param["in"]
                if where == "path":
                    probes.append((method, _url(path, {name: quote(f"x{NUL}")}), {}, name, where))
                elif where == "query":
                    probes.append((method, _url(path, {}), {"params": {name: f"x{NUL}"}}, name, where))
                elif where == "header":
                    probes.append((method, _url(path, {}), {"headers": {name: f"x{NUL}"}}, name, where))
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content:
                for location in string_leaves(content["schema"], components):
                    kwargs = {"json": body_holding(location, f"x{NUL}")}
                    name = field_name(location, path.startswith("/api/"))
                    probes.append((method, _url(path, {}), kwargs, name, "body"))
    # The core envelope names a parameter with where it is (`query.q`); the store API by its name.
    return [
        (m, url, kw, name if where == "body" or url.startswith("/api/") else f"{where}.{name}", where)
        for m, url, kw, name, where in probes
    ]


async def test_every_string_of_every_operation_refuses_a_nul(client):
    openapi = (await client.get("/openapi.json")).json()
    probes = nul_probes(openapi)
    # The walk found the strings the report named, and many more (so it cannot pass vacuously).
    found = {(url, field) for _, url, _, field, _ in probes}
    for expected in [
        ("/products", "name"),
        ("/products", "query.q"),
        ("/products/1", "manager_id"),
        ("/audit-log", "query.entity_id"),
        ("/api/inventory/products", "products[0].name"),
        ("/api/orders/process", "customer.id"),
        ("/api/orders/process", "Idempotency-Key"),
        ("/users", "username"),
    ]:
        assert expected in found, expected
    assert len(probes) >= 40, len(probes)
    before = counts()
    failures = []
    for method, url, kwargs, field, where in probes:
        response = await client.request(method, url, **kwargs)
        try:
            entry = nul_field(response, url)
            assert entry["field"] == field, (entry, field)
            if not url.startswith("/api/"):
                assert entry["in"] == where
        except AssertionError as exc:
            failures.append(f"{method.upper()} {url} {where} {field}: {response.status_code} {exc}")
    assert not failures, "\n".join(failures)
    assert counts() == before


# --- lengths: every accepted length fits its column -----------------------------------------------


@pytest.mark.usefixtures("celery_worker")
async def test_store_order_with_the_longest_manager_id_and_an_idempotency_key(anon):
    """`idempotency_keys.scope` holds `store:<manager_id>`: the longest manager id must fit."""
    manager = "m" * MANAGER_ID_MAX_LENGTH
    batch = {"manager_id": manager, "products": [{"name": "N" * 200, "price": 2.5, "quantity": 5}]}
    seeded = await anon.post("/api/inventory/products", json=batch)
    assert seeded.status_code == 201, seeded.text
    product_id = seeded.json()["products"][0]["id"]
    body = {**ORDER, "manager_id": manager, "products": [{"product_id": product_id, "quantity": 2}]}
    headers = {"Idempotency-Key": "k" * 255}
    first = await anon.post("/api/orders/process", json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["total_amount"] == 5.0
    again = await anon.post("/api/orders/process", json=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["order_id"] == first.json()["order_id"]
    assert again.headers["idempotent-replayed"] == "true"
    with session_scope() as s:
        assert s.execute(text("SELECT scope FROM idempotency_keys")).scalar_one() == f"store:{manager}"
        actors = s.execute(text("SELECT DISTINCT actor FROM audit_log")).scalars().all()
        assert actors == [f"manager:{manager}"]
    wait_for_idle_queue()


def test_the_idempotency_scope_column_holds_the_longest_store_scope():
    assert IdempotencyKey.__table__.c.scope.type.length >= len("store:") + MANAGER_ID_MAX_LENGTH


@pytest.mark.parametrize(
    ("field", "longest"),
    [("name", 200), ("description", 10_000), ("manager_id", MANAGER_ID_MAX_LENGTH)],
)
async def test_product_text_lengths(client, field, longest):
    created = await client.post("/products", json={"name": "A", "price": 1, field: "x" * longest})
    assert created.status_code == 201, created.text
    assert created.json()[field] == "x" * longest
    too_long = await client.post("/products", json={"name": "A", "price": 1, field: "x" * (longest + 1)})
    assert too_long.status_code == 400
    assert too_long.json()["details"]["fields"][0]["field"] == field
    pid = created.json()["id"]
    updated = await client.patch(f"/products/{pid}", json={field: "y" * longest})
    assert updated.status_code == 200 and updated.json()[field] == "y" * longest
    refused = await client.patch(f"/products/{pid}", json={field: "y" * (longest + 1)})
    assert refused.status_code == 400
    assert refused.json()["details"]["fields"][0]["field"] == field


async def test_store_batch_lengths(anon):
    manager = "m" * MANAGER_ID_MAX_LENGTH
    ok = await anon.post(
        "/api/inventory/products",
        json={"manager_id": manager, "products": [{"name": "n" * 200, "price": 1, "quantity": 1}]},
    )
    assert ok.status_code == 201, ok.text
    listed = await anon.get("/api/inventory/products", params={"manager_id": manager})
    assert [p["name"] for p in listed.json()["products"]] == ["n" * 200]
    for body, field in [
        ({"manager_id": manager + "m", "products": [{"name": "n", "price": 1, "quantity": 1}]}, "manager_id"),
        (
            {"manager_id": manager, "products": [{"name": "n" * 201, "price": 1, "quantity": 1}]},
            "products[0].name",
        ),
    ]:
        response = await anon.post("/api/inventory/products", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["details"]["field"] == field


async def test_store_order_lengths_over_the_limit(anon):
    for body, headers, field in [
        ({**ORDER, "manager_id": "m" * (MANAGER_ID_MAX_LENGTH + 1)}, {}, "manager_id"),
        ({**ORDER, "customer": {"id": "c" * 65, "email": "a@example.com"}}, {}, "customer.id"),
        (ORDER, {"Idempotency-Key": "k" * 256}, "Idempotency-Key"),
    ]:
        response = await anon.post("/api/orders/process", json=body, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["details"]["field"] == field
    assert counts()["orders"] == 0


async def test_user_lengths(client):
    ok = await client.post(
        "/users",
        json={
            "username": "u" * 50,
            "password": "p" * 72,
            "role": "manager",
            "manager_id": "m" * MANAGER_ID_MAX_LENGTH,
        },
    )
    assert ok.status_code == 201, ok.text
    for field, value in [("username", "v" * 51), ("manager_id", "n" * (MANAGER_ID_MAX_LENGTH + 1))]:
        body = {"username": "valid_name", "password": "p" * 8, "role": "manager", field: value}
        response = await client.post("/users", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["details"]["fields"][0]["field"] == field


@pytest.mark.usefixtures("celery_worker")
async def test_core_order_idempotency_key_lengths(client):
    product = make_product()
    body = {"product_id": product["id"], "quantity": 1}
    ok = await client.post("/orders", json=body, headers={"Idempotency-Key": "k" * 255})
    assert ok.status_code in (201, 202), ok.text
    refused = await client.post("/orders", json=body, headers={"Idempotency-Key": "k" * 256})
    assert refused.status_code == 400
    assert refused.json()["details"]["fields"][0]["field"] == "header.Idempotency-Key"
    wait_for_idle_queue()


async def test_the_longest_request_id_is_stored_with_the_audit_row(client):
    request_id = "r" * 128
    make_product()
    response = await client.post(
        "/products", json={"name": "B", "price": 1}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 201
    with session_scope() as s:
        stored = s.execute(text("SELECT request_id FROM audit_log ORDER BY id DESC LIMIT 1")).scalar_one()
    assert stored == request_id


# --- HTTP method semantics (RFC 9110) ---------------------------------------------------------------


def allow(response: httpx.Response) -> set[str]:
    return {m.strip() for m in response.headers["allow"].split(",")}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/orders/process", {"POST"}),
        ("PUT", "/api/orders/process", {"POST"}),
        ("PUT", "/products/below_requirement", {"GET"}),
        ("DELETE", "/products/below_requirement", {"GET"}),
        ("DELETE", "/products", {"GET", "POST"}),
        ("POST", "/products/1", {"GET", "PUT", "PATCH", "DELETE"}),
    ],
)
async def test_405_lists_every_method_of_the_path(client, method, path, allowed):
    response = await client.request(method, path)
    assert response.status_code == 405, response.text
    assert allow(response) == allowed
    if path.startswith("/api/"):
        assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    else:
        assert response.json()["code"] == "METHOD_NOT_ALLOWED"


async def test_every_documented_path_answers_405_with_its_methods(client):
    openapi = (await client.get("/openapi.json")).json()
    checked = 0
    for path, item in openapi["paths"].items():
        documented = {m.upper() for m in item if m.upper() in HTTP_METHODS}
        url = _url(path, {})
        for method in HTTP_METHODS:
            if method in documented:
                continue
            response = await client.request(method, url)
            assert response.status_code == 405, (method, url, response.status_code, response.text)
            assert allow(response) == documented, (method, url)
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("raw", ["1.0", "+1", "1_0", " 1", "1e0", "0x1"])
async def test_a_path_id_is_written_in_digits(client, raw):
    product = make_product()
    assert product["id"] == 1
    for url in (f"/products/{quote(raw)}", f"/products/{quote(raw)}/movements", f"/users/{quote(raw)}"):
        response = await client.get(url)
        assert response.status_code == 400, (url, response.text)
        assert response.json()["details"]["fields"][0]["in"] == "path"
