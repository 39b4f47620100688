"""User use cases: registration, the first admin, reads, password and role changes.

Rules come from CONTRACT.md, "Users and authentication", and issue 3:

* anyone may register a `customer`; any other role needs an admin (403 otherwise);
* a user reads themself; admins read and list everyone; another user's id is reported as missing
  (404), so ids cannot be probed (OWASP API1, broken object level authorisation);
* a user changes their own password; admins change anyone's password and role; the last admin
  cannot be demoted (409), so the service never locks itself out of user management.

Password hashing is slow by design (bcrypt): these functions take an already computed hash where they
write one, so that callers on an event loop can hash in a thread first. Functions never commit.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.config import Settings
from core.db import utcnow
from core.errors import Conflict, Forbidden, UserNotFound
from core.users import repository as repo
from core.users.models import Role, User
from core.users.schemas import check_password, check_username
from core.users.security import Principal


def settings_problems(cfg: Settings) -> list[str]:
    """Every reason the API must not start with `cfg` (empty when there is none): those of
    `Settings.check_auth_settings`, and a first admin whose username or password breaks the
    registration rules."""
    problems = cfg.check_auth_settings()
    if cfg.first_admin_username is not None and cfg.first_admin_password is not None:
        for check, value in (
            (check_username, cfg.first_admin_username),
            (check_password, cfg.first_admin_password),
        ):
            try:
                check(value)
            except ValueError as exc:
                problems.append(f"FIRST_ADMIN: {exc}")
    return problems


def principal_of(user: User) -> Principal:
    return Principal(id=user.id, username=user.username, role=Role(user.role))


def check_may_grant(role: Role, actor: Principal | None) -> None:
    """Raises `Forbidden` unless `actor` may create a user with `role` (customers: anyone)."""
    if role != Role.CUSTOMER and (actor is None or not actor.is_admin):
        raise Forbidden(
            f"Only an admin can create a user with the role '{role.value}'.", {"role": role.value}
        )


def register_user(
    session: Session, username: str, password_hash: str, role: Role, *, actor: Principal | None
) -> User:
    """Create a user. Raises `Forbidden` (role not allowed for `actor`) or `Conflict` (the username is
    taken, in any case)."""
    check_may_grant(role, actor)
    user_id = repo.insert_if_absent(session, username, password_hash, role)
    if user_id is None:
        raise Conflict(f"The username '{username}' is already taken.", {"username": username})
    user = repo.get(session, user_id)
    assert user is not None
    return user


def ensure_user(session: Session, username: str, password_hash: str, role: Role) -> bool:
    """Create the user unless the username exists (in any case); True when it was created.
    Safe when several processes run it at once (one insert wins, the others do nothing)."""
    return repo.insert_if_absent(session, username, password_hash, role) is not None


def get_user(session: Session, user_id: int, *, viewer: Principal) -> User:
    """The user; `UserNotFound` when missing or when `viewer` is neither that user nor an admin."""
    user = repo.get(session, user_id) if (viewer.is_admin or viewer.id == user_id) else None
    if user is None:
        raise UserNotFound(user_id)
    return user


def list_users(session: Session, *, role: str | None, limit: int, offset: int) -> tuple[list[User], int]:
    return repo.list_page(session, role=role, limit=limit, offset=offset)


def check_may_update(session: Session, user_id: int, *, actor: Principal, role: Role | None) -> None:
    """Raises `UserNotFound` when `actor` may not see the user (or it is missing) and `Forbidden`
    when a non-admin asks for a role change."""
    get_user(session, user_id, viewer=actor)
    if role is not None and not actor.is_admin:
        raise Forbidden("Only an admin can change a user's role.", {"role": role.value})


def update_user(
    session: Session,
    user_id: int,
    *,
    actor: Principal,
    password_hash: str | None = None,
    role: Role | None = None,
) -> User:
    """Change a user's password (the user or an admin) and/or role (admins only).

    Raises `UserNotFound` (missing, or not visible to `actor`), `Forbidden` (a non-admin changing a
    role) and `Conflict` (demoting the last admin)."""
    check_may_update(session, user_id, actor=actor, role=role)
    # A role change locks every admin row first, in id order, and only then the target: two admins
    # demoting each other queue on the same first lock instead of deadlocking, and the second one
    # sees the first one's change (and the 409 when only one admin is left).
    admins = repo.lock_admins(session) if role is not None else []
    if role is not None and actor.id not in admins:  # demoted meanwhile (or a stale token)
        raise Forbidden("Only an admin can change a user's role.", {"role": role.value})
    user = repo.lock(session, user_id)
    if user is None:
        raise UserNotFound(user_id)
    values: dict[str, object] = {}
    if role is not None and role.value != user.role:
        if user.role == Role.ADMIN.value and admins == [user.id]:
            raise Conflict("The last admin cannot lose the admin role.", {"user_id": user_id})
        values["role"] = role.value
    if password_hash is not None:
        values["password_hash"] = password_hash
        values["password_changed_at"] = utcnow()
    if values:
        repo.set_fields(session, user_id, **values)
        user = repo.lock(session, user_id)
        assert user is not None
    return user


def credentials_of(session: Session, username: str) -> tuple[Principal, str] | None:
    """(principal, bcrypt hash) of the user named `username` in any case, or None."""
    row = repo.credentials(session, username)
    if row is None:
        return None
    user_id, name, role, password_hash = row
    return Principal(id=user_id, username=name, role=Role(role)), password_hash


def replace_password_hash(session: Session, user_id: int, old_hash: str, new_hash: str) -> bool:
    """Store `new_hash` (the same password at the current bcrypt cost) unless the hash changed
    meanwhile; True when it was stored. The password itself does not change."""
    return repo.swap_password_hash(session, user_id, old_hash, new_hash)


def current_principal(session: Session, principal: Principal) -> Principal | None:
    """`principal` with the role stored now (None when the user no longer exists): user management
    trusts the database, not the role a token claimed at login."""
    user = repo.get(session, principal.id)
    return None if user is None else principal_of(user)
