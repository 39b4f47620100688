"""Users and their roles (CONTRACT.md, "Users and authentication")."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, utcnow
from core.types import MANAGER_ID_MAX_LENGTH


class Role(StrEnum):
    """What a user may do (CONTRACT.md, "Users and authentication", roles):

    * `customer`: read products, place orders, read and cancel their own orders;
    * `manager`: also write products and stock, read, move and cancel every order;
    * `admin`: also manage users.
    """

    ADMIN = "admin"
    MANAGER = "manager"
    CUSTOMER = "customer"


_ROLE_CHECK = "role IN (" + ", ".join(f"'{r.value}'" for r in Role) + ")"


class User(Base):
    """An account. `username` keeps the case it was registered with and is unique without regard to
    case (a unique index on `lower(username)`); `password_hash` is a bcrypt hash (`$2b$...`, 60
    characters) and never leaves the process."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_ROLE_CHECK, name="role_valid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(50))
    password_hash: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16), default=Role.CUSTOMER.value)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The store API `manager_id` (e.g. `mgr_123`) this `manager` account acts for when
    #: `STORE_REQUIRE_AUTH=true`; set by an admin, unique, null when unbound (CONTRACT.md, "Store API").
    manager_id: Mapped[str | None] = mapped_column(String(MANAGER_ID_MAX_LENGTH))


Index("uq_users_username_lower", func.lower(User.username), unique=True)
Index("uq_users_manager_id", User.manager_id, unique=True)
