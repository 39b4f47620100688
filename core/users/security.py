"""Passwords, the verified-credential cache and JWT access tokens.

* Passwords are hashed with bcrypt (`BCRYPT_ROUNDS`, default 12: about 0.35 s per check on one core
  of the reference machine). A check is deliberately slow, so the API runs it in a thread and keeps it
  off the hot path with `CredentialCache`.
* `CredentialCache` remembers, per user and for `AUTH_CACHE_SECONDS`, an HMAC-SHA256 (keyed with a
  random per-process key) of `(user id, stored bcrypt hash, supplied password)` after bcrypt accepted
  that password. A later request with the same password and the same stored hash is accepted by
  recomputing the HMAC and comparing in constant time. The stored hash is part of the message, so a
  password change (a new hash) invalidates every entry of that user in every process at once; the
  process that changes it also drops the entry. Plain passwords are never stored; the key lives only
  in the process's memory (someone who can read that memory can also read passwords in flight).
* Unknown usernames are checked against a dummy hash of the same cost, so an unknown user and a wrong
  password take the same time and get the same 401 (OWASP Authentication Cheat Sheet).
* Tokens are JWTs (RFC 7519) signed with HS256 and `JWT_SECRET_KEY`; decoding pins the algorithm
  (an `alg: none` or RS256 token is refused) and requires `exp`, `iat` and `sub` (a user id: a positive
  int64 in decimal). `iat` is the moment the credentials were read from the database at login, with
  microseconds (RFC 7519 section 2 allows a non-integer NumericDate), so that it can be compared with
  the user's `password_changed_at`.
* A token is only as good as its user: `principal_of_token` accepts it while its user exists and has
  not changed their password since `iat`, and hands out the user's stored role, not the one the token
  claims. `AccountCache` keeps the rows it needs per process for `AUTH_USER_CACHE_SECONDS`, so that
  the check costs at most one indexed read per user per that many seconds; that is also the bound on
  how long an older token outlives a password change, a deletion or a role change.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import bcrypt
import jwt

from core.errors import (
    MalformedToken,
    TokenExpired,
    TokenPasswordChanged,
    TokenSubjectInvalid,
    TokenUserGone,
)
from core.users.models import Role

JWT_ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["exp", "iat", "sub"]
#: The largest user id a token's `sub` may name (PostgreSQL `bigint`).
INT64_MAX = 2**63 - 1
#: A token's `sub`: decimal digits only, no sign, no leading zero, no spaces (RFC 7519 section 4.1.2
#: makes it a string; `int()` alone would also take " 7", "+7", "0_7" and non-ASCII digits).
_SUBJECT = re.compile(r"[1-9][0-9]{0,18}")


@dataclass(frozen=True)
class Principal:
    """Who is making a request: `id`, `username` and `role`, as stored when they were read.

    `from_token` is True for a bearer token's user (its row may be up to `AUTH_USER_CACHE_SECONDS`
    old); `authenticated_at` is when the credentials were checked against the stored user (seconds
    since the epoch: the token's `iat`, or for Basic the moment the row was read), None for a
    principal made by hand."""

    id: int
    username: str
    role: Role
    from_token: bool = field(default=False, compare=False)
    authenticated_at: float | None = field(default=None, compare=False)

    @property
    def is_staff(self) -> bool:
        """Managers and admins: they write products and stock and act on every order."""
        return self.role in (Role.ADMIN, Role.MANAGER)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


# --- passwords -----------------------------------------------------------------------------------


def hash_cost(password_hash: str) -> int | None:
    """The cost factor of a bcrypt hash (`$2b$12$...` -> 12); None when it is not a bcrypt hash."""
    parts = password_hash.split("$")
    return int(parts[2]) if len(parts) >= 4 and parts[2].isdigit() else None


def hash_password(password: str, rounds: int) -> str:
    """A bcrypt hash (`$2b$<rounds>$...`, 60 ASCII characters) of a password already checked to be
    at most 72 bytes (`core.users.schemas.check_password`)."""
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds)).decode("ascii")


class PasswordChecker:
    """Checks a password against a bcrypt hash, or against a dummy hash of the same cost when there
    is no user, so that both cases take the same time."""

    def __init__(self, rounds: int) -> None:
        self._dummy = hash_password(secrets.token_urlsafe(16), rounds).encode("ascii")

    def check(self, password: str, password_hash: str | None) -> bool:
        """True when `password` matches `password_hash`; always False (after the same work) when
        `password_hash` is None. Slow by design: call it from a thread, not an event loop."""
        candidate = password.encode("utf-8", "surrogatepass")
        if len(candidate) > 72:  # bcrypt refuses it; no stored password is that long anyway
            candidate = candidate[:72]
            password_hash = None
        if password_hash is None:
            bcrypt.checkpw(candidate, self._dummy)
            return False
        try:
            return bcrypt.checkpw(candidate, password_hash.encode("ascii"))
        except ValueError:  # a malformed stored hash: treat as a wrong password
            return False


class CredentialCache:
    """A bounded, per-process cache of credentials bcrypt has accepted (see the module docstring).

    `ttl` is in seconds (0 turns the cache off); at most `max_entries` users are remembered, the
    least recently used going first. Thread-safe."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _digest(self, user_id: int, password_hash: str, password: str) -> bytes:
        message = b"\x00".join(
            (str(user_id).encode(), password_hash.encode(), password.encode("utf-8", "surrogatepass"))
        )
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def verified(self, user_id: int, password_hash: str, password: str) -> bool:
        """True when this exact password was accepted for this stored hash less than `ttl` ago."""
        if self.ttl <= 0:
            return False
        digest = self._digest(user_id, password_hash, password)
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is None:
                return False
            if entry[1] <= time.monotonic():
                del self._entries[user_id]
                return False
            self._entries.move_to_end(user_id)
        return hmac.compare_digest(entry[0], digest)

    def remember(self, user_id: int, password_hash: str, password: str) -> None:
        if self.ttl <= 0:
            return
        digest = self._digest(user_id, password_hash, password)
        with self._lock:
            self._entries[user_id] = (digest, time.monotonic() + self.ttl)
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, user_id: int) -> None:
        """Drop the user's entry (their password or role changed)."""
        with self._lock:
            self._entries.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._entries)


# --- tokens --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessToken:
    """The verified claims of a bearer token: `user_id` (`sub`), the `username` and `role` it claims
    (informational: authorisation uses the stored role), `issued_at` (`iat`) and `expires_at`
    (`exp`), both in seconds since the epoch."""

    user_id: int
    username: str
    role: Role
    issued_at: float
    expires_at: float


@dataclass(frozen=True)
class Account:
    """What a bearer token is checked against: the user as stored now (`id`, `username`, `role`) and
    `password_changed_at` (seconds since the epoch; set when the user is created and on every password
    change)."""

    id: int
    username: str
    role: Role
    password_changed_at: float


@dataclass(frozen=True)
class AccountRead:
    """An `Account` (None: no such user) and `read_at`, the wall-clock time (seconds since the epoch)
    taken just before it was read, so the row is at least as new as `read_at`."""

    account: Account | None
    read_at: float


def issue_token(principal: Principal, secret: str, expires_seconds: int, now: datetime | None = None) -> str:
    """A signed JWT with `sub` (the user id, a string per RFC 7519), `username`, `role`, `iat` and
    `exp` (`iat` + `expires_seconds`).

    `iat` is `now` when given, else `principal.authenticated_at` (for a login: the moment the
    credentials were read, so a password change that lands while bcrypt runs still ends the token),
    else the current time; in seconds since the epoch with microseconds."""
    if now is not None:
        issued = now.timestamp()
    elif principal.authenticated_at is not None:
        issued = principal.authenticated_at
    else:
        issued = time.time()
    claims = {
        "sub": str(principal.id),
        "username": principal.username,
        "role": principal.role.value,
        "iat": issued,
        "exp": issued + expires_seconds,
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def verify_token(token: str, secret: str) -> AccessToken:
    """The claims of a validly signed token. Raises `InvalidToken` when the token is malformed, its
    signature does not match `secret`, its algorithm is not HS256, it has expired, or a required
    claim (`exp`, `iat`, `sub`, `username`, `role`) is missing or of the wrong shape (`sub` must be a
    positive int64 in decimal, `role` one of `Role`). Whether its user still exists is
    `principal_of_token`'s question."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=[JWT_ALGORITHM], options={"require": _REQUIRED_CLAIMS}
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired() from exc
    except jwt.PyJWTError as exc:
        raise MalformedToken() from exc
    subject = claims["sub"]
    if not isinstance(subject, str) or not _SUBJECT.fullmatch(subject) or int(subject) > INT64_MAX:
        raise TokenSubjectInvalid()
    try:
        return AccessToken(
            user_id=int(subject),
            username=str(claims["username"]),
            role=Role(claims["role"]),
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise MalformedToken() from exc


def principal_of_token(issued_at: float, account: Account | None) -> Principal:
    """The principal a verified token issued at `issued_at` (its `iat`) stands for: its user as
    stored (`account`), with the stored username and role, never the ones the token claims.

    Raises `InvalidToken` when the user no longer exists (`account` None) or changed their password
    after the token was issued (`iat` before `password_changed_at`). A role change leaves the token
    a valid login whose powers are those of the new role (CONTRACT.md, "Users and authentication":
    a role or password change ends the powers of tokens issued before it)."""
    if account is None:
        raise TokenUserGone()
    if issued_at < account.password_changed_at:
        raise TokenPasswordChanged()
    return Principal(
        id=account.id,
        username=account.username,
        role=account.role,
        from_token=True,
        authenticated_at=issued_at,
    )


class AccountCache:
    """Per-process memory of `AccountRead`s by user id, each for `ttl` seconds (0 turns it off), at
    most `max_entries` users (the least recently used go first).

    `fresh` answers only with a read at least as new as the token asking (`read_at >= iat`): a token
    issued after the row was read (a new login, a user created since) makes the caller read again,
    so the remembered row can be stale only towards tokens older than it, and by at most `ttl`
    seconds. Used from one event loop; not thread-safe."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[int, tuple[AccountRead, float]] = OrderedDict()

    def fresh(self, user_id: int, issued_at: float) -> AccountRead | None:
        """The remembered read of `user_id` when it is younger than `ttl` and not older than
        `issued_at` (seconds since the epoch); None otherwise (the caller reads the row)."""
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        read, expires = entry
        if expires <= time.monotonic():
            del self._entries[user_id]
            return None
        if read.read_at < issued_at:
            return None
        self._entries.move_to_end(user_id)
        return read

    def remember(self, user_id: int, read: AccountRead) -> None:
        if self.ttl <= 0:
            return
        current = self._entries.get(user_id)
        if current is not None and current[0].read_at > read.read_at:
            return  # a newer read finished first
        self._entries[user_id] = (read, time.monotonic() + self.ttl)
        self._entries.move_to_end(user_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, user_id: int) -> None:
        """Drop the user's entry (this process changed their password or role)."""
        self._entries.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._entries)
