"""The store API under `/api/` (CONTRACT.md, "Store API"), followed to the letter.

A second face of the same domain: the products, orders, worker and stock movement ledger of the
core API, with the store's shapes (public ids `prod_001` / `ord_789`, `quantity`, `total_amount`) and
its nested error envelope `{"error": {"code", "message", "details"}}` (rendered by `api.errors` for
every path under `/api/`). The rate limit and its `RateLimit-*` headers come from
`api.ratelimit.StoreRateLimitMiddleware`.

Access control is upstream by default. With `STORE_REQUIRE_AUTH=true` the routes take the core API's
credentials: an admin may act for any `manager_id`, a manager only for the one bound to their account
(`users.manager_id`, set by an admin), a customer for none (403).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, Security, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from api import metrics
from api.auth import authenticate, basic_scheme, bearer_scheme
from api.deps import SessionDep, single_statement
from api.errors import rejection_response
from api.openapi import (
    STORE_INVALID_EMAIL,
    STORE_INVALID_ORDER_ID,
    STORE_INVALID_STATUS,
    STORE_MISSING_MANAGER_ID,
    Example,
    store_responses,
)
from api.outcomes import (
    RETRY_AFTER_SECONDS,
    IdempotencyKeyHeader,
    PreferHeader,
    SettlingResponse,
    Watches,
    preferred_wait,
    settling,
)
from core.audit import service as audit
from core.audit.models import AuditAction, AuditEntity
from core.errors import (
    CredentialsRequired,
    DuplicateInBatch,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidInput,
    ManagerMismatch,
    ManagerUnbound,
    OrderNotFound,
    ProductDiscontinued,
    ProductNotFound,
    StoreRoleRequired,
)
from core.events import Watch
from core.orders.intake import OrderRequest
from core.orders.models import OrderStatus
from core.store import service as store
from core.store.ids import OrderRef, format_order_id
from core.store.schemas import (
    DiscontinueRequest,
    InventoryBatch,
    InventoryList,
    ManagerId,
    ProcessedOrder,
    ProcessOrderRequest,
    ProductStatus,
)
from core.users import service as users_service
from core.users.models import Role
from core.users.security import Principal

router = APIRouter(prefix="/api", tags=["store"])

#: Credentials are optional in the OpenAPI document: the routes take them only with
#: STORE_REQUIRE_AUTH=true (an empty requirement is appended to the two schemes).
OPTIONAL_AUTH: dict[str, Any] = {"security": [{}]}


# --- access ---------------------------------------------------------------------------------------


async def store_caller(
    request: Request,
    session: SessionDep,
    _basic: Annotated[HTTPAuthorizationCredentials | None, Security(basic_scheme)],
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> Principal | None:
    """None when access control is upstream (the default); with `STORE_REQUIRE_AUTH=true`, the
    authenticated user (401 without credentials)."""
    if not request.app.state.settings.store_require_auth:
        return None
    principal = await authenticate(request, session)
    if principal is None:
        raise CredentialsRequired()
    return principal


StoreCaller = Annotated[Principal | None, Depends(store_caller)]


async def authorize_manager(session: SessionDep, caller: Principal | None, manager_id: str | None) -> None:
    """Allow `caller` to act for `manager_id`: anyone when access control is upstream (`caller` None),
    an admin always, a manager only for the manager id bound to their account. Raises Forbidden."""
    if caller is None or caller.role == Role.ADMIN:
        return
    if caller.role != Role.MANAGER:
        raise StoreRoleRequired(caller.role.value)
    bound = await session.run_sync(users_service.manager_binding, caller.id)
    if bound is None or bound != manager_id:
        if bound is None:
            raise ManagerUnbound(manager_id)
        raise ManagerMismatch(manager_id, bound)


def actor_of(caller: Principal | None, manager_id: str) -> str:
    """Who a store write is recorded as (ledger and audit log): the user, or the manager the
    upstream caller named."""
    return caller.username if caller is not None else f"manager:{manager_id}"


# --- inventory ------------------------------------------------------------------------------------


@router.post(
    "/inventory/products",
    status_code=status.HTTP_201_CREATED,
    response_model=InventoryList,
    responses=store_responses(InvalidInput, DuplicateInBatch, ProductNotFound),
    summary="Add or update a manager's products (one transaction)",
    openapi_extra=OPTIONAL_AUTH,
)
async def upsert_products(body: InventoryBatch, session: SessionDep, caller: StoreCaller) -> InventoryList:
    """Each item with `id` updates that product; an item whose `name` is one of the manager's
    products updates it; any other item creates a product. `quantity` is the stock on hand after the
    write. The whole batch is checked first and written in one transaction: one bad item and nothing
    is written. 201 with the written products in request order."""
    await authorize_manager(session, caller, body.manager_id)
    actor = actor_of(caller, body.manager_id)
    written = await session.run_sync(store.upsert_inventory, body, actor)
    await session.run_sync(
        audit.record_many,
        [
            {
                "actor": actor,
                "action": AuditAction.PRODUCT_CREATE if created else AuditAction.PRODUCT_UPDATE,
                "entity": AuditEntity.PRODUCT,
                "entity_id": str(item.id),
                "details": {"manager_id": body.manager_id, "quantity": item.quantity},
            }
            for item, created in written
        ],
    )
    return InventoryList(products=[item for item, _ in written])


@router.get(
    "/inventory/products",
    response_model=InventoryList,
    responses=store_responses(STORE_INVALID_STATUS, STORE_MISSING_MANAGER_ID),
    summary="List a manager's products (cached)",
    openapi_extra=OPTIONAL_AUTH,
)
async def list_products(
    request: Request,
    session: SessionDep,
    caller: StoreCaller,
    manager_id: Annotated[ManagerId, Query(description="Whose products, e.g. mgr_123 (required)")],
    status_filter: Annotated[
        ProductStatus | None,
        Query(alias="status", description="in_stock, out_of_stock or discontinued; absent: all"),
    ] = None,
) -> Response:
    """The manager's products in id order, each exactly `{id, name, price, quantity}`. Answers come
    from a cache kept per (manager, status) and replaced by any write to that manager's products
    (including the worker's reservations); `X-Cache: HIT` or `MISS` says which."""
    await authorize_manager(session, caller, manager_id)
    wanted = status_filter.value if status_filter is not None else None
    key = wanted or "all"
    listings = request.app.state.listing_cache
    version, body = await listings.lookup(manager_id, key)
    if body is not None:
        metrics.store_listing_cache.labels("hit").inc()
        return Response(body, media_type="application/json", headers={"X-Cache": "HIT"})
    items = await session.run_sync(store.list_inventory, manager_id, wanted)
    body = InventoryList(products=items).model_dump_json().encode()
    await listings.store(manager_id, key, version, body)
    metrics.store_listing_cache.labels("miss").inc()
    return Response(body, media_type="application/json", headers={"X-Cache": "MISS"})


@router.post(
    "/inventory/discontinue",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=store_responses(ProductNotFound),
    summary="Stop selling a product (idempotent)",
    openapi_extra=OPTIONAL_AUTH,
)
async def discontinue_product(body: DiscontinueRequest, session: SessionDep, caller: StoreCaller) -> Response:
    """204, also for a product already discontinued. Orders still pending for it are rejected by the
    worker. A product that does not exist or is another manager's is 404."""
    await authorize_manager(session, caller, body.manager_id)
    changed = await session.run_sync(store.discontinue, body.manager_id, body.product_id)
    if changed:
        await session.run_sync(
            lambda s: audit.record(
                s,
                actor=actor_of(caller, body.manager_id),
                action=AuditAction.PRODUCT_DISCONTINUE,
                entity=AuditEntity.PRODUCT,
                entity_id=str(body.product_id),
                details={"manager_id": body.manager_id},
            )
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- orders ---------------------------------------------------------------------------------------


def outcome_response(order: store.StoreOrder) -> JSONResponse:
    """The answer for an order's current state (CONTRACT.md, "Store API"): processed -> 200
    `{order_id, status: "processed", total_amount}`; pending -> 202 `{order_id, status: "pending"}` with
    `Location` and `Retry-After`; rejected -> 400/404 with the rejection's code and message; failed
    (a technical fault outlived the retries; no stock held) -> 500 `INTERNAL_ERROR`; cancelled -> 200
    with `status: "cancelled"`."""
    public_id = format_order_id(order.id)
    if order.status in store.PROCESSED_STATUSES:
        body = ProcessedOrder(order_id=order.id, status="processed", total_amount=order.total)
        return JSONResponse(body.model_dump(mode="json"), 200)
    if order.status == OrderStatus.PENDING:
        return JSONResponse(
            {"order_id": public_id, "status": "pending"},
            202,
            headers={"Location": f"/api/orders/{public_id}", "Retry-After": RETRY_AFTER_SECONDS},
        )
    if order.status == OrderStatus.CANCELLED:
        body = ProcessedOrder(order_id=order.id, status="cancelled", total_amount=order.total)
        return JSONResponse(body.model_dump(mode="json"), 200)
    return rejection_response(order.error or {}, order.id, failed=order.status != OrderStatus.REJECTED)


def _settling(
    request: Request,
    watch: Watch,
    order: store.StoreOrder,
    wait: float,
    render: Callable[[store.StoreOrder], Response] = outcome_response,
    *,
    submitted: bool = False,
) -> SettlingResponse[store.StoreOrder]:
    """Wait up to `wait` seconds for the order to settle (`api.outcomes`), then render it."""
    return settling(
        request,
        watch,
        order,
        wait,
        read=lambda s: store.get_order(s, order.id),
        outcome=store.StoreOrder.with_outcome,
        render=render,
        submitted=submitted,
    )


@router.post(
    "/orders/process",
    response_model=ProcessedOrder,
    responses=store_responses(
        InvalidInput,
        InsufficientStock,
        ProductDiscontinued,
        STORE_INVALID_EMAIL,
        ProductNotFound,
        Example("idempotency_conflict", IdempotencyKeyReused.example()),
        pending=True,
    ),
    summary="Process an order through the queue and wait for the outcome",
    openapi_extra=OPTIONAL_AUTH,
)
@single_statement
async def process_order(
    body: ProcessOrderRequest,
    request: Request,
    session: SessionDep,
    caller: StoreCaller,
    watches: Watches,
    idempotency_key: IdempotencyKeyHeader = None,
    prefer: PreferHeader = None,
) -> Response:
    """Checks the order against the manager's inventory, stores it `pending`, sends it to the worker
    and waits up to `ORDER_WAIT_SECONDS` (or N seconds with `Prefer: wait=N`, RFC 7240, at most 30)
    for the reservation: 200 `processed` with `total_amount` (summed in Decimal), 400/404 with the
    reason (`INSUFFICIENT_STOCK`, `PRODUCT_DISCONTINUED`, `PRODUCT_NOT_FOUND`; no stock is changed),
    or 202 `pending` with `Location` to poll."""
    await authorize_manager(session, caller, body.manager_id)
    cfg = request.app.state.settings
    preferred = preferred_wait(prefer, cfg.order_max_wait_seconds)
    lines = body.merged_lines()
    intake = await store.place_order(
        session,
        OrderRequest(
            lines=lines,
            actor=actor_of(caller, body.manager_id),
            manager_id=body.manager_id,
            customer=body.customer_record(),
            idempotency_key=idempotency_key,
            audit_details={"manager_id": body.manager_id},
        ),
    )
    extra = {"Idempotent-Replayed": "true"} if intake.replayed else {}
    if preferred is not None:
        extra["Preference-Applied"] = f"wait={preferred:g}"

    def render(settled: store.StoreOrder) -> Response:
        response = outcome_response(settled)
        response.headers.update(extra)
        return response

    order = store.StoreOrder.of(intake.order)
    wait = cfg.order_wait_seconds if preferred is None else preferred
    return _settling(request, watches.open(order.id), order, wait, render, submitted=True)


@router.get(
    "/orders/{order_id}",
    response_model=ProcessedOrder,
    responses=store_responses(
        STORE_INVALID_ORDER_ID,
        InsufficientStock,
        Example("order_not_found", OrderNotFound(789)),
        ProductNotFound,
        pending=True,
    ),
    summary="Poll an order's outcome",
    openapi_extra=OPTIONAL_AUTH,
)
async def get_order(
    order_id: Annotated[OrderRef, Path(description="e.g. ord_789")],
    request: Request,
    session: SessionDep,
    caller: StoreCaller,
    watches: Watches,
    wait: Annotated[
        float, Query(ge=0, le=30, description="Seconds (max 30) to hold the request while it is pending")
    ] = 0,
) -> Response:
    """The same answer `POST /api/orders/process` gives for the order now: 200 processed, 202 pending
    (with `Location` and `Retry-After`), or the rejection's 400/404. `wait=N` holds the request until
    the order leaves `pending` or N seconds pass."""
    # The watch goes up before the read, so an outcome that comes in between is not missed.
    watch = watches.open(order_id) if wait > 0 else None
    order = await session.run_sync(store.get_order, order_id)
    if caller is not None:
        try:
            await authorize_manager(session, caller, order.manager_id)
        except Forbidden as exc:
            if caller.role != Role.MANAGER:
                raise
            # Another manager's order is not there, as far as this manager can tell (as in the
            # core API): a 403 would tell that the id exists.
            raise OrderNotFound(order_id) from exc
    if watch is None or order.status != OrderStatus.PENDING:
        return outcome_response(order)
    return _settling(request, watch, order, wait)
