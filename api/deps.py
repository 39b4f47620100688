"""Request dependencies: the database session (committed at the edge), pagination."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """An `AsyncSession` committed when the route returns, rolled back if it raises
    (STYLE.md rule 1). Routes that must act after the commit (enqueue) commit themselves first.

    Used with `scope="function"`, so the commit happens before the response is sent: a client that
    got its 2xx can read its write at once, and a failed commit is a 500, never a success.
    GET and HEAD requests only read: on PostgreSQL their statements run in autocommit mode."""
    factory = (
        request.app.state.read_sessionmaker
        if request.method in READ_ONLY_METHODS
        else request.app.state.sessionmaker
    )
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


class Page:
    """`limit` (1-500, default 50) and `offset` (>= 0) query parameters."""

    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=500, description="Page size, at most 500")] = 50,
        offset: Annotated[int, Query(ge=0, le=2_147_483_647, description="Rows to skip")] = 0,
    ) -> None:
        self.limit = limit
        self.offset = offset


PageDep = Annotated[Page, Depends()]


def actor_of(request: Request) -> str | None:
    """Who is making the change, for the stock movement ledger (the user, once auth exists)."""
    return getattr(request.state, "actor", None)
