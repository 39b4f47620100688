"""`/audit-log`: the audit log, for admins (docs/audit.md; CONTRACT.md, "Store API", last point).

Every write of the core API (and of the store API) records a row in the write's own transaction;
this route reads them, newest first, filtered and paginated like the other lists.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.deps import AdminNow, PageDep, SessionDep
from api.openapi import responses
from api.pagination import set_page_headers
from core.audit import service
from core.audit.schemas import AuditEntryRead, AuditFilter, AwareTimestamp
from core.errors import InvalidInput

router = APIRouter(tags=["audit"])


@router.get(
    "/audit-log",
    response_model=list[AuditEntryRead],
    responses=responses("admin", InvalidInput),
    summary="Read the audit log",
)
async def list_audit_log(
    request: Request,
    response: Response,
    session: SessionDep,
    page: PageDep,
    _admin: AdminNow,
    actor: Annotated[
        str | None, Query(max_length=100, description="A username, `manager:<manager_id>` or `system`")
    ] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. `product.update`")] = None,
    entity: Annotated[str | None, Query(max_length=32, description="`product`, `order` or `user`")] = None,
    entity_id: Annotated[str | None, Query(max_length=64, description="The entity's id, e.g. `42`")] = None,
    request_id: Annotated[
        str | None, Query(max_length=128, description="The `X-Request-ID` of the request")
    ] = None,
    since: Annotated[
        AwareTimestamp | None,
        Query(description="Rows at or after this time (ISO-8601 with a timezone, e.g. 2026-11-21T10:00:00Z)"),
    ] = None,
    until: Annotated[
        AwareTimestamp | None, Query(description="Rows before this time (ISO-8601 with a timezone)")
    ] = None,
) -> list[AuditEntryRead]:
    """Audit rows, newest first (admins only); every filter given must match. `since`/`until` must
    carry a timezone (a naive time -> 400). `X-Total-Count` and `Link` paginate (`limit` 1-500,
    default 50; `offset`)."""
    flt = AuditFilter(
        actor=actor,
        action=action,
        entity=entity,
        entity_id=entity_id,
        request_id=request_id,
        since=since,
        until=until,
    )
    items, total = await session.run_sync(service.list_entries, flt, page.limit, page.offset)
    set_page_headers(request, response, total, page.limit, page.offset)
    return [AuditEntryRead.model_validate(e) for e in items]
