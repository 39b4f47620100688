"""`/orders`: the queue-backed order pipeline (CONTRACT.md, "Orders").

`POST /orders` stores a `pending` order in one statement (`core.orders.intake`); the request's unit of
work then sends it to the workers (STYLE.md rule 2) and the worker reserves the stock. Clients poll
`GET /orders/{id}`, optionally long-polling with `?wait=N`, or ask `POST /orders` to wait with
`Prefer: wait=N` (RFC 7240); waits are answered from the order's event (`api.outcomes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import TypeAdapter

from api.deps import (
    CREDENTIALS_SECURITY,
    CurrentUser,
    IntakeUser,
    PageDep,
    SessionDep,
    StaffUser,
    intake_unit,
)
from api.openapi import responses
from api.outcomes import (
    RETRY_AFTER_SECONDS,
    IdempotencyKeyHeader,
    PreferHeader,
    SettlingResponse,
    Watches,
    preferred_wait,
    settling,
)
from api.pagination import set_page_headers
from core.errors import (
    Conflict,
    InsufficientStock,
    InvalidInput,
    InvalidStatus,
    InvalidStatusTransition,
    OrderNotFound,
    ProductDiscontinued,
    ProductNotFound,
    UnknownOrderStatus,
)
from core.events import OrderOutcome, Watch, hub
from core.orders import service
from core.orders.intake import OrderRequest, submit_order
from core.orders.models import OrderStatus
from core.orders.schemas import OrderCreate, OrderError, OrderRead, OrderStatusUpdate
from core.types import MAX_ID, DecimalDigits

router = APIRouter(prefix="/orders", tags=["orders"])

OrderId = Annotated[int, Path(ge=1, le=MAX_ID, description="Order id"), DecimalDigits]


#: Serialises an order body straight to JSON bytes (the same bytes as `JSONResponse` of its
#: `model_dump(mode="json")`, without the intermediate dict).
_ORDER_JSON = TypeAdapter(OrderRead)


def render_order(order: OrderRead) -> bytes:
    """The JSON body of `order` (compact, UTF-8)."""
    return _ORDER_JSON.dump_json(order)


def _order_response(order: OrderRead, status_code: int = 200, **headers: str) -> Response:
    if order.status == OrderStatus.PENDING:
        headers.setdefault("Retry-After", RETRY_AFTER_SECONDS)
    return Response(render_order(order), status_code, headers=headers, media_type="application/json")


def _settling(
    request: Request,
    watch: Watch,
    order: OrderRead,
    wait: float,
    owner: int | None,
    render: Callable[[OrderRead], Response],
    *,
    submitted: bool = False,
) -> SettlingResponse[OrderRead]:
    return settling(
        request,
        watch,
        order,
        wait,
        read=lambda s: OrderRead.of(service.get_order(s, order.id, user_id=owner)),
        outcome=_with_outcome,
        render=render,
        submitted=submitted,
    )


def _with_outcome(order: OrderRead, outcome: OrderOutcome) -> OrderRead:
    error = OrderError.model_validate(outcome.error) if outcome.error else None
    return order.model_copy(
        update={"status": outcome.status, "error": error, "updated_at": outcome.updated_at}
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=OrderRead,
    responses={
        201: {
            "model": OrderRead,
            "description": "With `Prefer: wait=N`: the order settled (confirmed or rejected) within N "
            "seconds; `Location` and `Preference-Applied: wait=N` are set.",
        },
        **responses(InvalidInput, InsufficientStock, ProductDiscontinued, ProductNotFound, Conflict),
    },
    summary="Submit an order (processed asynchronously)",
    openapi_extra={"security": CREDENTIALS_SECURITY},
)
async def create_order(
    body: OrderCreate,
    request: Request,
    user: IntakeUser,
    idempotency_key: IdempotencyKeyHeader = None,
    prefer: PreferHeader = None,
) -> Response:
    """Check the order against current stock, store it `pending` under the caller's name, send it to
    the workers, answer 202 with `Location: /orders/{id}`. The worker's reservation decides; poll the
    order for the outcome, or send `Prefer: wait=N` (RFC 7240, N seconds, at most 30): the answer is
    then 201 with the settled order (`confirmed` or `rejected`), `Location` and
    `Preference-Applied: wait=N` when it settles within N seconds, else the 202. Idempotency keys
    are per user: the same key from two users makes two orders."""
    # No session dependency: on PostgreSQL the intake is one statement on the statement pool
    # (`api.deps.intake_unit`), and FastAPI's dependency solving is a large share of this route's CPU.
    wait = preferred_wait(prefer, request.app.state.settings.order_max_wait_seconds)
    watch = None
    try:
        async with intake_unit(request) as unit:
            intake = await submit_order(
                unit,
                OrderRequest(
                    lines=body.merged_lines(),
                    actor=user.username,
                    user_id=user.id,
                    idempotency_key=idempotency_key,
                ),
            )
            # The watch goes up before the unit's effects send the order to the workers.
            if wait is not None:
                watch = hub.open(intake.order.id)
        order = OrderRead.of(intake.order)
        headers = {"Location": f"/orders/{order.id}"}
        if intake.replayed:
            headers["Idempotent-Replayed"] = "true"
        if wait is None or watch is None:
            return _order_response(order, status.HTTP_202_ACCEPTED, **headers)
        applied = {"Preference-Applied": f"wait={wait:g}"}

        def render(settled: OrderRead) -> Response:
            pending = settled.status == OrderStatus.PENDING
            code = status.HTTP_202_ACCEPTED if pending else status.HTTP_201_CREATED
            return _order_response(settled, code, **headers, **applied)

        owner = None if user.is_staff else user.id
        # The settling response closes the watch once it has been sent.
        return _settling(request, watch, order, wait, owner, render, submitted=True)
    except BaseException:
        if watch is not None:
            hub.close(watch)
        raise


@router.get("", response_model=list[OrderRead], responses=responses(InvalidInput, UnknownOrderStatus))
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


@router.get("/{order_id}", response_model=OrderRead, responses=responses(OrderNotFound))
async def get_order(
    order_id: OrderId,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    watches: Watches,
    wait: Annotated[
        float,
        Query(ge=0, le=30, description="Seconds (max 30) to hold the request while it is pending"),
    ] = 0,
) -> Response:
    """The order. With `wait=N`, the answer comes as soon as the order leaves `pending`, or after N
    seconds. A pending order's response carries `Retry-After`. A customer sees only their own orders
    (another user's order is 404, as if it did not exist)."""
    owner = None if user.is_staff else user.id
    # The watch goes up before the read, so an outcome that comes in between is not missed.
    watch = watches.open(order_id) if wait > 0 else None
    order = OrderRead.of(await session.run_sync(service.get_order, order_id, user_id=owner))
    if watch is None or order.status != OrderStatus.PENDING:
        return _order_response(order)
    wait = min(wait, request.app.state.settings.order_max_wait_seconds)
    return _settling(request, watch, order, wait, owner, _order_response)


@router.put(
    "/{order_id}/status",
    response_model=OrderRead,
    responses=responses("staff", InvalidStatus, OrderNotFound, InvalidStatusTransition),
)
async def set_order_status(
    order_id: OrderId, body: OrderStatusUpdate, session: SessionDep, user: StaffUser
) -> Response:
    """`{"status": "Completed"}` completes a confirmed order (managers and admins); `Pending` on a
    pending order changes nothing; other values -> 400 `Invalid status`; other moves -> 409."""
    order = await session.run_sync(
        lambda s: service.set_status(s, order_id, body.status, actor=user.username)
    )
    return _order_response(OrderRead.of(order))


@router.post(
    "/{order_id}/cancel",
    response_model=OrderRead,
    responses=responses(OrderNotFound, InvalidStatusTransition),
)
async def cancel_order(order_id: OrderId, session: SessionDep, user: CurrentUser) -> Response:
    """Cancel a pending or confirmed order; a confirmed order's stock goes back to the shelf.
    Customers cancel their own orders (another user's order is 404); managers and admins any."""
    owner = None if user.is_staff else user.id
    order = await session.run_sync(
        lambda s: service.cancel_order(s, order_id, user_id=owner, actor=user.username)
    )
    return _order_response(OrderRead.of(order))
