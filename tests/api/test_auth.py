"""Authentication over HTTP: HTTP Basic, JWT bearer tokens, `POST /login`, the public routes, the
OpenAPI security schemes, the verified-credential cache, timing of failed logins and the settings the
API refuses to start with (CONTRACT.md, "Users and authentication" and the "Core API" error table).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
import redis
from fastapi import FastAPI
from sqlalchemy import text

from api.main import ConfigError, check_settings, create_app
from core.config import Settings, settings
from core.db import get_sync_engine
from core.users.models import Role
from core.users.security import Principal, hash_cost, issue_token
from tests.apps import running_app as shared_running_app
from tests.conftest import ADMIN, TestUser, basic_header, make_product, make_user
from workers.celery_app import ORDERS_QUEUE_KEY

BASIC_CHALLENGE = 'Basic realm="orderflow"'
BEARER_CHALLENGE = 'Bearer error="invalid_token"'
BASE_URL = "http://orderflow.test"
SECRET = settings.effective_jwt_secret


# --- helpers -------------------------------------------------------------------------------------


def assert_401(response: httpx.Response, challenge: str = BASIC_CHALLENGE) -> dict:
    """The contract's 401: envelope, request id and the exact `WWW-Authenticate` challenge."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == challenge
    body = response.json()
    assert body["error"] == "Unauthorized"
    assert body["code"] == "UNAUTHORIZED"
    assert isinstance(body["message"], str) and body["message"].strip()
    assert body["request_id"] and body["request_id"] == response.headers["x-request-id"]
    return body


def b64url(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def claims_of(principal: Principal, **overrides: object) -> dict:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(principal.id),
        "username": principal.username,
        "role": principal.role.value,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def raw_basic(payload: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(payload).decode()}


def http(application: FastAPI, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url=BASE_URL, headers=headers or {}
    )


@contextlib.asynccontextmanager
async def running_app(**overrides: object) -> AsyncIterator[FastAPI]:
    """A dedicated app (its own Authenticator, cache and bcrypt cost) with its lifespan running.

    It runs without `REDIS_URL`: no order-event relay, which these tests never need (they do not
    long-poll), so that an app started and stopped within milliseconds does not race the relay's
    connection to Redis (that race has its own test, `test_app_stops_promptly_right_after_a_quick_401`)."""
    overrides.setdefault("redis_url", None)
    async with shared_running_app(Settings(**overrides)) as application:
        yield application


def count_bcrypt_checks(application: FastAPI) -> list[bool]:
    """Instrument the app's bcrypt checker: every call appends whether a stored hash was given."""
    checker = application.state.auth.checker
    original = checker.check
    calls: list[bool] = []

    def counting(password: str, password_hash: str | None) -> bool:
        calls.append(password_hash is not None)
        return original(password, password_hash)

    checker.check = counting
    return calls


def settle_order_queue(timeout: float = 10) -> None:
    """Drop the order messages a test sent and wait until no worker holds one (late ack keeps a
    message in the unacked hash until its task committed). Without a worker this returns at once;
    with the session's worker running (other modules start it) no message of this test can reach
    the next test's orders, whose ids restart at 1."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        client.delete(ORDERS_QUEUE_KEY)
        unacked = f"{settings.redis_key_prefix}unacked"
        deadline = time.monotonic() + timeout
        idle = 0
        while time.monotonic() < deadline and idle < 2:
            idle = idle + 1 if not client.hlen(unacked) else 0
            time.sleep(0.02)
    finally:
        client.close()


@pytest.fixture
def quiet_queue():
    yield
    settle_order_queue()


def stored_hash(user_id: int) -> str:
    with get_sync_engine().connect() as conn:
        return conn.execute(
            text("SELECT password_hash FROM users WHERE id = :id"), {"id": user_id}
        ).scalar_one()


# --- 401: Basic ----------------------------------------------------------------------------------


async def test_missing_authorization_is_401_with_basic_challenge(anon):
    body = assert_401(await anon.get("/products"))
    assert body["message"] == "Authentication required: send Basic credentials or a Bearer token."
    assert body["details"] == {}


async def test_wrong_password_and_unknown_user_get_the_same_401(anon):
    user = make_user(Role.CUSTOMER)
    wrong = assert_401(await anon.get("/products", headers=basic_header(user.username, "not-the-password")))
    unknown = assert_401(await anon.get("/products", headers=basic_header("nobody-here", "not-the-password")))
    assert wrong["message"] == unknown["message"] == "The username or password is wrong."
    assert wrong["details"] == unknown["details"]
    assert user.username not in wrong["message"]


async def test_wrong_password_of_the_admin_is_401(anon):
    assert_401(await anon.get("/products", headers=basic_header(ADMIN.username, ADMIN.password + "x")))


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Basic !!!not-base64!!!", id="not-base64"),
        pytest.param("Basic " + base64.b64encode(b"no-colon-here").decode(), id="no-colon"),
        pytest.param("Basic " + base64.b64encode(b"\xff\xfe\xfd:\xff\xff").decode(), id="not-utf8"),
        pytest.param("Basic " + base64.b64encode(b":password123").decode(), id="empty-username"),
        pytest.param("Basic " + base64.b64encode(b"admin:admin-password")[:-3].decode(), id="truncated"),
        pytest.param("Basic", id="no-credentials"),
        pytest.param("Basic ", id="blank-credentials"),
        pytest.param("Basic YWRtaW46YWRtaW4tcGFzc3dvcmQ=extra", id="trailing-garbage"),
    ],
)
async def test_malformed_basic_is_401_not_500(anon, header):
    body = assert_401(await anon.get("/products", headers={"Authorization": header}))
    assert body["message"] == "The Basic credentials must be base64 of 'username:password'."
    assert body["details"] == {}


async def test_non_ascii_bytes_in_the_basic_header_are_401(anon):
    response = await anon.get("/products", headers={"Authorization": "Basic w6nDqcOp:abc".encode("latin-1")})
    assert_401(response)
    response = await anon.get("/products", headers={"Authorization": b"Basic \xe9\xe9\xe9"})
    assert_401(response)


async def test_nul_byte_in_the_basic_username_is_401_not_500(anon):
    assert_401(await anon.get("/products", headers=raw_basic(b"ad\x00min:admin-password")))


async def test_nul_byte_in_the_basic_password_is_401_not_500(anon):
    assert_401(await anon.get("/products", headers=raw_basic(b"admin:admin-\x00password")))
    assert_401(await anon.get("/products", headers=raw_basic(b"nobody-here:pass\x00word")))


async def test_very_long_basic_credentials_are_401(anon):
    assert_401(await anon.get("/products", headers=basic_header("u" * 2000, "p" * 2000)))
    assert_401(await anon.get("/products", headers=basic_header(ADMIN.username, "p" * 200)))


@pytest.mark.parametrize("header", ["Digest x", "Token abc", "NTLM TlRMTVNTUAAB", "Negotiate", "Basicfoo"])
async def test_unsupported_scheme_is_401(anon, header):
    body = assert_401(await anon.get("/products", headers={"Authorization": header}))
    scheme = header.partition(" ")[0]
    assert body["message"] == f"Unsupported authorization scheme '{scheme}': use Basic or Bearer."
    assert body["details"] == {}


async def test_unsupported_scheme_is_named_up_to_20_characters(anon):
    body = assert_401(await anon.get("/products", headers={"Authorization": "X" * 30 + " abc"}))
    assert body["message"] == f"Unsupported authorization scheme '{'X' * 20}': use Basic or Bearer."


async def test_basic_scheme_name_is_case_insensitive(anon):
    token = base64.b64encode(f"{ADMIN.username}:{ADMIN.password}".encode()).decode()
    response = await anon.get("/products", headers={"Authorization": f"basic {token}"})
    assert response.status_code == 200, response.text


# --- 401: Bearer ---------------------------------------------------------------------------------


def tampered_payload(token: str) -> str:
    """The token with its payload re-encoded to claim the admin role, the signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["role"] = "admin"
    return f"{header}.{b64url(claims)}.{signature}"


def tampered_signature(token: str) -> str:
    """The token with one character in the middle of its signature changed (not the last one,
    whose low bits are base64 padding)."""
    header, payload, signature = token.split(".")
    i = len(signature) // 2
    swapped = "A" if signature[i] != "A" else "B"
    return f"{header}.{payload}.{signature[:i]}{swapped}{signature[i + 1 :]}"


def tampered_payload_char(token: str) -> str:
    header, payload, signature = token.split(".")
    i = len(payload) // 2
    swapped = "A" if payload[i] != "A" else "B"
    return f"{header}.{payload[:i]}{swapped}{payload[i + 1 :]}.{signature}"


def bad_tokens() -> list:
    """(id, builder(principal) -> token) of tokens that must all be refused."""
    return [
        pytest.param(lambda p: tampered_payload(issue_token(p, SECRET, 600)), id="payload-role-changed"),
        pytest.param(lambda p: tampered_payload_char(issue_token(p, SECRET, 600)), id="payload-char-changed"),
        pytest.param(lambda p: tampered_signature(issue_token(p, SECRET, 600)), id="signature-char-changed"),
        pytest.param(
            lambda p: ".".join(issue_token(p, SECRET, 600).split(".")[:2]) + ".", id="signature-removed"
        ),
        pytest.param(
            lambda p: issue_token(p, SECRET, 1800, now=datetime.now(UTC) - timedelta(hours=2)),
            id="expired",
        ),
        pytest.param(
            lambda p: f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims_of(p))}.",
            id="alg-none-by-hand",
        ),
        pytest.param(
            lambda p: f"{b64url({'alg': 'None', 'typ': 'JWT'})}.{b64url(claims_of(p))}.",
            id="alg-None-by-hand",
        ),
        pytest.param(lambda p: jwt.encode(claims_of(p), None, algorithm="none"), id="alg-none-pyjwt"),
        pytest.param(
            lambda p: jwt.encode(claims_of(p), "another-secret-that-is-32-bytes-long!!", algorithm="HS256"),
            id="wrong-secret",
        ),
        pytest.param(lambda p: jwt.encode(claims_of(p), SECRET, algorithm="HS512"), id="hs512"),
        pytest.param(lambda p: jwt.encode(claims_of(p), SECRET, algorithm="HS384"), id="hs384"),
        pytest.param(
            lambda p: (
                f"{b64url({'alg': 'RS256', 'typ': 'JWT'})}."
                + jwt.encode(claims_of(p), SECRET, algorithm="HS256").split(".", 1)[1]
            ),
            id="header-alg-rs256",
        ),
        pytest.param(lambda p: jwt.encode(claims_of(p, exp=...), SECRET, algorithm="HS256"), id="no-exp"),
        pytest.param(lambda p: jwt.encode(claims_of(p, iat=...), SECRET, algorithm="HS256"), id="no-iat"),
        pytest.param(lambda p: jwt.encode(claims_of(p, sub=...), SECRET, algorithm="HS256"), id="no-sub"),
        pytest.param(
            lambda p: jwt.encode(claims_of(p, sub="abc"), SECRET, algorithm="HS256"), id="sub-not-int"
        ),
        pytest.param(
            lambda p: jwt.encode(claims_of(p, sub="1.5"), SECRET, algorithm="HS256"), id="sub-float"
        ),
        pytest.param(
            lambda p: jwt.encode(claims_of(p, sub=p.id), SECRET, algorithm="HS256"), id="sub-not-string"
        ),
        pytest.param(
            lambda p: jwt.encode(claims_of(p, role="superuser"), SECRET, algorithm="HS256"), id="unknown-role"
        ),
        pytest.param(
            lambda p: jwt.encode(claims_of(p, role=None), SECRET, algorithm="HS256"), id="null-role"
        ),
        pytest.param(
            lambda p: jwt.encode(claims_of(p, username=...), SECRET, algorithm="HS256"), id="no-username"
        ),
        pytest.param(
            lambda p: jwt.encode(claims_of(p, exp="tomorrow"), SECRET, algorithm="HS256"),
            id="exp-not-a-number",
        ),
        pytest.param(lambda p: "not-a-jwt", id="garbage"),
        pytest.param(lambda p: "a.b.c", id="three-garbage-parts"),
        pytest.param(lambda p: issue_token(p, SECRET, 600) + "x", id="trailing-char"),
    ]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("build", bad_tokens())
async def test_bad_bearer_token_is_401_invalid_token(anon, build):
    user = make_user(Role.CUSTOMER)
    token = build(user.principal)
    assert_401(await anon.get("/products", headers=bearer(token)), BEARER_CHALLENGE)


async def test_expired_token_message_says_it_expired(anon):
    token = issue_token(ADMIN.principal, SECRET, 1800, now=datetime.now(UTC) - timedelta(hours=2))
    body = assert_401(await anon.get("/products", headers=bearer(token)), BEARER_CHALLENGE)
    assert "expired" in body["message"].lower()


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer    ", "bearer"])
async def test_empty_bearer_is_401_invalid_token(anon, header):
    body = assert_401(await anon.get("/products", headers={"Authorization": header}), BEARER_CHALLENGE)
    assert body["message"] == "The Bearer token is empty."
    assert body["details"] == {}


async def test_valid_bearer_token_is_accepted_and_scheme_is_case_insensitive(anon):
    token = issue_token(ADMIN.principal, SECRET, 600)
    assert (await anon.get("/products", headers=bearer(token))).status_code == 200
    assert (await anon.get("/products", headers={"Authorization": f"bearer {token}"})).status_code == 200


async def test_a_token_of_the_seeded_secret_is_not_valid_on_an_app_with_another_secret():
    token = issue_token(ADMIN.principal, SECRET, 600)
    async with (
        running_app(jwt_secret_key="a-completely-different-secret-of-32+bytes") as application,
        http(application, bearer(token)) as c,
    ):
        assert_401(await c.get("/products"), BEARER_CHALLENGE)


# --- POST /login ---------------------------------------------------------------------------------


async def test_login_returns_a_bearer_token(anon):
    before = int(time.time())
    response = await anon.post("/login", headers=ADMIN.basic)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.jwt_expires_seconds
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    claims = jwt.decode(body["access_token"], settings.effective_jwt_secret, algorithms=["HS256"])
    assert claims["sub"] == str(ADMIN.id)
    assert claims["username"] == ADMIN.username
    assert claims["role"] == "admin"
    assert before - 2 <= claims["iat"] <= int(time.time()) + 2
    assert claims["exp"] - claims["iat"] == body["expires_in"]

    products = await anon.get("/products", headers=bearer(body["access_token"]))
    assert products.status_code == 200, products.text


async def test_login_token_of_a_customer_carries_the_customer_role(anon):
    user = make_user(Role.CUSTOMER)
    response = await anon.post("/login", headers=user.basic)
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["username"], claims["role"]) == (str(user.id), user.username, "customer")
    # The token carries the customer's role: writing products is still forbidden.
    forbidden = await anon.post(
        "/products",
        json={"name": "X", "price": 1, "stock": 1},
        headers=bearer(response.json()["access_token"]),
    )
    assert forbidden.status_code == 403


async def test_login_with_wrong_password_or_unknown_user_is_401(anon):
    wrong = assert_401(await anon.post("/login", headers=basic_header(ADMIN.username, "wrong-password")))
    unknown = assert_401(await anon.post("/login", headers=basic_header("nobody-at-all", "wrong-password")))
    assert wrong["message"] == unknown["message"]


async def test_login_with_a_bearer_header_is_401(anon):
    assert_401(await anon.post("/login", headers=ADMIN.bearer))


async def test_login_without_a_header_is_401(anon):
    assert_401(await anon.post("/login"))


async def test_login_with_malformed_basic_is_401(anon):
    assert_401(await anon.post("/login", headers={"Authorization": "Basic ???"}))
    assert_401(await anon.post("/login", headers={"Authorization": "Digest x"}))


async def test_login_is_case_insensitive_on_the_username(anon):
    response = await anon.post("/login", headers=basic_header("ADMIN", ADMIN.password))
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], SECRET, algorithms=["HS256"])
    assert claims["username"] == "admin"
    assert claims["sub"] == str(ADMIN.id)


async def test_login_password_is_case_sensitive(anon):
    assert_401(await anon.post("/login", headers=basic_header(ADMIN.username, ADMIN.password.upper())))


async def test_a_password_containing_colons_works(anon):
    created = await anon.post("/users", json={"username": "colon-user", "password": "pa:ss:word:1"})
    assert created.status_code == 201, created.text
    assert (await anon.post("/login", headers=basic_header("colon-user", "pa:ss:word:1"))).status_code == 200


# --- Basic on protected routes, public routes ----------------------------------------------------


async def test_basic_works_on_protected_routes(client, anon, quiet_queue):
    product = make_product(stock=5)
    user = make_user(Role.CUSTOMER)
    listed = await anon.get("/products", headers=user.basic)
    assert listed.status_code == 200
    assert [p["id"] for p in listed.json()] == [product["id"]]
    order = await anon.post("/orders", json={"product_id": product["id"], "quantity": 1}, headers=user.basic)
    assert order.status_code == 202, order.text
    assert order.json()["user_id"] == user.id
    created = await anon.post("/products", json={"name": "B", "price": 1, "stock": 1}, headers=ADMIN.basic)
    assert created.status_code == 201, created.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs"])
async def test_public_routes_need_no_credentials(anon, path):
    response = await anon.get(path)
    assert response.status_code == 200, response.text
    assert "www-authenticate" not in response.headers


async def test_registration_of_a_customer_needs_no_credentials(anon):
    response = await anon.post("/users", json={"username": "public-reg", "password": "password123"})
    assert response.status_code == 201, response.text
    assert response.json()["role"] == "customer"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/products"),
        ("GET", "/products/1"),
        ("GET", "/products/below_requirement"),
        ("POST", "/products"),
        ("GET", "/orders"),
        ("POST", "/orders"),
        ("GET", "/orders/1"),
        ("POST", "/orders/1/cancel"),
        ("PUT", "/orders/1/status"),
        ("GET", "/users"),
        ("GET", "/users/1"),
        ("PATCH", "/users/1"),
        ("GET", "/metrics"),
    ],
)
async def test_every_protected_route_is_401_without_credentials(anon, method, path):
    assert_401(await anon.request(method, path, json={}))


# --- OpenAPI -------------------------------------------------------------------------------------


async def test_openapi_declares_basic_and_bearer_schemes(anon):
    doc = (await anon.get("/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["basicAuth"]["type"] == "http"
    assert schemes["basicAuth"]["scheme"] == "basic"
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["bearerAuth"]["bearerFormat"] == "JWT"

    paths = doc["paths"]
    for path, method in (("/products", "get"), ("/orders", "post"), ("/users", "get"), ("/metrics", "get")):
        security = paths[path][method]["security"]
        assert {"basicAuth": []} in security, (path, method)
        assert {"bearerAuth": []} in security, (path, method)
        assert {} not in security, (path, method)
    for path in ("/healthz", "/readyz"):
        assert not paths[path]["get"].get("security"), path
    # Registration: credentials optional.
    assert {} in paths["/users"]["post"]["security"]


# --- the credential cache ------------------------------------------------------------------------


async def test_cache_skips_bcrypt_for_a_verified_password():
    user = make_user(Role.CUSTOMER)
    async with running_app(auth_cache_seconds=300) as application:
        calls = count_bcrypt_checks(application)
        cache = application.state.auth.cache
        async with http(application, user.basic) as c:
            assert (await c.get("/products")).status_code == 200
            assert calls == [True]
            assert len(cache) == 1
            assert cache.verified(user.id, stored_hash(user.id), user.password)
            assert not cache.verified(user.id, stored_hash(user.id), "another-password")

            assert (await c.get("/products")).status_code == 200
            assert (await c.get("/products/below_requirement")).status_code == 200
            assert calls == [True]  # bcrypt was not called again


async def test_cache_is_per_user_and_a_wrong_password_for_a_cached_user_still_fails():
    user = make_user(Role.CUSTOMER)
    other = make_user(Role.CUSTOMER)
    async with running_app(auth_cache_seconds=300) as application:
        calls = count_bcrypt_checks(application)
        async with http(application) as c:
            assert (await c.get("/products", headers=user.basic)).status_code == 200
            assert (await c.get("/products", headers=other.basic)).status_code == 200
            assert len(calls) == 2
            assert_401(await c.get("/products", headers=basic_header(user.username, "password1234")))
            assert len(calls) == 3
            # The right password is still remembered after a failed attempt.
            assert (await c.get("/products", headers=user.basic)).status_code == 200
            assert len(calls) == 3


async def test_wrong_password_is_never_cached():
    user = make_user(Role.CUSTOMER)
    async with running_app(auth_cache_seconds=300) as application:
        calls = count_bcrypt_checks(application)
        async with http(application, basic_header(user.username, "wrong-password")) as c:
            assert_401(await c.get("/products"))
            assert_401(await c.get("/products"))
        assert calls == [True, True]
        assert len(application.state.auth.cache) == 0


async def test_unknown_user_is_never_cached_and_costs_a_bcrypt_check_each_time():
    async with running_app(auth_cache_seconds=300) as application:
        calls = count_bcrypt_checks(application)
        async with http(application, basic_header("ghost-user", "password123")) as c:
            assert_401(await c.get("/products"))
            assert_401(await c.get("/products"))
        assert calls == [False, False]
        assert len(application.state.auth.cache) == 0


async def test_password_change_invalidates_the_cache():
    user = make_user(Role.CUSTOMER)
    async with running_app(auth_cache_seconds=300) as application:
        calls = count_bcrypt_checks(application)
        async with http(application) as c:
            assert (await c.get("/products", headers=user.basic)).status_code == 200
            assert (await c.get("/products", headers=user.basic)).status_code == 200
            assert len(calls) == 1
            changed = await c.patch(
                f"/users/{user.id}", json={"password": "brand-new-pass"}, headers=user.basic
            )
            assert changed.status_code == 200, changed.text
            assert_401(await c.get("/products", headers=user.basic))
            new = basic_header(user.username, "brand-new-pass")
            assert (await c.get("/products", headers=new)).status_code == 200
            assert (await c.get("/products", headers=new)).status_code == 200
            assert_401(await c.get("/products", headers=user.basic))


async def test_password_change_in_one_process_invalidates_the_cache_of_another():
    user = make_user(Role.CUSTOMER)
    new = basic_header(user.username, "brand-new-pass")
    async with running_app(auth_cache_seconds=300) as first, running_app(auth_cache_seconds=300) as second:
        assert first.state.auth.cache is not second.state.auth.cache
        second_calls = count_bcrypt_checks(second)
        async with http(first) as c1, http(second) as c2:
            assert (await c1.get("/products", headers=user.basic)).status_code == 200
            assert (await c2.get("/products", headers=user.basic)).status_code == 200
            assert (await c2.get("/products", headers=user.basic)).status_code == 200
            assert len(second_calls) == 1  # the second process has the old password cached
            assert len(second.state.auth.cache) == 1

            changed = await c1.patch(
                f"/users/{user.id}", json={"password": "brand-new-pass"}, headers=user.basic
            )
            assert changed.status_code == 200, changed.text

            # The second process never heard of the change: its cache entry no longer matches the
            # stored hash, so bcrypt decides, and refuses the old password.
            assert_401(await c2.get("/products", headers=user.basic))
            assert len(second_calls) == 2
            assert (await c2.get("/products", headers=new)).status_code == 200
            assert (await c1.get("/products", headers=new)).status_code == 200
            assert_401(await c1.get("/products", headers=user.basic))


async def test_admin_changing_a_users_password_invalidates_their_cached_password():
    user = make_user(Role.CUSTOMER)
    async with running_app(auth_cache_seconds=300) as application, http(application) as c:
        assert (await c.get("/products", headers=user.basic)).status_code == 200
        changed = await c.patch(f"/users/{user.id}", json={"password": "set-by-admin"}, headers=ADMIN.basic)
        assert changed.status_code == 200, changed.text
        assert_401(await c.get("/products", headers=user.basic))
        assert (
            await c.get("/products", headers=basic_header(user.username, "set-by-admin"))
        ).status_code == 200


async def test_auth_cache_seconds_zero_disables_the_cache():
    user = make_user(Role.CUSTOMER)
    async with running_app(auth_cache_seconds=0) as application:
        calls = count_bcrypt_checks(application)
        async with http(application, user.basic) as c:
            assert (await c.get("/products")).status_code == 200
            assert (await c.get("/products")).status_code == 200
            assert (await c.get("/products")).status_code == 200
        assert calls == [True, True, True]
        assert len(application.state.auth.cache) == 0


async def test_cache_entries_expire_after_auth_cache_seconds():
    user = make_user(Role.CUSTOMER)
    # 1 s: on a loaded 2-core machine under coverage, two requests 0.3 s apart were seen once (CI).
    async with running_app(auth_cache_seconds=1.0) as application:
        calls = count_bcrypt_checks(application)
        async with http(application, user.basic) as c:
            assert (await c.get("/products")).status_code == 200
            assert (await c.get("/products")).status_code == 200
            assert len(calls) == 1
            await asyncio.sleep(1.1)
            assert (await c.get("/products")).status_code == 200
            assert len(calls) == 2


# --- timing --------------------------------------------------------------------------------------


async def test_unknown_user_and_wrong_password_take_the_same_time():
    """Both cost one bcrypt check at the configured cost (~100 ms at 10 rounds), so the time of a
    401 does not tell whether the username exists. Measured in this process's CPU time, which other
    processes on a busy machine (a parallel test run) do not stretch as they stretch wall time."""
    async with running_app(bcrypt_rounds=10, auth_cache_seconds=300) as application, http(application) as c:
        created = await c.post("/users", json={"username": "timed-user", "password": "right-password"})
        assert created.status_code == 201, created.text
        assert stored_hash(created.json()["id"]).startswith("$2b$10$")
        # Warm up: the first check builds the dummy hash; the right password gets cached.
        assert (
            await c.get("/products", headers=basic_header("timed-user", "right-password"))
        ).status_code == 200
        assert_401(await c.get("/products", headers=basic_header("no-such-user", "right-password")))

        calls = count_bcrypt_checks(application)
        unknown_times, wrong_times = [], []
        for _ in range(5):
            for name, sink in (("no-such-user", unknown_times), ("timed-user", wrong_times)):
                started = time.process_time()
                response = await c.get("/products", headers=basic_header(name, "wrong-password"))
                sink.append(time.process_time() - started)
                assert response.status_code == 401
    assert calls == [False, True] * 5  # every failure paid for exactly one bcrypt check
    unknown, wrong = statistics.median(unknown_times), statistics.median(wrong_times)
    assert 0.7 <= unknown / wrong <= 1.4, (unknown_times, wrong_times)
    assert min(unknown, wrong) > 0.02, "a failed check at cost 10 cannot be this fast"


# --- settings the API refuses --------------------------------------------------------------------

SERVICES = {
    "database_url": "postgresql+psycopg://user@127.0.0.1:5432/db",
    "redis_url": "redis://127.0.0.1:6379/0",
}
GOOD_KEY = "k" * 32


def test_missing_jwt_secret_outside_the_embedded_default_is_refused():
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        check_settings(Settings(**SERVICES, jwt_secret_key=None))


def test_missing_jwt_secret_with_only_a_database_is_refused():
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        check_settings(Settings(database_url=SERVICES["database_url"], redis_url=None, jwt_secret_key=None))


def test_blank_jwt_secret_is_refused():
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        check_settings(Settings(**SERVICES, jwt_secret_key="   "))


def test_jwt_secret_of_31_bytes_is_refused_and_32_is_accepted():
    with pytest.raises(ConfigError, match="32 bytes"):
        check_settings(Settings(**SERVICES, jwt_secret_key="k" * 31))
    check_settings(Settings(**SERVICES, jwt_secret_key=GOOD_KEY))


def test_jwt_secret_length_is_counted_in_bytes():
    with pytest.raises(ConfigError):
        check_settings(Settings(**SERVICES, jwt_secret_key="é" * 15 + "k"))  # 16 chars, 31 bytes
    check_settings(Settings(**SERVICES, jwt_secret_key="é" * 16))  # 16 chars, 32 bytes


def test_embedded_default_needs_no_secret():
    cfg = Settings(database_url=None, redis_url=None, jwt_secret_key=None)
    assert cfg.embedded
    check_settings(cfg)
    assert len(cfg.effective_jwt_secret.encode()) >= 32


def test_first_admin_username_without_password_is_refused():
    with pytest.raises(ConfigError, match="FIRST_ADMIN"):
        check_settings(Settings(**SERVICES, jwt_secret_key=GOOD_KEY, first_admin_username="root"))


def test_first_admin_password_without_username_is_refused():
    with pytest.raises(ConfigError, match="FIRST_ADMIN"):
        check_settings(Settings(**SERVICES, jwt_secret_key=GOOD_KEY, first_admin_password="password123"))


def test_invalid_first_admin_password_is_refused():
    with pytest.raises(ConfigError, match="FIRST_ADMIN"):
        check_settings(
            Settings(
                **SERVICES,
                jwt_secret_key=GOOD_KEY,
                first_admin_username="root",
                first_admin_password="1234567",
            )
        )
    with pytest.raises(ConfigError, match="FIRST_ADMIN"):
        check_settings(
            Settings(
                **SERVICES,
                jwt_secret_key=GOOD_KEY,
                first_admin_username="root",
                first_admin_password="p" * 73,
            )
        )


def test_invalid_first_admin_username_is_refused():
    with pytest.raises(ConfigError, match="FIRST_ADMIN"):
        check_settings(
            Settings(
                **SERVICES,
                jwt_secret_key=GOOD_KEY,
                first_admin_username="r t",
                first_admin_password="password123",
            )
        )


def test_valid_first_admin_is_accepted():
    check_settings(
        Settings(
            **SERVICES, jwt_secret_key=GOOD_KEY, first_admin_username="root", first_admin_password="12345678"
        )
    )


async def test_lifespan_refuses_to_start_without_a_secret():
    application = create_app(Settings(jwt_secret_key=None), start_embedded_worker=False)
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        async with application.router.lifespan_context(application):
            pytest.fail("the app started without JWT_SECRET_KEY")


async def test_lifespan_refuses_to_start_with_a_short_secret():
    application = create_app(Settings(jwt_secret_key="short-secret"), start_embedded_worker=False)
    with pytest.raises(ConfigError):
        async with application.router.lifespan_context(application):
            pytest.fail("the app started with a short JWT_SECRET_KEY")


async def test_app_stops_promptly_right_after_a_quick_401():
    """An app stopped right after a quick request must stop (regression). The lifespan cancels the
    order-event relay (`api/waiters.py`, `OrderEventRelay.stop`); while the relay is still connecting
    to Redis, redis-py's `asyncio.wait_for` (Python 3.11) can swallow that cancellation, after which
    the relay blocks in `pubsub.listen()`: a single cancel-and-await made shutdown wait forever."""
    for attempt in range(5):

        async def run() -> None:
            async with shared_running_app(Settings()) as application, http(application) as c:
                assert_401(await c.get("/products"))

        task = asyncio.create_task(run())
        done, _ = await asyncio.wait({task}, timeout=3)
        if not done:
            # Unstick the relay (a second cancellation reaches it) so that the run can go on.
            for other in asyncio.all_tasks():
                if other.get_name() == "order-event-relay" and other.cancelling():
                    other.cancel()
            await asyncio.wait({task}, timeout=3)
            pytest.fail(
                f"the app did not stop within 3 s (attempt {attempt + 1}): OrderEventRelay.stop hangs"
            )
        task.result()


# --- single flight and re-hashing ----------------------------------------------------------------
# Overlapping identical attempts share one bcrypt check; a hash made at another cost is replaced on
# the next successful login (so every stored hash costs what the dummy hash of unknown users costs).


async def test_a_burst_of_identical_attempts_costs_one_bcrypt_check():
    async with running_app() as application, http(application) as c:
        created = await c.post("/users", json={"username": "burst-user", "password": "burst-password"})
        assert created.status_code == 201, created.text
        user = TestUser(created.json()["id"], "burst-user", "burst-password", Role.CUSTOMER)
        calls = count_bcrypt_checks(application)
        burst = hold_bcrypt_until_all_arrive(application, c)
        right = await burst(user.basic)
        assert [r.status_code for r in right] == [200] * 8
        assert len(calls) == 1
        wrong = basic_header(user.username, "not-the-password")
        refused = await burst(wrong)
        assert [r.status_code for r in refused] == [401] * 8
        assert len(calls) == 2  # shared too, and not cached:
        assert (await c.get("/products", headers=wrong)).status_code == 401
        assert len(calls) == 3


def hold_bcrypt_until_all_arrive(
    application: FastAPI, c: httpx.AsyncClient, size: int = 8
) -> Callable[[dict[str, str]], Awaitable[list[httpx.Response]]]:
    """`burst(headers)`: `size` concurrent `GET /products` with `headers`, where the app's bcrypt
    check waits (in its thread) until every request of the burst has reached the single-flight step,
    so that "overlapping" does not depend on how fast a loaded machine serves the requests. (Without
    the hold, a check of cost 10 ended before the last of eight requests arrived, once, in CI.)"""
    auth = application.state.auth
    checker = auth.checker
    check, check_once = checker.check, auth._check_once
    arrived = 0
    all_in = asyncio.Event()
    release = threading.Event()

    async def counting_once(username: str, password: str, password_hash: str | None) -> bool:
        nonlocal arrived
        arrived += 1  # and, in the same step, the original looks the flight up
        if arrived == size:
            all_in.set()
        return await check_once(username, password, password_hash)

    def held(password: str, password_hash: str | None) -> bool:
        assert release.wait(10), "the burst never reached the single-flight step"
        return check(password, password_hash)

    auth._check_once, checker.check = counting_once, held

    async def burst(headers: dict[str, str]) -> list[httpx.Response]:
        nonlocal arrived
        arrived = 0
        all_in.clear()
        release.clear()
        answers = asyncio.gather(*(c.get("/products", headers=headers) for _ in range(size)))
        try:
            await asyncio.wait_for(all_in.wait(), 10)
        finally:
            release.set()
        return await answers

    return burst


async def test_different_passwords_are_never_merged():
    user = make_user(Role.CUSTOMER)
    async with running_app(bcrypt_rounds=8) as application, http(application) as c:
        calls = count_bcrypt_checks(application)
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
    async with running_app(bcrypt_rounds=6) as application, http(application) as c:
        assert (
            await c.get("/products", headers=basic_header(user.username, "wrong-password"))
        ).status_code == 401
        assert stored_hash(user.id) == before  # a failed login changes nothing
        assert (await c.get("/products", headers=user.basic)).status_code == 200
        after = stored_hash(user.id)
        assert hash_cost(after) == 6
        # Same password, new hash: it still works, from the cache and from the database.
        assert (await c.get("/products", headers=user.basic)).status_code == 200
    async with running_app(bcrypt_rounds=6) as application, http(application) as c:
        calls = count_bcrypt_checks(application)
        assert (await c.get("/products", headers=user.basic)).status_code == 200
        assert calls == [True]
        assert stored_hash(user.id) == after


async def test_registering_with_admin_basic_credentials_from_the_cache_works():
    """POST /users authenticated by a cached Basic credential: the credentials query's transaction
    is closed before the new password is hashed, and the user is created."""
    async with running_app(bcrypt_rounds=4) as application, http(application) as c:
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
    async with running_app(auth_cache_seconds=0) as application, http(application) as c:
        calls = count_bcrypt_checks(application)
        answers = await asyncio.gather(*(c.get("/products", headers=user.basic) for _ in range(4)))
        assert [r.status_code for r in answers] == [200] * 4
        assert len(calls) == 4


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/products"), ("POST", "/orders"), ("PATCH", "/products/1"), ("PATCH", "/users/1")],
)
async def test_a_body_that_is_not_json_without_credentials_is_401_not_400(anon, method, path):
    """FastAPI reads the JSON body before it runs the dependencies; without credentials the answer is
    still the 401 of the contract."""
    response = await anon.request(
        method, path, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_401(response)


async def test_a_body_that_is_not_json_is_400_with_credentials_or_on_a_public_route(anon, client):
    bad = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    assert (await client.post("/products", **bad)).status_code == 400
    assert (await anon.post("/users", **bad)).status_code == 400


@pytest.mark.pure
def test_the_verified_token_cache_stays_bounded_and_keeps_verifying(monkeypatch):
    """`Authenticator.verified_token` remembers at most `TOKEN_CACHE_SIZE` tokens: once full it drops
    the expired ones, and everything when none had expired; a dropped token is verified again."""
    from api import auth

    monkeypatch.setattr(auth, "TOKEN_CACHE_SIZE", 2)
    authenticator = auth.Authenticator(settings)
    tokens = [
        issue_token(Principal(user_id, f"user{user_id}", Role.CUSTOMER), settings.effective_jwt_secret, 60)
        for user_id in (2, 3, 4, 5)
    ]
    authenticator.verified_token(tokens[0])
    cached = authenticator._tokens[tokens[0]]
    authenticator._tokens[tokens[0]] = dataclasses.replace(cached, expires_at=time.time() - 1)  # as if old
    authenticator.verified_token(tokens[1])
    authenticator.verified_token(tokens[2])  # full: the expired entry goes
    assert list(authenticator._tokens) == [tokens[1], tokens[2]]
    authenticator.verified_token(tokens[3])  # full of live tokens: all go
    assert list(authenticator._tokens) == [tokens[3]]
    assert authenticator.verified_token(tokens[0]).user_id == 2  # verified again
