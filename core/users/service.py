"""User use cases: registration, the first admin, reads, password and role changes.

Rules come from CONTRACT.md, "Users and authentication":

* anyone may register a `customer`; any other role needs an admin (403 otherwise);
* a user reads themself; admins read and list everyone; another user's id is reported as missing
  (404), so ids cannot be probed (OWASP API1, broken object level authorisation);
* a user changes their own password; admins change anyone's password and role; the last admin
  cannot be demoted (409), so the service never locks itself out of user management;
* only admins bind a store `manager_id` to an account (403 otherwise), only to a `manager` account
  (400 otherwise), and one id to one account at most (409); a manager who loses the `manager` role
  loses the binding with it. With `STORE_REQUIRE_AUTH=true` a manager acts in the store API only
  for the `manager_id` bound to them (`manager_binding`; CONTRACT.md, "Store API").

Password hashing is slow by design (bcrypt): these functions take an already computed hash where they
write one, so that callers on an event loop can hash in a thread first. Functions never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

from sqlalchemy.orm import Session

from core.config import Settings
from core.db import utcnow
from core.errors import (
    LastAdmin,
    ManagerIdGrantForbidden,
    ManagerIdTaken,
    ManagerRoleRequired,
    RoleChangeForbidden,
    RoleGrantForbidden,
    UsernameTaken,
    UserNotFound,
)
from core.uow import effects_of
from core.users import repository as repo
from core.users.models import Role, User
from core.users.schemas import check_password, check_username
from core.users.security import Account, Principal, principal_of_token


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


class _Keep(Enum):
    KEEP = "keep"


#: "Leave the manager id binding as it is" (a PATCH body without `manager_id`), as opposed to None,
#: which unbinds.
KEEP: Final = _Keep.KEEP
ManagerIdChange = str | None | Literal[_Keep.KEEP]


def check_may_grant(role: Role, actor: Principal | None, *, manager_id: str | None = None) -> None:
    """Raises `Forbidden` unless `actor` may create a user with `role` (customers: anyone) and, when
    `manager_id` is given, bind it (admins only); `InvalidInput` when `manager_id` is given for a
    role other than `manager`."""
    if role != Role.CUSTOMER and (actor is None or not actor.is_admin):
        raise RoleGrantForbidden(role.value)
    if manager_id is not None:
        _check_may_bind(actor, manager_id)
        _check_bindable(role.value, manager_id)


def _check_may_bind(actor: Principal | None, manager_id: str | None) -> None:
    if actor is None or not actor.is_admin:
        raise ManagerIdGrantForbidden(manager_id)


def _check_bindable(role: str, manager_id: str) -> None:
    if role != Role.MANAGER.value:
        raise ManagerRoleRequired(manager_id, role)


def _bind(session: Session, user_id: int, manager_id: str | None) -> None:
    if not repo.set_manager_id(session, user_id, manager_id):
        raise ManagerIdTaken(manager_id)


def register_user(
    session: Session,
    username: str,
    password_hash: str,
    role: Role,
    *,
    actor: Principal | None,
    manager_id: str | None = None,
) -> User:
    """Create a user, bound to `manager_id` when given. Raises `Forbidden` (role or binding not
    allowed for `actor`), `InvalidInput` (a manager id for a role other than `manager`) or
    `Conflict` (the username is taken in any case, or the manager id is bound to another user)."""
    check_may_grant(role, actor, manager_id=manager_id)
    user_id = repo.insert_if_absent(session, username, password_hash, role)
    if user_id is None:
        raise UsernameTaken(username)
    if manager_id is not None:
        _bind(session, user_id, manager_id)
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


def check_may_update(
    session: Session,
    user_id: int,
    *,
    actor: Principal,
    role: Role | None,
    manager_id: ManagerIdChange = KEEP,
) -> None:
    """Raises `UserNotFound` when `actor` may not see the user (or it is missing), `Forbidden` when
    a non-admin asks for a role change or a manager id change (`manager_id` other than `KEEP`), and
    `InvalidInput` when a manager id would be bound to a user whose role (after the change) is not
    `manager`."""
    user = get_user(session, user_id, viewer=actor)
    if role is not None and not actor.is_admin:
        raise RoleChangeForbidden(role.value)
    if manager_id is not KEEP:
        _check_may_bind(actor, manager_id)
        if manager_id is not None:
            _check_bindable(role.value if role is not None else user.role, manager_id)


@dataclass(frozen=True)
class UserChange:
    """What `change_user` did: the user as stored now, and the names of the fields that changed
    (a subset of `password`, `role`, `manager_id`, in that order)."""

    user: User
    changed: tuple[str, ...]


def change_user(
    session: Session,
    user_id: int,
    *,
    actor: Principal,
    password_hash: str | None = None,
    role: Role | None = None,
    manager_id: ManagerIdChange = KEEP,
) -> UserChange:
    """Change a user's password (the user or an admin), role and/or bound manager id (admins only;
    None unbinds, `KEEP` leaves it). A user who stops being a `manager` is unbound. After the commit
    the API forgets the user's cached credentials (`core.uow`, `credentials`).

    Raises `UserNotFound` (missing, or not visible to `actor`), `Forbidden` (a non-admin changing a
    role or a binding), `InvalidInput` (binding a user who is not a manager), and `Conflict`
    (demoting the last admin; a manager id bound to another user)."""
    check_may_update(session, user_id, actor=actor, role=role, manager_id=manager_id)
    # A role change locks every admin row first, in id order, and only then the target: two admins
    # demoting each other queue on the same first lock instead of deadlocking, and the second one
    # sees the first one's change (and the 409 when only one admin is left).
    admins = repo.lock_admins(session) if role is not None else []
    if role is not None and actor.id not in admins:  # demoted meanwhile (or a stale token)
        raise RoleChangeForbidden(role.value)
    user = repo.lock(session, user_id)
    if user is None:
        raise UserNotFound(user_id)
    values: dict[str, object] = {}
    changed: list[str] = []
    if password_hash is not None:
        values["password_hash"] = password_hash
        values["password_changed_at"] = utcnow()
        changed.append("password")
    if role is not None and role.value != user.role:
        if user.role == Role.ADMIN.value and admins == [user.id]:
            raise LastAdmin(user_id)
        values["role"] = role.value
        changed.append("role")
    new_role = role.value if role is not None else user.role
    if manager_id is KEEP and user.manager_id is not None and new_role != Role.MANAGER.value:
        manager_id = None  # the binding goes with the manager role
    if manager_id is not KEEP and manager_id is not None:
        _check_bindable(new_role, manager_id)  # re-checked under the lock: the role may have changed
    if values:
        repo.set_fields(session, user_id, **values)
    if manager_id is not KEEP and manager_id != user.manager_id:
        _bind(session, user_id, manager_id)
        changed.append("manager_id")
    if changed:
        user = repo.lock(session, user_id)
        assert user is not None
    # Cached credentials of this user stop counting once the change is committed (even with nothing
    # changed: a cache may hold a row older than the one just read).
    effects_of(session).credentials.add(user_id)
    return UserChange(user=user, changed=tuple(changed))


def manager_binding(session: Session, user_id: int) -> str | None:
    """The store API `manager_id` bound to the user (e.g. `mgr_123`), or None when the user has
    none or does not exist. With `STORE_REQUIRE_AUTH=true`, a `manager` may act in the store API
    only for this id (admins for any, customers for none; CONTRACT.md, "Store API").
    Reads the database every time, so an unbinding takes effect at once."""
    return repo.manager_id_of(session, user_id)


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


def account_of(session: Session, user_id: int) -> Account | None:
    """What a bearer token of `user_id` is checked against (`core.users.security.principal_of_token`):
    the stored username, role and time of the last password change; None when there is no such user."""
    row = repo.token_subject(session, user_id)
    if row is None:
        return None
    username, role, password_changed_at = row
    return Account(
        id=user_id, username=username, role=Role(role), password_changed_at=password_changed_at.timestamp()
    )


def current_principal(session: Session, principal: Principal) -> Principal | None:
    """`principal` as stored now, read past any cache (user management trusts the database at once,
    not a row that may be `AUTH_USER_CACHE_SECONDS` old): None when the user no longer exists; for a
    bearer token's principal, `InvalidToken` when the password changed after the token was issued."""
    account = account_of(session, principal.id)
    if account is None:
        return None
    if principal.from_token and principal.authenticated_at is not None:
        return principal_of_token(principal.authenticated_at, account)
    return Principal(id=account.id, username=account.username, role=account.role)
