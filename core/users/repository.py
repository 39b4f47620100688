"""SQL for users (STYLE.md rule 6). Usernames are matched without regard to case."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import dialect_insert, utcnow
from core.users.models import Role, User

#: The largest id `users.id` (an `integer` column) can hold.
MAX_USER_ID = 2**31 - 1


def get(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def insert_if_absent(session: Session, username: str, password_hash: str, role: Role) -> int | None:
    """Insert a user; None when the username is taken (in any case).

    `INSERT ... ON CONFLICT DO NOTHING` against the unique index on `lower(username)`: two requests
    or two API processes inserting the same name at once get one row and one None, never an error.
    """
    insert = dialect_insert(session)
    now = utcnow()
    stmt = (
        insert(User)
        .values(
            username=username,
            password_hash=password_hash,
            role=role.value,
            created_at=now,
            updated_at=now,
            password_changed_at=now,
        )
        .on_conflict_do_nothing()
        .returning(User.id)
    )
    return session.execute(stmt).scalar_one_or_none()


def list_page(session: Session, *, role: str | None, limit: int, offset: int) -> tuple[list[User], int]:
    """Users by id, and how many there are in all (with the same filter)."""
    stmt = select(User)
    count = select(func.count()).select_from(User)
    if role is not None:
        stmt = stmt.where(User.role == role)
        count = count.where(User.role == role)
    items = list(session.execute(stmt.order_by(User.id).limit(limit).offset(offset)).scalars())
    return items, session.execute(count).scalar_one()


def lock(session: Session, user_id: int) -> User | None:
    """The user, locked for update (FOR UPDATE on PostgreSQL) and re-read from the database."""
    stmt = select(User).where(User.id == user_id).with_for_update().execution_options(populate_existing=True)
    return session.execute(stmt).scalar_one_or_none()


def lock_admins(session: Session) -> list[int]:
    """Ids of every admin, locked, so that two demotions cannot both leave the last admin out."""
    stmt = select(User.id).where(User.role == Role.ADMIN.value).order_by(User.id).with_for_update()
    return list(session.execute(stmt).scalars())


def set_fields(session: Session, user_id: int, **values: object) -> None:
    session.execute(update(User).where(User.id == user_id).values(**values, updated_at=utcnow()))


def set_manager_id(session: Session, user_id: int, manager_id: str | None) -> bool:
    """Bind `manager_id` to the user (None unbinds); False, with nothing changed, when another user
    holds it already.

    The unique index `uq_users_manager_id` decides, so two requests binding one id at once cannot
    both win (on PostgreSQL the second waits for the first to commit, then fails). The UPDATE runs
    in a SAVEPOINT: a violation rolls back to it and the caller's transaction stays usable."""
    try:
        with session.begin_nested():
            session.execute(
                update(User).where(User.id == user_id).values(manager_id=manager_id, updated_at=utcnow())
            )
    except IntegrityError:
        return False
    return True


def manager_id_of(session: Session, user_id: int) -> str | None:
    """The manager id bound to the user; None when unbound or when there is no such user. A column
    query (no ORM identity map), read on every store request when `STORE_REQUIRE_AUTH=true`."""
    return session.execute(select(User.manager_id).where(User.id == user_id)).scalar_one_or_none()


def token_subject(session: Session, user_id: int) -> tuple[str, str, datetime] | None:
    """`(username, role, password_changed_at)` of the user, or None. A column query by primary key
    (no ORM identity map, so a row changed since is read as it is now): bearer tokens are checked
    against it (`core.users.security.AccountCache` keeps it for a few seconds). An id above
    `MAX_USER_ID` names no user and is answered without a query (PostgreSQL would refuse to compare
    it with an `integer` column)."""
    if not 1 <= user_id <= MAX_USER_ID:
        return None
    stmt = select(User.username, User.role, User.password_changed_at).where(User.id == user_id)
    row = session.execute(stmt).first()
    return None if row is None else (row[0], row[1], row[2])


def credentials(session: Session, username: str) -> tuple[int, str, str, str] | None:
    """`(id, username, role, password_hash)` of the user named `username` in any case, or None.
    A column query (no ORM identity map): this runs on every request with Basic credentials."""
    stmt = select(User.id, User.username, User.role, User.password_hash).where(
        func.lower(User.username) == username.lower()
    )
    row = session.execute(stmt).first()
    return None if row is None else (row[0], row[1], row[2], row[3])


def swap_password_hash(session: Session, user_id: int, old_hash: str, new_hash: str) -> bool:
    """`UPDATE users SET password_hash = new WHERE id = ... AND password_hash = old`; True if a row
    changed (a concurrent password change wins)."""
    # An UPDATE without RETURNING gives a CursorResult (it has `rowcount`); Session.execute's stub
    # says Result for every statement.
    result = cast(
        "CursorResult[Any]",
        session.execute(
            update(User)
            .where(User.id == user_id, User.password_hash == old_hash)
            .values(password_hash=new_hash, updated_at=utcnow())
        ),
    )
    return bool(result.rowcount)
