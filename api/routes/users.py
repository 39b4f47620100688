"""`/users` and `/login` (CONTRACT.md, "Users and authentication").

Registration is open for customers; other roles need an admin. A user reads and updates themself;
admins read, list and update everyone. Another user's id answers 404, as if it did not exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api.auth import Authenticator, parse_basic, split_authorization
from api.deps import AdminNow, OptionalUserNow, PageDep, SessionDep, UserNow
from api.openapi import WRONG_CREDENTIALS, responses
from api.pagination import set_page_headers
from core.audit import service as audit
from core.audit.models import AuditAction, AuditEntity
from core.errors import (
    BasicCredentialsRequired,
    LastAdmin,
    ManagerIdGrantForbidden,
    ManagerIdTaken,
    ManagerRoleRequired,
    RoleChangeForbidden,
    RoleGrantForbidden,
    UsernameTaken,
    UserNotFound,
)
from core.types import MAX_ID, DecimalDigits
from core.users import service
from core.users.models import Role, User
from core.users.schemas import TokenRead, UserCreate, UserRead, UserUpdate

router = APIRouter(tags=["users"])

UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="User id"), DecimalDigits]


def _auth(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    responses=responses(
        RoleGrantForbidden, ManagerIdGrantForbidden, ManagerRoleRequired, UsernameTaken, ManagerIdTaken
    ),
    summary="Register a user",
    # Credentials are optional here: none registers a customer.
    openapi_extra={"security": [{}]},
)
async def create_user(
    body: UserCreate, request: Request, response: Response, session: SessionDep, actor: OptionalUserNow
) -> UserRead:
    """Anyone may register a `customer` (no credentials needed); `manager` and `admin` accounts need
    an admin's credentials (403 otherwise). `manager_id` binds a `manager` account to that store
    manager id (admins only: 403; other roles: 400). Fields other than `username`, `password`,
    `role` and `manager_id` are refused (400). A username taken in any case, or a manager id bound
    to another user -> 409. 201 with `Location`."""
    service.check_may_grant(body.role, actor, manager_id=body.manager_id)
    await session.rollback()  # no transaction (nor SQLite's write lock) held open while hashing
    password_hash = await _auth(request).hash_password(body.password)

    def register(s: Session) -> User:
        user = service.register_user(
            s, body.username, password_hash, body.role, actor=actor, manager_id=body.manager_id
        )
        details = {"username": user.username, "role": user.role, "manager_id": user.manager_id}
        audit.record(
            s,
            actor=actor.username if actor else user.username,
            action=AuditAction.USER_CREATE,
            entity=AuditEntity.USER,
            entity_id=user.id,
            details={k: v for k, v in details.items() if v is not None},
        )
        return user

    user = await session.run_sync(register)
    response.headers["Location"] = f"/users/{user.id}"
    return UserRead.model_validate(user)


@router.get("/users", response_model=list[UserRead], responses=responses("admin"))
async def list_users(
    request: Request,
    response: Response,
    session: SessionDep,
    page: PageDep,
    _admin: AdminNow,
    role: Annotated[Role | None, Query(description="Only users with this role")] = None,
) -> list[UserRead]:
    """Every user by id (admins only); `X-Total-Count` and `Link` paginate."""
    items, total = await session.run_sync(
        lambda s: service.list_users(
            s, role=role.value if role else None, limit=page.limit, offset=page.offset
        )
    )
    set_page_headers(request, response, total, page.limit, page.offset)
    return [UserRead.model_validate(u) for u in items]


@router.get("/users/{user_id}", response_model=UserRead, responses=responses(UserNotFound))
async def get_user(user_id: UserId, session: SessionDep, viewer: UserNow) -> UserRead:
    """The user themself, or anyone for an admin; any other id -> 404 `User not found`."""
    user = await session.run_sync(lambda s: service.get_user(s, user_id, viewer=viewer))
    return UserRead.model_validate(user)


@router.patch(
    "/users/{user_id}",
    response_model=UserRead,
    responses=responses(
        RoleChangeForbidden,
        ManagerIdGrantForbidden,
        ManagerRoleRequired,
        UserNotFound,
        LastAdmin,
        ManagerIdTaken,
    ),
    summary="Change a password, a role or a manager id binding",
)
async def update_user(
    user_id: UserId, body: UserUpdate, request: Request, session: SessionDep, actor: UserNow
) -> UserRead:
    """`{"password": "..."}` (the user or an admin) and/or `{"role": "manager"}` (admins) and/or
    `{"manager_id": "mgr_123"}` (admins; only on a `manager` account, else 400; `null` unbinds; an
    id bound to another user -> 409; a user who stops being a manager is unbound). A new password
    takes effect at once for Basic credentials in every API process (cached ones stop matching);
    bearer tokens issued before it are a 401 within `AUTH_USER_CACHE_SECONDS` (default 5) in every
    process, at once in this one. A new role is what the user's bearer tokens grant within the same
    bound."""
    auth = _auth(request)
    manager_id = body.manager_id if body.manager_id_given else service.KEEP
    # Answer 404/403/400 before paying for a bcrypt hash. (Not on a second session: on SQLite its
    # BEGIN IMMEDIATE would wait for this request's own transaction.)
    await session.run_sync(
        lambda s: service.check_may_update(s, user_id, actor=actor, role=body.role, manager_id=manager_id)
    )
    await session.rollback()  # no transaction (nor SQLite's write lock) held open while hashing
    password_hash = await auth.hash_password(body.password) if body.password is not None else None

    def update(s: Session) -> User:
        change = service.change_user(
            s, user_id, actor=actor, password_hash=password_hash, role=body.role, manager_id=manager_id
        )
        details: dict[str, object] = {"fields": list(change.changed)}  # never the password itself
        if "role" in change.changed:
            details["role"] = change.user.role
        if "manager_id" in change.changed:
            details["manager_id"] = change.user.manager_id
        audit.record(
            s,
            actor=actor.username,
            action=AuditAction.USER_UPDATE,
            entity=AuditEntity.USER,
            entity_id=user_id,
            details=details,
        )
        return change.user

    user = await session.run_sync(update)
    return UserRead.model_validate(user)


@router.post(
    "/login",
    response_model=TokenRead,
    responses=responses(None, WRONG_CREDENTIALS, BasicCredentialsRequired),
    summary="Exchange Basic credentials for a bearer token",
    openapi_extra={"security": [{"basicAuth": []}]},
)
async def login(request: Request, session: SessionDep) -> JSONResponse:
    """Send `Authorization: Basic base64(username:password)`; get `{access_token, token_type:
    "bearer", expires_in}` (seconds). Use it as `Authorization: Bearer <access_token>`."""
    scheme, param = split_authorization(request.headers.get("authorization", ""))
    if scheme.lower() != "basic":
        raise BasicCredentialsRequired()
    auth = _auth(request)
    principal = await auth.basic(session, *parse_basic(param))
    body = TokenRead(access_token=auth.issue(principal), expires_in=auth.cfg.jwt_expires_seconds)
    # RFC 6749, section 5.1: responses carrying tokens are not cached.
    return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
