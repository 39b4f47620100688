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
  (an `alg: none` or RS256 token is refused) and requires `exp`, `iat` and `sub`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
import jwt

from core.errors import Unauthorized
from core.users.models import Role

JWT_ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["exp", "iat", "sub"]


@dataclass(frozen=True)
class Principal:
    """Who is making a request: `id`, `username` and `role`, from the database or a token.
    `from_token` is True when the role is what a bearer token claimed at login (it may be stale)."""

    id: int
    username: str
    role: Role
    from_token: bool = field(default=False, compare=False)

    @property
    def is_staff(self) -> bool:
        """Managers and admins: they write products and stock and act on every order."""
        return self.role in (Role.ADMIN, Role.MANAGER)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class InvalidToken(Unauthorized):
    """A bearer token that is malformed, tampered, expired, unsigned or signed with another key.
    Answered with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750, section 3)."""

    challenge = 'Bearer error="invalid_token"'


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


def issue_token(principal: Principal, secret: str, expires_seconds: int, now: datetime | None = None) -> str:
    """A signed JWT with `sub` (the user id, a string per RFC 7519), `username`, `role`, `iat` and
    `exp` (`iat` + `expires_seconds`)."""
    issued = now or datetime.now(UTC)
    claims = {
        "sub": str(principal.id),
        "username": principal.username,
        "role": principal.role.value,
        "iat": issued,
        "exp": issued + timedelta(seconds=expires_seconds),
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def decode_token(token: str, secret: str) -> Principal:
    """The principal a valid token names. Raises `InvalidToken` when the token is malformed, its
    signature does not match `secret`, its algorithm is not HS256, it has expired, or a required
    claim (`exp`, `iat`, `sub`, `username`, `role`) is missing or of the wrong shape."""
    return verify_token(token, secret)[0]


def verify_token(token: str, secret: str) -> tuple[Principal, float]:
    """`decode_token`, and the token's expiry (`exp`, seconds since the epoch)."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=[JWT_ALGORITHM], options={"require": _REQUIRED_CLAIMS}
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("The access token has expired; log in again.") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken("The access token is invalid.") from exc
    try:
        principal = Principal(
            id=int(claims["sub"]),
            username=str(claims["username"]),
            role=Role(claims["role"]),
            from_token=True,
        )
        return principal, float(claims["exp"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidToken("The access token is invalid.") from exc
