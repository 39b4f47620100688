"""Authentication at the HTTP edge: HTTP Basic (RFC 7617) and JWT bearer tokens (RFC 6750).

Every protected route depends on `current_principal`, which reads the `Authorization` header:

* `Basic base64(username:password)`: the user's id, role and bcrypt hash are read with one indexed
  query; a password the `CredentialCache` has already seen accepted for that very hash is accepted
  at once, otherwise bcrypt decides, in a worker thread (never on the event loop) and with no
  database transaction held open meanwhile. An unknown user costs the same bcrypt check as a wrong
  password and gets the same 401.
* `Bearer <jwt>`: the token is checked (HS256 only, `exp` required) and names the principal; no
  database query.

Failures raise `Unauthorized` (`WWW-Authenticate: Basic realm="orderflow"`) or, for a bad token,
`InvalidToken` (`WWW-Authenticate: Bearer error="invalid_token"`). The two security schemes are
declared in the OpenAPI document, so Swagger UI's Authorize button offers both.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import time
from functools import cached_property

import anyio
from fastapi import Request
from fastapi.security import HTTPBearer
from fastapi.security.http import HTTPBase
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Settings
from core.errors import Unauthorized
from core.users import service
from core.users.security import (
    CredentialCache,
    InvalidToken,
    PasswordChecker,
    Principal,
    hash_cost,
    hash_password,
    issue_token,
    verify_token,
)

log = logging.getLogger("orderflow.auth")

#: OpenAPI declarations only: `current_principal` parses the header itself, so that every failure
#: gets the contract's envelope and the right challenge.
basic_scheme = HTTPBase(
    scheme="basic",
    scheme_name="basicAuth",
    description="HTTP Basic: username and password.",
    auto_error=False,
)
bearer_scheme = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description="A token from `POST /login`, valid for `JWT_EXPIRES_SECONDS`.",
    auto_error=False,
)

MISSING_MESSAGE = "Authentication required: send Basic credentials or a Bearer token."
WRONG_MESSAGE = "The username or password is wrong."
MALFORMED_MESSAGE = "The Basic credentials must be base64 of 'username:password'."
#: Verified bearer tokens remembered per process (each until its `exp`).
TOKEN_CACHE_SIZE = 10_000


class Authenticator:
    """Per-process authentication state: the signing key, the bcrypt checker and the cache."""

    def __init__(self, cfg: Settings) -> None:
        self.cfg = cfg
        self.secret = cfg.effective_jwt_secret
        self.cache = CredentialCache(cfg.auth_cache_seconds, cfg.auth_cache_max_entries)
        # bcrypt is CPU-bound: at most one check per core at a time, so that a flood of wrong
        # passwords cannot take every thread of the pool that other blocking calls need.
        self._bcrypt_slots = anyio.CapacityLimiter(os.cpu_count() or 1)
        self._flight_key = secrets.token_bytes(32)
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}
        self._tokens: dict[str, tuple[Principal, float]] = {}

    @cached_property
    def checker(self) -> PasswordChecker:
        return PasswordChecker(self.cfg.bcrypt_rounds)

    async def check_password(self, password: str, password_hash: str | None) -> bool:
        checker = self.checker
        return await anyio.to_thread.run_sync(
            checker.check, password, password_hash, limiter=self._bcrypt_slots
        )

    async def hash_password(self, password: str) -> str:
        return await anyio.to_thread.run_sync(
            hash_password, password, self.cfg.bcrypt_rounds, limiter=self._bcrypt_slots
        )

    async def basic(self, session: AsyncSession, username: str, password: str) -> Principal:
        """The principal whose credentials these are; `Unauthorized` otherwise (same message and,
        within bcrypt's noise, the same time for an unknown user and a wrong password).

        A hash made with another cost than `BCRYPT_ROUNDS` is replaced after a successful check, so
        that every stored hash ends up costing what the dummy hash costs."""
        found = await session.run_sync(service.credentials_of, username)
        if found is not None and self.cache.verified(found[0].id, found[1], password):
            return found[0]
        # No transaction (nor, on SQLite, the write lock) stays open during the slow check.
        await session.rollback()
        principal, password_hash = found if found is not None else (None, None)
        if not await self._check_once(username, password, password_hash):
            raise Unauthorized(WRONG_MESSAGE)
        assert principal is not None and password_hash is not None
        self.cache.remember(principal.id, password_hash, password)
        if hash_cost(password_hash) != self.cfg.bcrypt_rounds:
            new_hash = await self.hash_password(password)
            if await session.run_sync(service.replace_password_hash, principal.id, password_hash, new_hash):
                self.cache.remember(principal.id, new_hash, password)
        return principal

    async def _check_once(self, username: str, password: str, password_hash: str | None) -> bool:
        """bcrypt, once for identical attempts that overlap ("single flight"): a burst of requests
        with the same username, password and stored hash waits for the first one's check instead of
        queueing one check each. Wrong attempts are shared the same way, and are never cached.
        With `AUTH_CACHE_SECONDS=0` every attempt runs its own check (no mitigation at all)."""
        if self.cache.ttl <= 0:
            return await self.check_password(password, password_hash)
        key = hmac.new(
            self._flight_key,
            b"\x00".join(
                (
                    username.lower().encode("utf-8", "surrogatepass"),
                    (password_hash or "").encode(),
                    password.encode("utf-8", "surrogatepass"),
                )
            ),
            hashlib.sha256,
        ).digest()
        pending = self._in_flight.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
            return await self.check_password(password, password_hash)  # the first caller went away
        pending = asyncio.get_running_loop().create_future()
        self._in_flight[key] = pending
        try:
            result = await self.check_password(password, password_hash)
        except BaseException:
            pending.cancel()
            raise
        finally:
            del self._in_flight[key]
        pending.set_result(result)
        return result

    def bearer(self, token: str) -> Principal:
        """The principal of a valid bearer token; `InvalidToken` otherwise. A verified token is
        remembered until it expires (at most `TOKEN_CACHE_SIZE` of them), so a client that sends the
        same token on every request pays for the HMAC check once."""
        now = time.time()
        known = self._tokens.get(token)
        if known is not None and known[1] > now:
            return known[0]
        principal, expires = verify_token(token, self.secret)
        if len(self._tokens) >= TOKEN_CACHE_SIZE:
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
            if len(self._tokens) >= TOKEN_CACHE_SIZE:
                self._tokens.clear()
        self._tokens[token] = (principal, expires)
        return principal

    def issue(self, principal: Principal) -> str:
        return issue_token(principal, self.secret, self.cfg.jwt_expires_seconds)


def parse_basic(param: str) -> tuple[str, str]:
    """(username, password) from the base64 part of a Basic header (RFC 7617, UTF-8)."""
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise Unauthorized(MALFORMED_MESSAGE) from exc
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise Unauthorized(MALFORMED_MESSAGE)
    if "\x00" in decoded:  # no stored username or password has one (and PostgreSQL refuses NUL)
        raise Unauthorized(WRONG_MESSAGE)
    return username, password


def split_authorization(header: str) -> tuple[str, str]:
    """(scheme as sent, credentials) of an `Authorization` header value (RFC 9110, section 11.6.2;
    schemes compare case-insensitively)."""
    scheme, _, param = header.strip().partition(" ")
    return scheme, param


async def authenticate(request: Request, session: AsyncSession) -> Principal | None:
    """The principal of the request's `Authorization` header; None when there is no header.
    Raises `Unauthorized` / `InvalidToken` for a header that does not prove who is asking."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, param = split_authorization(header)
    auth: Authenticator = request.app.state.auth
    if scheme.lower() == "bearer":
        if not param.strip():
            raise InvalidToken("The Bearer token is empty.")
        principal = auth.bearer(param.strip())
    elif scheme.lower() == "basic":
        principal = await auth.basic(session, *parse_basic(param))
    else:
        raise Unauthorized(f"Unsupported authorization scheme '{scheme[:20]}': use Basic or Bearer.")
    request.state.principal = principal
    return principal
