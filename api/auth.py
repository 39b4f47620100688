"""Authentication at the HTTP edge: HTTP Basic (RFC 7617) and JWT bearer tokens (RFC 6750).

Every protected route depends on `current_principal`, which reads the `Authorization` header:

* `Basic base64(username:password)`: the user's id, role and bcrypt hash are read with one indexed
  query; a password the `CredentialCache` has already seen accepted for that very hash is accepted
  at once, otherwise bcrypt decides, in a worker thread (never on the event loop) and with no
  database transaction held open meanwhile. An unknown user costs the same bcrypt check as a wrong
  password and gets the same 401.
* `Bearer <jwt>`: the token is checked (HS256 only, `exp` required; the verified claims of a token
  are remembered until it expires) and names a user id (`sub`). That user's row (username, role,
  `password_changed_at`) comes from `AccountCache`, read at most once per user per
  `AUTH_USER_CACHE_SECONDS` (default 5) per process, and once more for a token issued after the
  remembered read; concurrent requests that need the same read share it. The token is refused
  (`InvalidToken`) when its user no longer exists or changed their password after it was issued, and
  the principal carries the stored role, not the token's. So within `AUTH_USER_CACHE_SECONDS` of a
  password change or a deletion every older token is a 401 in every process, and a role change has
  taken effect; the process that made the change forgets its entry at once.

Failures raise an `Unauthorized` class of `core.errors` (`WrongCredentials`, `MalformedCredentials`,
`UnsupportedScheme`; `WWW-Authenticate: Basic realm="orderflow"`) or, for a bad token, `InvalidToken`
or `EmptyBearerToken` (`WWW-Authenticate: Bearer error="invalid_token"`); each sentence is its class's
template. The two security schemes are
declared in the OpenAPI document, so Swagger UI's Authorize button offers both.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
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
from core.errors import (
    EmptyBearerToken,
    MalformedCredentials,
    UnsupportedScheme,
    WrongCredentials,
)
from core.users import service
from core.users.security import (
    AccessToken,
    AccountCache,
    AccountRead,
    CredentialCache,
    PasswordChecker,
    Principal,
    hash_cost,
    hash_password,
    issue_token,
    principal_of_token,
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
    description=(
        "A token from `POST /login`, valid for `JWT_EXPIRES_SECONDS` (default 1800). It grants the "
        "user's current role, and a password change or the user's deletion ends it, each within "
        "`AUTH_USER_CACHE_SECONDS` (default 5) seconds; then it is a 401 with "
        '`WWW-Authenticate: Bearer error="invalid_token"`.'
    ),
    auto_error=False,
)

#: Verified bearer tokens remembered per process (each until its `exp`).
TOKEN_CACHE_SIZE = 10_000


class Authenticator:
    """Per-process authentication state: the signing key, the bcrypt checker, the verified-credential
    cache (`cache`) and the cache of bearer tokens' users (`accounts`)."""

    def __init__(self, cfg: Settings) -> None:
        self.cfg = cfg
        self.secret = cfg.effective_jwt_secret
        self.cache = CredentialCache(cfg.auth_cache_seconds, cfg.auth_cache_max_entries)
        self.accounts = AccountCache(cfg.auth_user_cache_seconds, cfg.auth_cache_max_entries)
        self._account_reads: dict[int, tuple[float, asyncio.Future[AccountRead]]] = {}
        # bcrypt is CPU-bound: at most one check per core at a time, so that a flood of wrong
        # passwords cannot take every thread of the pool that other blocking calls need.
        self._bcrypt_slots = anyio.CapacityLimiter(os.cpu_count() or 1)
        self._flight_key = secrets.token_bytes(32)
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}
        self._tokens: dict[str, AccessToken] = {}

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
        """The principal whose credentials these are; `WrongCredentials` otherwise (same message and,
        within bcrypt's noise, the same time for an unknown user and a wrong password). Its
        `authenticated_at` is the moment just before the row was read, which a token issued to it
        takes as `iat`.

        A hash made with another cost than `BCRYPT_ROUNDS` is replaced after a successful check, so
        that every stored hash ends up costing what the dummy hash costs."""
        read_at = time.time()
        found = await session.run_sync(service.credentials_of, username)
        if found is not None:
            found = (dataclasses.replace(found[0], authenticated_at=read_at), found[1])
        if found is not None and self.cache.verified(found[0].id, found[1], password):
            return found[0]
        # No transaction (nor, on SQLite, the write lock) stays open during the slow check.
        await session.rollback()
        principal, password_hash = found if found is not None else (None, None)
        if not await self._check_once(username, password, password_hash):
            raise WrongCredentials()
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

    def verified_token(self, token: str) -> AccessToken:
        """The claims of a valid bearer token; `InvalidToken` otherwise. A verified token is
        remembered until it expires (at most `TOKEN_CACHE_SIZE` of them), so a client that sends the
        same token on every request pays for the HMAC check once."""
        now = time.time()
        known = self._tokens.get(token)
        if known is not None and known.expires_at > now:
            return known
        claims = verify_token(token, self.secret)
        if len(self._tokens) >= TOKEN_CACHE_SIZE:
            self._tokens = {t: c for t, c in self._tokens.items() if c.expires_at > now}
            if len(self._tokens) >= TOKEN_CACHE_SIZE:
                self._tokens.clear()
        self._tokens[token] = claims
        return claims

    async def bearer(self, session: AsyncSession, token: str) -> Principal:
        """The principal of a valid bearer token whose user exists and has not changed their password
        since it was issued, with the user's stored role; `InvalidToken` otherwise. The user's row
        comes from `accounts` (no query on a hit) or is read with `session`."""
        claims = self.verified_token(token)
        read = self.accounts.fresh(claims.user_id, claims.issued_at)
        if read is None:
            read = await self._read_account(session, claims.user_id, claims.issued_at)
        return principal_of_token(claims.issued_at, read.account)

    async def _read_account(self, session: AsyncSession, user_id: int, issued_at: float) -> AccountRead:
        """Read the user's row and remember it. Requests that need the same user while a read is in
        flight wait for it ("single flight") when it started after their token was issued, so a
        burst of requests at the end of a TTL costs one query."""
        caching = self.accounts.ttl > 0
        flight = self._account_reads.get(user_id) if caching else None
        if flight is not None and flight[0] >= issued_at:
            try:
                return await asyncio.shield(flight[1])
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not flight[1].cancelled() or (task is not None and task.cancelling()):
                    raise
            # The first reader went away (or failed): read here.
        read_at = time.time()
        pending: asyncio.Future[AccountRead] = asyncio.get_running_loop().create_future()
        if caching:
            self._account_reads[user_id] = (read_at, pending)
        try:
            account = await session.run_sync(service.account_of, user_id)
        except BaseException:
            pending.cancel()
            raise
        finally:
            if self._account_reads.get(user_id, (0.0, None))[1] is pending:
                del self._account_reads[user_id]
        read = AccountRead(account, read_at)
        self.accounts.remember(user_id, read)
        pending.set_result(read)
        return read

    def forget(self, user_id: int) -> None:
        """Drop what this process remembers of the user (their password or role just changed)."""
        self.cache.forget(user_id)
        self.accounts.forget(user_id)

    def issue(self, principal: Principal) -> str:
        return issue_token(principal, self.secret, self.cfg.jwt_expires_seconds)


def parse_basic(param: str) -> tuple[str, str]:
    """(username, password) from the base64 part of a Basic header (RFC 7617, UTF-8). Raises
    `MalformedCredentials`, or `WrongCredentials` for a NUL character."""
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise MalformedCredentials() from exc
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise MalformedCredentials()
    if "\x00" in decoded:  # no stored username or password has one (and PostgreSQL refuses NUL)
        raise WrongCredentials()
    return username, password


def split_authorization(header: str) -> tuple[str, str]:
    """(scheme as sent, credentials) of an `Authorization` header value (RFC 9110, section 11.6.2;
    schemes compare case-insensitively)."""
    scheme, _, param = header.strip().partition(" ")
    return scheme, param


async def authenticate(request: Request, session: AsyncSession) -> Principal | None:
    """The principal of the request's `Authorization` header; None when there is no header.
    Raises `UnsupportedScheme`, `MalformedCredentials`, `WrongCredentials`, `EmptyBearerToken` or
    `InvalidToken` for a header that does not prove who is asking."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, param = split_authorization(header)
    auth: Authenticator = request.app.state.auth
    if scheme.lower() == "bearer":
        if not param.strip():
            raise EmptyBearerToken()
        principal = await auth.bearer(session, param.strip())
    elif scheme.lower() == "basic":
        principal = await auth.basic(session, *parse_basic(param))
    else:
        raise UnsupportedScheme(scheme)
    request.state.principal = principal
    return principal
