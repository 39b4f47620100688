"""Order intake, shared by `POST /orders` and `POST /api/orders/process` (CONTRACT.md, "Orders" and
"Store API"): check the products, snapshot prices, store the order `pending` with its lines, its
idempotency key and its audit row, and register its dispatch as an after-commit effect.

On PostgreSQL all of that is **one statement** (`_INTAKE_SQL`, a data-modifying CTE), run in
autocommit mode: a single statement is atomic, so the order, its lines, its key and its audit row are
stored together or not at all, in one round trip. The API runs it straight on a psycopg connection of
its statement pool (`core.db.statement_pool`: no ORM session on the hot path), where psycopg prepares
it once per connection. The checks and the inserts read the same snapshot; when a check
fails nothing is inserted and the products' rows come back so the reason can be told exactly.

Idempotency keys (scope, key) are unique: a key already stored makes the statement insert nothing
and return the first order's id (a replay, or 409 for another body); a concurrent first use of the
same key makes the statement wait for the other transaction and then fail on the unique index, after
which the key is read again. The embedded SQLite default takes the simpler path of
`core.orders.service.place_order` (several statements in its transaction).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from core.audit import service as audit
from core.audit.models import AuditAction, AuditEntity
from core.db import pg_array, statement_pool, utcnow
from core.errors import IdempotencyKeyReused, InvalidInput
from core.inventory import unorderable
from core.orders import service
from core.orders.states import INITIAL_STATUS
from core.uow import Effects, effects_of


@dataclass(frozen=True)
class OrderRequest:
    """What a client asked for, on either surface.

    `lines`: (product_id, quantity) pairs, product ids unique (`merge_lines`). `user_id`: the core
    API's caller; `manager_id`/`customer`: a store order (only that manager's products can be
    ordered). `idempotency_key`: the `Idempotency-Key` header, scoped by `scope` (`user:<id>` or
    `store:<manager_id>`). `actor`: who the audit row names."""

    lines: list[tuple[int, int]]
    actor: str
    scope: str
    user_id: int | None = None
    manager_id: str | None = None
    customer: dict[str, Any] | None = None
    idempotency_key: str | None = None
    audit_details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LineView:
    product_id: int
    name: str
    quantity: int
    unit_price: Decimal


@dataclass(frozen=True)
class OrderView:
    """An order as stored (the shape `OrderRead.of` and `StoreOrder.of` read)."""

    id: int
    status: str
    lines: list[LineView]
    total_price: Decimal
    user_id: int | None
    manager_id: str | None
    customer: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Intake:
    """The stored order and whether it is a replay of an earlier request with the same key."""

    order: Any  # OrderView, or the ORM Order on the SQLite path and for replays
    replayed: bool


def _literal(value: str) -> str:
    """`value` as an SQL string literal (for the statement's constants, written into its text once)."""
    return "'" + value.replace("'", "''") + "'"


#: The constants (the largest total, the audit row's action and entity) are written into the text;
#: the request's values are its parameters.
_INTAKE_SQL = f"""
WITH req AS (
    SELECT r.product_id, r.quantity, (r.ord - 1)::int AS position
    FROM unnest(CAST(:pids AS integer[]), CAST(:qtys AS integer[])) WITH ORDINALITY
         AS r(product_id, quantity, ord)
), snap AS (
    SELECT p.id, p.name, p.price, p.stock, p.discontinued, p.manager_id
    FROM products p
    WHERE p.id = ANY(CAST(:pids AS integer[])) AND p.deleted_at IS NULL
), ok AS (
    SELECT req.product_id, req.quantity, req.position, snap.name, snap.price
    FROM req JOIN snap ON snap.id = req.product_id
    WHERE NOT snap.discontinued AND snap.stock >= req.quantity
      AND (CAST(:mid AS varchar) IS NULL OR snap.manager_id = CAST(:mid AS varchar))
), total AS (
    SELECT count(*) AS n, coalesce(sum(ok.price * ok.quantity), 0) AS amount FROM ok
), prior AS (
    SELECT k.order_id, k.request_hash FROM idempotency_keys k
    WHERE k.scope = CAST(:scope AS varchar) AND k.key = CAST(:key AS varchar)
), new_order AS (
    INSERT INTO orders (status, user_id, manager_id, customer, total_price, error, attempts,
                        created_at, updated_at, enqueued_at)
    SELECT 'pending', CAST(:uid AS integer), CAST(:mid AS varchar), CAST(:customer AS json),
           total.amount, NULL, 0, :now, :now, :now
    FROM total
    WHERE total.n = cardinality(CAST(:pids AS integer[]))
      AND total.amount <= {service.MAX_ORDER_TOTAL}::numeric
      AND NOT EXISTS (SELECT 1 FROM prior)
    RETURNING id
), new_lines AS (
    INSERT INTO order_lines (order_id, product_id, position, name, quantity, unit_price)
    SELECT new_order.id, ok.product_id, ok.position, ok.name, ok.quantity, ok.price
    FROM new_order CROSS JOIN ok
), new_key AS (
    INSERT INTO idempotency_keys (scope, key, request_hash, order_id, created_at)
    SELECT CAST(:scope AS varchar), CAST(:key AS varchar), CAST(:hash AS varchar), new_order.id, :now
    FROM new_order WHERE CAST(:key AS varchar) IS NOT NULL
), new_audit AS (
    INSERT INTO audit_log (at, actor, action, entity, entity_id, request_id, details)
    SELECT :now, CAST(:actor AS varchar), {_literal(AuditAction.ORDER_CREATE)}, {_literal(AuditEntity.ORDER)},
           new_order.id::text, CAST(:request_id AS varchar),
           (CAST(:audit AS jsonb) || jsonb_build_object('total_price', total.amount::text))::json
    FROM new_order CROSS JOIN total
)
SELECT (SELECT id FROM new_order) AS order_id,
       (SELECT order_id FROM prior) AS prior_order_id,
       (SELECT request_hash FROM prior) AS prior_hash,
       (SELECT json_agg(json_build_array(s.id, s.name, s.price::text, s.stock, s.discontinued,
                                         s.manager_id))
        FROM snap s) AS products
"""
_PRIOR_KEY_SQL = "SELECT order_id, request_hash FROM idempotency_keys WHERE scope = :scope AND key = :key"


def _pyformat(sql: str) -> str:
    """`:name` parameters as psycopg's `%(name)s` (`::type` casts are left alone)."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


#: The statements as psycopg runs them (`%(name)s` parameters).
_INTAKE_PG = _pyformat(_INTAKE_SQL)
_PRIOR_KEY_PG = _pyformat(_PRIOR_KEY_SQL)


@dataclass(frozen=True)
class _Product:
    id: int
    name: str
    price: Decimal
    stock: int
    discontinued: bool
    manager_id: str | None


@dataclass
class StatementUnit:
    """The unit of work of an intake that needs no ORM session (the API on PostgreSQL): `pool`, the
    statement pool its one statement runs on in autocommit mode (the statement is its own
    transaction), `reads`, the factory of the short-lived session a replay reads the first order
    with, and `effects`, what the edge runs once the statement has returned (`core.uow`)."""

    pool: AsyncConnectionPool
    reads: async_sessionmaker[AsyncSession]
    effects: Effects = field(default_factory=Effects)


async def submit_order(unit: AsyncSession | StatementUnit, request: OrderRequest) -> Intake:
    """Store a `pending` order and register it for dispatch after the commit, in `unit`'s effects.

    Raises ProductNotFound (404; a product that does not exist, was deleted, or, for a store order,
    is another manager's), ProductDiscontinued (400), InsufficientStock (400), InvalidInput (400) when
    the total exceeds `service.MAX_ORDER_TOTAL`, Conflict (409) when the idempotency key was used with
    another body. A replay returns the first order (`replayed=True`) and dispatches nothing.
    `unit` is a `StatementUnit`, or a session: on PostgreSQL one in autocommit mode (the statement is
    then its own transaction), run on the statement pool bound to it if any (`core.db.statement_pool`)."""
    if isinstance(unit, StatementUnit):
        return await _submit_pg(unit.pool, unit.reads, unit.effects, request)
    if unit.get_bind().dialect.name != "postgresql":
        return await unit.run_sync(_submit_sync, request)
    return await _submit_pg(unit, unit, effects_of(unit.sync_session), request)


async def _submit_pg(
    on: AsyncConnectionPool | AsyncSession,
    reads: async_sessionmaker[AsyncSession] | AsyncSession,
    effects: Effects,
    request: OrderRequest,
) -> Intake:
    """The intake statement on `on` (a pool, or a session in autocommit mode); a replay reads the first
    order with `reads` (a session factory, or the session)."""
    fingerprint = _fingerprint(request) if request.idempotency_key is not None else None
    now = utcnow()
    params = {
        "pids": pg_array(pid for pid, _ in request.lines),
        "qtys": pg_array(qty for _, qty in request.lines),
        "mid": request.manager_id,
        "uid": request.user_id,
        "customer": json.dumps(request.customer) if request.customer is not None else None,
        "now": now,
        "scope": request.scope if request.idempotency_key is not None else None,
        "key": request.idempotency_key,
        "hash": fingerprint,
        "actor": audit.actor_name(request.actor),
        "request_id": audit.current_request_id(),
        "audit": json.dumps({"lines": len(request.lines), **request.audit_details}),
    }
    if isinstance(on, AsyncSession):
        pool = statement_pool(on.sync_session)
        if pool is not None:
            on = pool
    if isinstance(on, AsyncSession):
        row, prior = await _run(await _driver_connection(on), params)
    else:
        conn = await on.getconn()
        try:
            row, prior = await _run(conn, params)
        finally:
            await on.putconn(conn)
    if prior is not None:
        return await _replay(reads, request, prior.order_id, prior.request_hash, fingerprint)
    if row.order_id is None:
        if row.prior_order_id is not None:
            return await _replay(reads, request, row.prior_order_id, row.prior_hash, fingerprint)
        _raise_refusal(request, _products(row.products))
    effects.dispatch.append(row.order_id)
    return Intake(_view(row.order_id, request, _products(row.products), now), replayed=False)


async def _driver_connection(session: AsyncSession) -> AsyncConnection[Any]:
    """The session's own psycopg connection (the session must be in autocommit mode)."""
    fairy = await (await session.connection()).get_raw_connection()
    driver: AsyncConnection[Any] | None = fairy.driver_connection
    assert driver is not None  # None only once the pooled connection was invalidated
    return driver


async def _run(conn: AsyncConnection[Any], params: dict[str, Any]) -> tuple[Any, Any]:
    """(the intake statement's row, None), or (None, the prior key's row) when a concurrent first
    use of the same idempotency key won (the statement failed on the unique index)."""
    cursor = conn.cursor(row_factory=namedtuple_row)
    try:
        await cursor.execute(_INTAKE_PG, params)
    except UniqueViolation:
        if params["key"] is None:
            raise
        await cursor.execute(_PRIOR_KEY_PG, params)
        prior = await cursor.fetchone()
        if prior is not None:
            return None, prior
        await cursor.execute(_INTAKE_PG, params)  # the other request rolled back after all
    return await cursor.fetchone(), None


def _fingerprint(request: OrderRequest) -> str:
    return service.request_fingerprint(
        request.lines, {"manager_id": request.manager_id, "customer": request.customer}
    )


async def _replay(
    reads: async_sessionmaker[AsyncSession] | AsyncSession,
    request: OrderRequest,
    order_id: int | None,
    stored: str,
    fingerprint: str | None,
) -> Intake:
    assert request.idempotency_key is not None  # a prior row is only found for a key
    if order_id is None or stored != fingerprint:
        raise IdempotencyKeyReused(request.idempotency_key)
    if isinstance(reads, AsyncSession):
        return Intake(await reads.run_sync(service.get_order, order_id), replayed=True)
    async with reads() as session:
        return Intake(await session.run_sync(service.get_order, order_id), replayed=True)


def _products(items: list[list[Any]] | None) -> dict[int, _Product]:
    """The statement's `products` column (psycopg parses the JSON) by product id."""
    return {
        pid: _Product(pid, name, Decimal(price), stock, discontinued, manager_id)
        for pid, name, price, stock, discontinued, manager_id in items or []
    }


def _raise_refusal(request: OrderRequest, products: dict[int, _Product]) -> None:
    """Raise the reason the statement stored nothing, judged on the rows it read."""
    refusal = unorderable(request.lines, products, request.manager_id)
    if refusal is not None:
        raise refusal
    total = sum((products[pid].price * qty for pid, qty in request.lines), Decimal("0.00"))
    if total > service.MAX_ORDER_TOTAL:
        raise service.total_too_large(total)
    raise InvalidInput("The order could not be stored; please send it again.")  # pragma: no cover


def _view(order_id: int, request: OrderRequest, products: dict[int, _Product], now: datetime) -> OrderView:
    lines = [LineView(pid, products[pid].name, qty, products[pid].price) for pid, qty in request.lines]
    total = sum((line.unit_price * line.quantity for line in lines), Decimal("0.00"))
    return OrderView(
        id=order_id,
        status=INITIAL_STATUS.value,
        lines=lines,
        total_price=total.quantize(Decimal("0.01")),
        user_id=request.user_id,
        manager_id=request.manager_id,
        customer=request.customer,
        error=None,
        created_at=now,
        updated_at=now,
    )


def _submit_sync(session: Session, request: OrderRequest) -> Intake:
    """The embedded default's intake: `service.place_order` plus the audit row, in the caller's
    transaction."""
    idem = (
        service.IdempotencyRequest(request.scope, request.idempotency_key)
        if request.idempotency_key is not None
        else None
    )
    placed = service.place_order(
        session,
        request.lines,
        user_id=request.user_id,
        customer=request.customer,
        manager_id=request.manager_id,
        idempotency=idem,
    )
    if not placed.replayed:
        order = placed.order
        audit.record(
            session,
            actor=request.actor,
            action=AuditAction.ORDER_CREATE,
            entity=AuditEntity.ORDER,
            entity_id=order.id,
            details={
                "lines": len(request.lines),
                **request.audit_details,
                "total_price": f"{Decimal(order.total_price):.2f}",
            },
        )
        effects_of(session).dispatch.append(order.id)
    return Intake(placed.order, placed.replayed)
