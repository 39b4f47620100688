"""Request dependencies: the database session (committed at the edge), the current user and the role
guards (CONTRACT.md, "Users and authentication"), pagination."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, cast

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import State

from api.auth import authenticate, basic_scheme, bearer_scheme
from core.errors import CredentialsRequired, RoleRequired, TokenUserGone
from core.orders.intake import StatementUnit, bind_batcher
from core.types import MAX_ID, DecimalDigits
from core.uow import Effects, take_effects
from core.users import service as users_service
from core.users.security import Principal

READ_ONLY_METHODS = frozenset({"GET", "HEAD"})
#: Where `get_session` leaves the request's session for `optional_principal` (an ASGI scope key).
_REQUEST_SESSION = "orderflow.session"
F = TypeVar("F", bound=Any)


def single_statement(endpoint: F) -> F:
    """Mark a route whose write is one atomic statement (order intake): on PostgreSQL its session runs
    in autocommit mode, so no BEGIN/COMMIT round trips are paid (`core.orders.intake`)."""
    endpoint.single_statement = True
    return endpoint


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's unit of work (STYLE.md rules 1 and 2): an `AsyncSession` committed once when
    the route returns, or rolled back if it raises; after the commit, the transaction's effects
    (`core.uow`: order dispatch, cache invalidation, order events) run through
    `app.state.effects`. Routes never commit or roll back.

    Used with `scope="function"`, so the commit and its effects happen before the response is sent:
    a client that got its 2xx can read its write at once, and a failed commit is a 500, never a
    success. GET and HEAD requests only read, and `single_statement` routes write with one atomic
    statement: on PostgreSQL their statements run in autocommit mode."""
    state = request.app.state
    autocommit = request.method in READ_ONLY_METHODS or getattr(
        request.scope.get("endpoint"), "single_statement", False
    )
    factory = state.read_sessionmaker if autocommit else state.sessionmaker
    async with factory() as session:
        bind_batcher(session.sync_session, state.intake_batcher)
        request.scope[_REQUEST_SESSION] = session
        try:
            async with _committed(session):
                yield session
        finally:
            request.scope.pop(_REQUEST_SESSION, None)
        await _run_effects(state, take_effects(session.sync_session))


@asynccontextmanager
async def _committed(session: AsyncSession) -> AsyncIterator[None]:
    """Commit `session` when the block ends without an exception; roll it back otherwise."""
    try:
        yield
        await session.commit()
    except BaseException:
        await session.rollback()
        raise


async def _run_effects(state: State, effects: Effects) -> None:
    """After a commit: forget the changed users' cached credentials, then run the effects."""
    for user_id in effects.credentials:
        state.auth.forget(user_id)
    if effects:
        await state.effects.run(effects)


@asynccontextmanager
async def intake_unit(request: Request) -> AsyncIterator[AsyncSession | StatementUnit]:
    """The unit of work of an order intake (`core.orders.intake.submit_order`), for a route that
    depends on no session: on PostgreSQL a `StatementUnit` (the intake batcher on the statement
    pool, autocommit: no ORM session, no BEGIN/COMMIT), whose effects run when the block is left
    without an exception; on the embedded SQLite default a session committed (and its effects run)
    on leaving the block, or rolled back if it raises. Either way the effects run before the
    response is sent."""
    state = request.app.state
    if state.intake_batcher is not None:
        unit = StatementUnit(state.intake_batcher, state.read_sessionmaker)
        yield unit
        await _run_effects(state, unit.effects)
        return
    async with state.sessionmaker() as session:
        async with _committed(session):
            yield session
        await _run_effects(state, take_effects(session.sync_session))


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


@dataclass(frozen=True, slots=True)
class Page:
    """A page of a listing: `limit` rows after `offset`."""

    limit: int
    offset: int


async def page(
    limit: Annotated[int, Query(ge=1, le=500, description="Page size, at most 500"), DecimalDigits] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="Rows to skip"), DecimalDigits] = 0,
) -> Page:
    """The `limit` (1-500, default 50) and `offset` (>= 0) query parameters. A coroutine, as every
    dependency here is: FastAPI runs a plain function (or a class) in its thread pool, one thread hop
    per request."""
    return Page(limit, offset)


PageDep = Annotated[Page, Depends(page)]


class _SessionOnDemand:
    """Stands in for the `AsyncSession` that `api.auth.authenticate` may read the user with: a read
    session is made on first use only. A bearer token whose user is in `AccountCache` needs none."""

    def __init__(self, factory: async_sessionmaker[AsyncSession]) -> None:
        self._factory = factory
        self.session: AsyncSession | None = None

    def __getattr__(self, name: str) -> Any:
        if self.session is None:
            self.session = self._factory()
        return getattr(self.session, name)


#: The OpenAPI security requirement of a route that takes Basic or bearer credentials: what the
#: `Security(basic_scheme)` and `Security(bearer_scheme)` parameters of `optional_principal` declare,
#: for a route that authenticates through `request_principal` instead.
CREDENTIALS_SECURITY: list[dict[str, list[str]]] = [
    {basic_scheme.scheme_name: []},
    {bearer_scheme.scheme_name: []},
]


async def optional_principal(
    request: Request,
    _basic: Annotated[HTTPAuthorizationCredentials | None, Security(basic_scheme)],
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> Principal | None:
    """The authenticated user, or None when the request carries no `Authorization` header. Bad
    credentials are a 401 even where they are optional. (The two security parameters only declare the
    schemes in the OpenAPI document: `api.auth.authenticate` reads the header itself.)

    The user is read with the request's session when `SessionDep` was solved before this (the
    routes declare it first); otherwise (`POST /orders`, which has no session) with a read session
    of its own, made only when the credentials need a query (Basic credentials, or a bearer token
    whose user `AccountCache` does not hold), committed or rolled back and closed before the route
    runs."""
    return await _principal_of(request)


async def _principal_of(request: Request) -> Principal | None:
    shared: AsyncSession | None = request.scope.get(_REQUEST_SESSION)
    if shared is not None:
        return await authenticate(request, shared)
    state = request.app.state
    lazy = _SessionOnDemand(state.read_sessionmaker)
    try:
        principal = await authenticate(request, cast(AsyncSession, lazy))
        if lazy.session is not None:
            await lazy.session.commit()
            await _run_effects(state, take_effects(lazy.session.sync_session))
    except BaseException:
        if lazy.session is not None:
            await lazy.session.rollback()
        raise
    finally:
        if lazy.session is not None:
            await lazy.session.close()
    return principal


def _required(principal: Principal | None) -> Principal:
    if principal is None:
        raise CredentialsRequired()
    return principal


async def current_principal(
    principal: Annotated[Principal | None, Depends(optional_principal)],
) -> Principal:
    """The authenticated user; 401 `Unauthorized` when there are no credentials."""
    return _required(principal)


async def request_principal(request: Request) -> Principal:
    """`current_principal` as one dependency node, for the order intake's route: FastAPI solves each
    node of a route's dependency tree on every request (its cache key and scopes included), and the
    three nodes this saves were about 8% of a `POST /orders`'s CPU (py-spy). The route declares
    `CREDENTIALS_SECURITY` in its OpenAPI operation instead. Same 401s as `current_principal`, raised
    before the body is validated."""
    return _required(await _principal_of(request))


async def require_staff(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """A manager or an admin; 403 `Forbidden` for a customer."""
    if not principal.is_staff:
        raise RoleRequired.staff(principal.role.value)
    return principal


async def optional_current_role(
    session: SessionDep, principal: Annotated[Principal | None, Depends(optional_principal)]
) -> Principal | None:
    """For user management: a bearer token's principal re-read from the database, so that a demoted
    admin's token stops granting admin at once (Basic credentials are read from it already). A token
    of a user who no longer exists is a 401."""
    if principal is None or not principal.from_token:
        return principal
    fresh = await session.run_sync(users_service.current_principal, principal)
    if fresh is None:
        raise TokenUserGone()
    return fresh


async def current_role(principal: Annotated[Principal | None, Depends(optional_current_role)]) -> Principal:
    """The authenticated user with the role as stored now; 401 when there are no credentials."""
    return _required(principal)


async def require_admin(principal: Annotated[Principal, Depends(current_role)]) -> Principal:
    """An admin by the role stored now (only user management needs one); 403 `Forbidden` otherwise."""
    if not principal.is_admin:
        raise RoleRequired.admin(principal.role.value)
    return principal


CurrentUser = Annotated[Principal, Depends(current_principal)]
#: `CurrentUser` in one node (`request_principal`); the route adds `CREDENTIALS_SECURITY` to its OpenAPI.
IntakeUser = Annotated[Principal, Depends(request_principal)]
StaffUser = Annotated[Principal, Depends(require_staff)]
#: User management: the caller's role as stored now, not as a token claimed it at login.
OptionalUserNow = Annotated[Principal | None, Depends(optional_current_role)]
UserNow = Annotated[Principal, Depends(current_role)]
AdminNow = Annotated[Principal, Depends(require_admin)]
