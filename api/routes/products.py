"""`/products`: synchronous product CRUD and stock changes (CONTRACT.md, "Products")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from api.deps import CurrentUser, PageDep, SessionDep, StaffUser
from api.openapi import INVALID_INPUT, NEGATIVE_STOCK, responses
from api.pagination import set_page_headers
from core.audit import service as audit
from core.audit.models import AuditAction, AuditEntity
from core.errors import InsufficientStock, InvalidInput, ProductNotFound, StockLimitExceeded
from core.products import service
from core.products.models import Product
from core.products.schemas import (
    ProductCreate,
    ProductFilter,
    ProductRead,
    ProductUpdate,
    StockChange,
    StockMovementRead,
)
from core.types import MANAGER_ID_MAX_LENGTH, MAX_ID, DecimalDigits

router = APIRouter(prefix="/products", tags=["products"])

ProductId = Annotated[int, Path(ge=1, le=MAX_ID, description="Product id"), DecimalDigits]
_400 = (INVALID_INPUT, NEGATIVE_STOCK)


async def _audit(
    session: AsyncSession, actor: str, action: str, product_id: int, details: dict[str, Any] | None = None
) -> None:
    """Record the write in the audit log, in the request's transaction (committed with it)."""
    await session.run_sync(
        lambda s: audit.record(
            s,
            actor=actor,
            action=action,
            entity=AuditEntity.PRODUCT,
            entity_id=product_id,
            details=details,
        )
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ProductRead,
    responses=responses("staff", *_400),
    summary="Create a product",
)
async def create_product(
    body: ProductCreate, response: Response, session: SessionDep, user: StaffUser
) -> ProductRead:
    """Create a product (managers and admins). Its opening stock is written to the ledger. 201 with
    `Location`."""
    product = await session.run_sync(service.create_product, body, user.username)
    await _audit(
        session,
        user.username,
        AuditAction.PRODUCT_CREATE,
        product.id,
        {"name": product.name, "stock": product.stock},
    )
    response.headers["Location"] = f"/products/{product.id}"
    return ProductRead.model_validate(product)


@router.get("", response_model=list[ProductRead], responses=responses(InvalidInput))
async def list_products(
    request: Request,
    response: Response,
    session: SessionDep,
    page: PageDep,
    _user: CurrentUser,
    q: Annotated[str | None, Query(max_length=200, description="Name contains (any case)")] = None,
    manager_id: Annotated[str | None, Query(max_length=MANAGER_ID_MAX_LENGTH)] = None,
    discontinued: bool | None = None,
    in_stock: bool | None = None,
) -> list[ProductRead]:
    """Products ordered by id; `X-Total-Count` and `Link` headers paginate."""
    flt = ProductFilter(q=q, manager_id=manager_id, discontinued=discontinued, in_stock=in_stock)
    items, total = await session.run_sync(service.list_products, flt, page.limit, page.offset)
    set_page_headers(request, response, total, page.limit, page.offset)
    return [ProductRead.model_validate(p) for p in items]


@router.get(
    "/below_requirement",
    response_model=list[ProductRead],
    responses=responses(InvalidInput),
)
async def below_requirement(
    request: Request, response: Response, session: SessionDep, page: PageDep, _user: CurrentUser
) -> list[ProductRead]:
    """Products whose stock is at or below their `low_stock_threshold`."""
    items, total = await session.run_sync(service.list_below_requirement, page.limit, page.offset)
    set_page_headers(request, response, total, page.limit, page.offset)
    return [ProductRead.model_validate(p) for p in items]


@router.get("/{product_id}", response_model=ProductRead, responses=responses(ProductNotFound))
async def get_product(product_id: ProductId, session: SessionDep, _user: CurrentUser) -> ProductRead:
    product = await session.run_sync(service.get_product, product_id)
    return ProductRead.model_validate(product)


async def _update(product_id: int, body: ProductUpdate, session: SessionDep, actor: str) -> ProductRead:
    product = await session.run_sync(service.update_product, product_id, body, actor)
    await _audit(
        session, actor, AuditAction.PRODUCT_UPDATE, product_id, {"fields": sorted(body.model_fields_set)}
    )
    return ProductRead.model_validate(product)


@router.put("/{product_id}", response_model=ProductRead, responses=responses("staff", *_400, ProductNotFound))
async def put_product(
    product_id: ProductId, body: ProductUpdate, session: SessionDep, user: StaffUser
) -> ProductRead:
    """Update the given fields; a field not given keeps its value. A new `stock` is ledgered."""
    return await _update(product_id, body, session, user.username)


@router.patch(
    "/{product_id}", response_model=ProductRead, responses=responses("staff", *_400, ProductNotFound)
)
async def patch_product(
    product_id: ProductId, body: ProductUpdate, session: SessionDep, user: StaffUser
) -> ProductRead:
    """Same as PUT: update the given fields only."""
    return await _update(product_id, body, session, user.username)


@router.delete(
    "/{product_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses("staff", ProductNotFound)
)
async def delete_product(product_id: ProductId, session: SessionDep, user: StaffUser) -> Response:
    """Delete the product: 404 from then on; orders that referenced it keep their lines."""
    await session.run_sync(service.delete_product, product_id)
    await _audit(session, user.username, AuditAction.PRODUCT_DELETE, product_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


#: `service.increment_stock` or `service.decrement_stock`: (session, product_id, quantity, actor).
StockWrite = Callable[[Session, int, int, str | None], Product]


async def _change_stock(
    write: StockWrite, action: str, product_id: int, body: StockChange, session: AsyncSession, actor: str
) -> ProductRead:
    """Apply `write` for `body.quantity` units and audit it as `action` with the quantity and the new
    stock, in the request's transaction."""
    product = await session.run_sync(write, product_id, body.quantity, actor)
    await _audit(session, actor, action, product_id, {"quantity": body.quantity, "stock": product.stock})
    return ProductRead.model_validate(product)


@router.patch(
    "/increment/{product_id}",
    response_model=ProductRead,
    responses=responses("staff", InvalidInput, StockLimitExceeded, ProductNotFound),
)
async def increment_stock(
    product_id: ProductId, body: StockChange, session: SessionDep, user: StaffUser
) -> ProductRead:
    """Add `quantity` units (aliases `amount`, `change`)."""
    write = service.increment_stock
    return await _change_stock(write, AuditAction.STOCK_INCREMENT, product_id, body, session, user.username)


@router.patch(
    "/decrement/{product_id}",
    response_model=ProductRead,
    responses=responses("staff", InsufficientStock, InvalidInput, ProductNotFound),
)
async def decrement_stock(
    product_id: ProductId, body: StockChange, session: SessionDep, user: StaffUser
) -> ProductRead:
    """Remove `quantity` units; past zero -> 400 `Insufficient stock`, stock unchanged."""
    write = service.decrement_stock
    return await _change_stock(write, AuditAction.STOCK_DECREMENT, product_id, body, session, user.username)


@router.get(
    "/{product_id}/movements",
    response_model=list[StockMovementRead],
    responses=responses("staff", ProductNotFound),
)
async def list_movements(
    product_id: ProductId,
    request: Request,
    response: Response,
    session: SessionDep,
    page: PageDep,
    _user: StaffUser,
) -> list[StockMovementRead]:
    """The product's stock movement ledger, oldest first (managers and admins: it names the orders
    and the people behind every change)."""
    items, total = await session.run_sync(service.list_movements, product_id, page.limit, page.offset)
    set_page_headers(request, response, total, page.limit, page.offset)
    return [StockMovementRead.model_validate(m) for m in items]
