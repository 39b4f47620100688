"""`/orders`: the queue-backed order pipeline (CONTRACT.md, "Orders").

`POST /orders` stores a `pending` order, commits, and only then sends it to the broker (STYLE.md
rule 2); the worker reserves the stock. Clients poll `GET /orders/{id}`, optionally long-polling
with `?wait=N`.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.concurrency import run_in_threadpool

from api import metrics
from api.deps import CurrentUser, PageDep, SessionDep, StaffUser
from api.openapi import responses
from api.pagination import set_page_headers
from api.waiters import wait_while_pending
from core.audit import service as audit
from core.audit.models import AuditAction, AuditEntity
from core.config import settings
from core.events import publish_order_changed
from core.orders import service
from core.orders.models import OrderStatus
from core.orders.schemas import OrderCreate, OrderRead, OrderStatusUpdate

router = APIRouter(prefix="/orders", tags=["orders"])

OrderId = Annotated[int, Path(ge=1, le=2_147_483_647, description="Order id")]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Replays of the same key and body return the first order (no second order).",
    ),
]
_404 = ["order_not_found"]
#: Seconds a client should wait before polling a pending order again.
RETRY_AFTER_SECONDS = "1"


async def _audit(
    session: AsyncSession, actor: str, action: str, order_id: int, details: dict | None = None
) -> None:
    """Record the write in the audit log, in the request's transaction (committed with it)."""
    await session.run_sync(
        lambda s: audit.record(
            s, actor=actor, action=action, entity=AuditEntity.ORDER, entity_id=order_id, details=details
        )
    )


def _order_response(order: OrderRead, status_code: int = 200, **headers: str) -> JSONResponse:
    if order.status == OrderStatus.PENDING:
        headers.setdefault("Retry-After", RETRY_AFTER_SECONDS)
    return JSONResponse(order.model_dump(mode="json"), status_code, headers=headers)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=OrderRead,
    responses=responses(
        _400=["invalid_input", "insufficient_stock", "discontinued"],
        _404=["product_not_found"],
        _409=["conflict"],
    ),
    summary="Submit an order (processed asynchronously)",
)
async def create_order(
    body: OrderCreate,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Check the order against current stock, store it `pending` under the caller's name, enqueue
    it, answer 202 with `Location: /orders/{id}`. The worker's reservation decides; poll the order for
    the outcome. Idempotency keys are per user: the same key from two users makes two orders."""
    idem = service.IdempotencyRequest(f"user:{user.id}", idempotency_key) if idempotency_key else None
    placed = await session.run_sync(
        lambda s: service.place_order(s, body.merged_lines(), user_id=user.id, idempotency=idem)
    )
    order = OrderRead.of(placed.order)
    if not placed.replayed:  # a replay writes nothing
        details = {"lines": len(order.products), "total_price": f"{order.total_price:.2f}"}
        await _audit(session, user.username, AuditAction.ORDER_CREATE, order.id, details)
    await session.commit()
    headers = {"Location": f"/orders/{order.id}"}
    if placed.replayed:
        headers["Idempotent-Replayed"] = "true"
    else:
        enqueued = await request.app.state.dispatcher.send(order.id)
        metrics.orders_submitted.labels("yes" if enqueued else "deferred").inc()
    return _order_response(order, status.HTTP_202_ACCEPTED, **headers)


@router.get("", response_model=list[OrderRead], responses=responses(_400=["invalid_input"]))
async def list_orders(
    request: Request,
    response: Response,
    session: SessionDep,
    page: PageDep,
    user: CurrentUser,
    status_filter: Annotated[
        str | None, Query(alias="status", max_length=32, description="Any case, e.g. confirmed")
    ] = None,
) -> list[OrderRead]:
    """Orders, newest first: a customer's own, or every order for managers and admins.
    `X-Total-Count` and `Link` paginate."""
    wanted = service.parse_status(status_filter).value if status_filter else None
    owner = None if user.is_staff else user.id
    items, total = await session.run_sync(
        lambda s: service.list_orders(s, status=wanted, user_id=owner, limit=page.limit, offset=page.offset)
    )
    set_page_headers(request, response, total, page.limit, page.offset)
    return [OrderRead.of(o) for o in items]


@router.get("/{order_id}", response_model=OrderRead, responses=responses(_404=_404))
async def get_order(
    order_id: OrderId,
    session: SessionDep,
    user: CurrentUser,
    wait: Annotated[
        float,
        Query(ge=0, le=30, description="Seconds (max 30) to hold the request while it is pending"),
    ] = 0,
) -> JSONResponse:
    """The order. With `wait=N`, the answer comes as soon as the order leaves `pending`, or after N
    seconds. A pending order's response carries `Retry-After`. A customer sees only their own orders
    (another user's order is 404, as if it did not exist)."""
    owner = None if user.is_staff else user.id
    if wait <= 0:
        order = await session.run_sync(lambda s: service.get_order(s, order_id, user_id=owner))
        return _order_response(OrderRead.of(order))
    return _order_response(
        await _wait_for_outcome(session, order_id, min(wait, settings.order_max_wait_seconds), owner)
    )


async def _wait_for_outcome(
    session: AsyncSession, order_id: int, wait: float, owner: int | None
) -> OrderRead:
    """The order once it left `pending`, or as it is after `wait` seconds (`api.waiters`). No
    transaction, connection or SQLite lock is held while waiting."""
    started = time.monotonic()

    async def read() -> OrderRead:
        order = OrderRead.of(await session.run_sync(lambda s: service.get_order(s, order_id, user_id=owner)))
        await session.rollback()
        return order

    order, waited = await wait_while_pending(order_id, wait, read, lambda o: o.status == OrderStatus.PENDING)
    if waited:
        metrics.order_time_to_outcome.observe(time.monotonic() - started)
    return order


@router.put(
    "/{order_id}/status",
    response_model=OrderRead,
    responses=responses("staff", _400=["invalid_status"], _404=_404, _409=["invalid_transition"]),
)
async def set_order_status(
    order_id: OrderId, body: OrderStatusUpdate, session: SessionDep, user: StaffUser
) -> JSONResponse:
    """`{"status": "Completed"}` completes a confirmed order (managers and admins); `Pending` on a
    pending order changes nothing; other values -> 400 `Invalid status`; other moves -> 409."""
    order = await session.run_sync(
        lambda s: service.set_status(s, order_id, body.status, actor=user.username)
    )
    result = OrderRead.of(order)
    await _audit(session, user.username, AuditAction.ORDER_STATUS, order_id, {"status": result.status})
    await session.commit()
    await run_in_threadpool(publish_order_changed, order_id)
    return _order_response(result)


@router.post(
    "/{order_id}/cancel",
    response_model=OrderRead,
    responses=responses(_404=_404, _409=["invalid_transition"]),
)
async def cancel_order(order_id: OrderId, session: SessionDep, user: CurrentUser) -> JSONResponse:
    """Cancel a pending or confirmed order; a confirmed order's stock goes back to the shelf.
    Customers cancel their own orders (another user's order is 404); managers and admins any."""
    owner = None if user.is_staff else user.id
    order = await session.run_sync(
        lambda s: service.cancel_order(s, order_id, user_id=owner, actor=user.username)
    )
    result = OrderRead.of(order)
    await _audit(session, user.username, AuditAction.ORDER_CANCEL, order_id, {"status": result.status})
    await session.commit()
    await run_in_threadpool(publish_order_changed, order_id)
    return _order_response(result)
