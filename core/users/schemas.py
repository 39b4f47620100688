"""User request and response shapes (CONTRACT.md, "Users and authentication").

Usernames are 3-50 characters of ASCII letters, digits, `_`, `.` and `-`. Passwords are 8-72 *bytes*
once UTF-8 encoded: 72 bytes is bcrypt's input limit, and a longer password is refused rather than
silently truncated (bcrypt would ignore everything after byte 72). A manager id (the store API's
`manager_id` that a `manager` account is bound to, for `STORE_REQUIRE_AUTH=true`) is 1-64 characters
of ASCII letters, digits, `_`, `.`, `:` and `-`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from core.types import MANAGER_ID_MAX_LENGTH
from core.users.models import Role

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{3,50}$")
MANAGER_ID_PATTERN = re.compile(rf"^[A-Za-z0-9_.:-]{{1,{MANAGER_ID_MAX_LENGTH}}}$")
MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's limit


def check_username(value: str) -> str:
    """`value` unchanged if it is a valid username; ValueError with a sentence otherwise."""
    if not USERNAME_PATTERN.fullmatch(value):
        raise ValueError("Username must be 3-50 characters: letters, digits, '_', '.' or '-'.")
    return value


def check_manager_id(value: str | None) -> str | None:
    """`value` unchanged if it is None or a valid manager id; ValueError with a sentence otherwise."""
    if value is not None and not MANAGER_ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"Manager id must be 1-{MANAGER_ID_MAX_LENGTH} characters: letters, digits, '_', '.', ':' or '-'."
        )
    return value


def check_password(value: str) -> str:
    """`value` unchanged if it is 8-72 bytes in UTF-8; ValueError with a sentence otherwise."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size < MIN_PASSWORD_BYTES:
        raise ValueError(f"Password must be at least {MIN_PASSWORD_BYTES} bytes long.")
    if size > MAX_PASSWORD_BYTES:
        raise ValueError(
            f"Password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8 (bcrypt's limit); "
            f"this one is {size} bytes."
        )
    if "\x00" in value:
        raise ValueError("Password must not contain a NUL character.")
    return value


Username = Annotated[
    str,
    Field(
        max_length=256,
        description="3-50 characters: letters, digits, '_', '.', '-'; unique in any case",
        # The document states the rule `check_username` applies (its own message is clearer than a
        # pattern mismatch, so the check stays in code).
        json_schema_extra={"pattern": USERNAME_PATTERN.pattern, "minLength": 3, "maxLength": 50},
    ),
    AfterValidator(check_username),
]
ManagerId = Annotated[
    str | None,
    Field(
        max_length=256,
        description="The store API manager_id (e.g. mgr_123) this manager account acts for; admins set it",
        json_schema_extra={"pattern": MANAGER_ID_PATTERN.pattern},
    ),
    AfterValidator(check_manager_id),
]
Password = Annotated[
    str,
    Field(
        max_length=1024,
        description="8-72 bytes in UTF-8 (bcrypt's limit; never truncated)",
        # Characters, as JSON Schema counts them: 8 characters are at least 8 bytes, and 72 bytes hold
        # at most 72 characters; the byte limit itself cannot be written in JSON Schema.
        json_schema_extra={"minLength": MIN_PASSWORD_BYTES, "maxLength": MAX_PASSWORD_BYTES},
    ),
    AfterValidator(check_password),
]


class UserCreate(BaseModel):
    """Body of `POST /users`. Any other field (`id`, `password_hash`, `created_at`, ...) is refused."""

    model_config = ConfigDict(extra="forbid")

    username: Username = Field(examples=["alice"])
    password: Password = Field(examples=["correct horse battery"])
    role: Role = Field(default=Role.CUSTOMER, description="customer (default), manager or admin")
    manager_id: ManagerId = Field(default=None, examples=["mgr_123"])

    @field_validator("role", mode="before")
    @classmethod
    def _role_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class UserUpdate(BaseModel):
    """Body of `PATCH /users/{id}`: a new `password` (the user or an admin), `role` and/or
    `manager_id` (admins; `"manager_id": null` unbinds, leaving the field out keeps the binding)."""

    model_config = ConfigDict(extra="forbid")

    password: Password | None = None
    role: Role | None = None
    manager_id: ManagerId = None

    @property
    def manager_id_given(self) -> bool:
        """True when the body names `manager_id` (a value or null), False when it leaves it out."""
        return "manager_id" in self.model_fields_set

    @field_validator("role", mode="before")
    @classmethod
    def _role_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class UserRead(BaseModel):
    """A user as the API shows it: never the password or its hash."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: Role
    manager_id: str | None = Field(description="The bound store manager_id; null when unbound")
    created_at: datetime


class TokenRead(BaseModel):
    """Answer of `POST /login` (RFC 6750 bearer token; `expires_in` in seconds)."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int
