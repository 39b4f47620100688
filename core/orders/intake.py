"""Order intake, shared by `POST /orders` and `POST /api/orders/process` (CONTRACT.md, "Orders" and
"Store API"): check the products, snapshot prices, store the order `pending` with its lines, its
idempotency key and its audit row, and register its dispatch as an after-commit effect.

On PostgreSQL all of that is **one statement** (`_INTAKE_SQL`, a data-modifying CTE), run in
autocommit mode: a single statement is atomic, so the order, its lines, its key and its audit row are
stored together or not at all, in one round trip. The API runs it straight on a psycopg connection of
its statement pool (`core.db.make_statement_pool`: no ORM session on the hot path), where psycopg
prepares it once per connection, through `IntakeBatcher`: intakes that queue while others run are
stored together by one statement (`_BATCH_SQL`, group commit), each order decided on its own. The
checks and the inserts read the same snapshot; when a check fails nothing is inserted and the
products' rows come back so the reason can be told exactly.

Idempotency keys (scope, key) are unique: a key already stored makes the statement insert nothing
and return the first order's id (a replay, or 409 for another body); a concurrent first use of the
same key makes the statement wait for the other transaction and then fail on the unique index, after
which the key is read again. The embedded SQLite default takes the simpler path of
`core.orders.service.place_order` (several statements in its transaction).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from core.audit import service as audit
from core.audit.models import AuditAction, AuditEntity
from core.db import on_postgresql, pg_array, utcnow
from core.errors import IdempotencyKeyReused, InvalidInput
from core.inventory import unorderable
from core.orders import service
from core.orders.models import idempotency_scope
from core.orders.states import INITIAL_STATUS
from core.types import MAX_ORDER_TOTAL
from core.uow import Effects, effects_of


@dataclass(frozen=True)
class OrderRequest:
    """What a client asked for, on either surface.

    `lines`: (product_id, quantity) pairs, product ids unique (`merge_lines`). `user_id`: the core
    API's caller; `manager_id`/`customer`: a store order (only that manager's products can be
    ordered). `idempotency_key`: the `Idempotency-Key` header, told apart within `scope`. `actor`:
    who the audit row names."""

    lines: list[tuple[int, int]]
    actor: str
    user_id: int | None = None
    manager_id: str | None = None
    customer: dict[str, Any] | None = None
    idempotency_key: str | None = None
    audit_details: dict[str, Any] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        """The key space of `idempotency_key` (`core.orders.models.idempotency_scope`)."""
        return idempotency_scope(self.user_id, self.manager_id)


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
      AND total.amount <= {MAX_ORDER_TOTAL}::numeric
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

#: `_INTAKE_SQL` for several orders at once (`IntakeBatcher`): the orders' values are arrays, one
#: element per order (`o_*`) or per line (`l_*`, with `l_ord`, the 1-based order it belongs to), and
#: every order is decided on its own: stored when all its lines pass and its key is new, else left
#: out, as the single statement decides. Order ids are drawn in `accepted` (materialised once, so
#: each order's id is drawn once) to tie the inserted rows to the order they came from. One row per
#: order comes back, in `ord` order, with the snapshot of its own products (`products`, as in
#: `_INTAKE_SQL`) unless a prior key was found.
_BATCH_SQL = f"""
WITH o AS (
    SELECT * FROM unnest(CAST(:o_uid AS integer[]), CAST(:o_mid AS varchar[]), CAST(:o_customer AS text[]),
                         CAST(:o_scope AS varchar[]), CAST(:o_key AS varchar[]), CAST(:o_hash AS varchar[]),
                         CAST(:o_actor AS varchar[]), CAST(:o_request_id AS varchar[]),
                         CAST(:o_audit AS text[]), CAST(:o_lines AS integer[]), CAST(:o_now AS timestamptz[]))
        WITH ORDINALITY AS o(uid, mid, customer, scope, key, hash, actor, request_id, audit, lines, at, ord)
), req AS (
    SELECT r.ord, r.product_id, r.quantity, r.position
    FROM unnest(CAST(:l_ord AS integer[]), CAST(:l_pid AS integer[]), CAST(:l_qty AS integer[]),
                CAST(:l_pos AS integer[])) AS r(ord, product_id, quantity, position)
), snap AS (
    SELECT p.id, p.name, p.price, p.stock, p.discontinued, p.manager_id
    FROM products p
    WHERE p.id = ANY(CAST(:l_pid AS integer[])) AND p.deleted_at IS NULL
), ok AS (
    SELECT req.ord, req.product_id, req.quantity, req.position, snap.name, snap.price
    FROM req JOIN o ON o.ord = req.ord JOIN snap ON snap.id = req.product_id
    WHERE NOT snap.discontinued AND snap.stock >= req.quantity
      AND (o.mid IS NULL OR snap.manager_id = o.mid)
), total AS (
    SELECT ok.ord, count(*) AS n, sum(ok.price * ok.quantity) AS amount FROM ok GROUP BY ok.ord
), prior AS (
    SELECT o.ord, k.order_id, k.request_hash
    FROM o JOIN idempotency_keys k ON k.scope = o.scope AND k.key = o.key
), accepted AS MATERIALIZED (
    SELECT o.*, total.amount, CAST(nextval('orders_id_seq') AS integer) AS id
    FROM o JOIN total ON total.ord = o.ord
    WHERE total.n = o.lines AND total.amount <= {MAX_ORDER_TOTAL}::numeric
      AND NOT EXISTS (SELECT 1 FROM prior WHERE prior.ord = o.ord)
), new_order AS (
    INSERT INTO orders (id, status, user_id, manager_id, customer, total_price, error, attempts,
                        created_at, updated_at, enqueued_at)
    SELECT a.id, 'pending', a.uid, a.mid, CAST(a.customer AS json), a.amount, NULL, 0, a.at, a.at, a.at
    FROM accepted a
), new_lines AS (
    INSERT INTO order_lines (order_id, product_id, position, name, quantity, unit_price)
    SELECT a.id, ok.product_id, ok.position, ok.name, ok.quantity, ok.price
    FROM accepted a JOIN ok ON ok.ord = a.ord
), new_key AS (
    INSERT INTO idempotency_keys (scope, key, request_hash, order_id, created_at)
    SELECT a.scope, a.key, a.hash, a.id, a.at FROM accepted a WHERE a.key IS NOT NULL
), new_audit AS (
    INSERT INTO audit_log (at, actor, action, entity, entity_id, request_id, details)
    SELECT a.at, a.actor, {_literal(AuditAction.ORDER_CREATE)}, {_literal(AuditEntity.ORDER)}, a.id::text,
           a.request_id, (CAST(a.audit AS jsonb) || jsonb_build_object('total_price', a.amount::text))::json
    FROM accepted a
)
SELECT o.ord, a.id AS order_id, p.order_id AS prior_order_id, p.request_hash AS prior_hash,
       CASE WHEN p.ord IS NULL THEN
           (SELECT json_agg(json_build_array(s.id, s.name, s.price::text, s.stock, s.discontinued,
                                             s.manager_id))
            FROM req r JOIN snap s ON s.id = r.product_id WHERE r.ord = o.ord)
       END AS products
FROM o LEFT JOIN accepted a ON a.ord = o.ord LEFT JOIN prior p ON p.ord = o.ord
ORDER BY o.ord
"""


def _pyformat(sql: str) -> str:
    """`:name` parameters as psycopg's `%(name)s` (`::type` casts are left alone)."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


#: The statements as psycopg runs them (`%(name)s` parameters).
_INTAKE_PG = _pyformat(_INTAKE_SQL)
_PRIOR_KEY_PG = _pyformat(_PRIOR_KEY_SQL)
_BATCH_PG = _pyformat(_BATCH_SQL)


@dataclass(frozen=True)
class _Product:
    id: int
    name: str
    price: Decimal
    stock: int
    discontinued: bool
    manager_id: str | None


#: A queued intake: its `_INTAKE_SQL` parameters, its (product_id, quantity) lines, and the future its
#: request awaits (`_run`'s (row, prior), or None to run alone).
_Queued = tuple[dict[str, Any], list[tuple[int, int]], "asyncio.Future[Any]"]


class IntakeBatcher:
    """Group commit of one process's intakes on PostgreSQL: the intake statements run on `pool` (the
    statement pool, autocommit connections), at most `max_statements` at once. An intake that finds a
    free slot and nobody queued runs alone at once (`_INTAKE_SQL`: no added latency); the others queue
    and go together, up to `max_batch` orders, in the next statement (`_BATCH_SQL`), which each order
    passes or fails on its own. Under load that is one round trip, one commit and one WAL flush for
    many orders instead of one each (docs/performance.md, "Group commit of the intake").

    A batch statement that fails on something one of its orders could cause (a unique idempotency key
    first used twice at once, any data error) is not the others' fault: each of its orders then runs
    alone, so only the order at fault gets the error. A failure of the database itself
    (`psycopg.OperationalError`, `psycopg_pool.PoolTimeout`) is every queued order's error, as it would
    have been alone. An order that waits in the queue longer than the pool's `timeout` (the statement
    ahead of it is stuck, as on a frozen server) leaves it with `psycopg_pool.PoolTimeout`, never sent,
    so its 500 is the whole truth and a retry cannot double it. Event-loop bound: make and use it on
    the API process's loop."""

    def __init__(self, pool: AsyncConnectionPool, *, max_batch: int = 64, max_statements: int = 1) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self.max_statements = max(1, min(max_statements, pool.max_size))
        self._queue: deque[_Queued] = deque()
        self._running = 0
        self._drains: set[asyncio.Task[None]] = set()

    async def run(self, params: dict[str, Any], lines: list[tuple[int, int]]) -> tuple[Any, Any]:
        """The intake of one order: `_run`'s (row, prior) for `params` (`_INTAKE_SQL`'s parameters),
        whose (product_id, quantity) `lines` the batch statement reads. Raises what `_run` raises."""
        if self._running < self.max_statements and not self._queue:
            self._running += 1
            try:
                return await self._alone(params)
            finally:
                self._running -= 1
                self._start_drains()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        queued: _Queued = (params, lines, future)
        self._queue.append(queued)
        self._start_drains()
        expiry = loop.call_later(self.pool.timeout, self._expire, queued)
        try:
            outcome: tuple[Any, Any] | None = await future
        finally:
            expiry.cancel()
        if outcome is None:  # the batch failed on one of its orders: each runs alone
            return await self._alone(params)
        return outcome

    def _expire(self, queued: _Queued) -> None:
        """An intake still queued after the pool's `timeout` (the statement ahead of it is stuck, as
        on a frozen server) leaves the queue with `PoolTimeout`: its order was never sent, so the
        client's 500 is the whole truth. One already taken into a statement waits for its outcome."""
        for index, item in enumerate(self._queue):
            if item is queued:
                del self._queue[index]
                if not queued[2].done():
                    queued[2].set_exception(
                        PoolTimeout(
                            f"the order waited {self.pool.timeout:g} s for the intake statement ahead of it"
                        )
                    )
                return

    async def _alone(self, params: dict[str, Any]) -> tuple[Any, Any]:
        conn = await self.pool.getconn()
        try:
            return await _run(conn, params)
        finally:
            await self.pool.putconn(conn)

    def _start_drains(self) -> None:
        while self._queue and self._running < self.max_statements:
            self._running += 1
            task = asyncio.create_task(self._drain(), name="intake-batch")
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    async def _drain(self) -> None:
        """Run queued intakes, `max_batch` at a time, until none is left; then free the slot."""
        try:
            while self._queue:
                batch: list[_Queued] = []
                while self._queue and len(batch) < self.max_batch:
                    item = self._queue.popleft()
                    if not item[2].done():  # its request was cancelled: leave it out
                        batch.append(item)
                if batch:
                    await self._run_batch(batch)
        finally:
            self._running -= 1

    async def _run_batch(self, batch: list[_Queued]) -> None:
        futures = [future for _, _, future in batch]
        try:
            if len(batch) == 1:
                outcomes: list[tuple[Any, Any] | None] = [await self._alone(batch[0][0])]
            else:
                rows = await self._together([(params, lines) for params, lines, _ in batch])
                outcomes = [(row, None) for row in rows]
        except psycopg.Error as exc:
            # The database's own failure (`PoolTimeout` is an `OperationalError`) is everyone's; a
            # lone order's error is its own; otherwise each order of the batch runs alone.
            if len(batch) == 1 or isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                _settle(futures, exc)
                return
            outcomes = [None] * len(batch)
        except BaseException as exc:
            _settle(futures, exc)
            raise
        for future, outcome in zip(futures, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def _together(self, orders: Sequence[tuple[dict[str, Any], list[tuple[int, int]]]]) -> list[Any]:
        """`_BATCH_SQL` for `orders` on one connection: its row of each order, in order."""
        conn = await self.pool.getconn()
        try:
            cursor = conn.cursor(row_factory=namedtuple_row)
            await cursor.execute(_BATCH_PG, _batch_params(orders))
            rows = await cursor.fetchall()
        finally:
            await self.pool.putconn(conn)
        return rows


def _settle(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


#: The `_INTAKE_SQL` parameters that `_BATCH_SQL` takes as one array each (`o_<name>`).
_ORDER_COLUMNS = ("uid", "mid", "customer", "scope", "key", "hash", "actor", "request_id", "audit")


def _batch_params(orders: Sequence[tuple[dict[str, Any], list[tuple[int, int]]]]) -> dict[str, str]:
    """`_BATCH_SQL`'s parameters: each order's `_INTAKE_SQL` parameters as array literals."""
    columns: dict[str, list[Any]] = {name: [] for name in _ORDER_COLUMNS}
    counts: list[int] = []
    stamps: list[str] = []
    l_ord: list[int] = []
    l_pid: list[int] = []
    l_qty: list[int] = []
    l_pos: list[int] = []
    for number, (params, lines) in enumerate(orders, start=1):
        for name, values in columns.items():
            values.append(params[name])
        counts.append(len(lines))
        stamps.append(params["now"].isoformat())
        for position, (pid, qty) in enumerate(lines):
            l_ord.append(number)
            l_pid.append(pid)
            l_qty.append(qty)
            l_pos.append(position)
    arrays = {f"o_{name}": pg_array(values) for name, values in columns.items()}
    arrays.update(
        o_lines=pg_array(counts),
        o_now=pg_array(stamps),
        l_ord=pg_array(l_ord),
        l_pid=pg_array(l_pid),
        l_qty=pg_array(l_qty),
        l_pos=pg_array(l_pos),
    )
    return arrays


_INTAKE_BATCHER = "orderflow.intake_batcher"


def bind_batcher(session: Session, batcher: IntakeBatcher | None) -> None:
    """Let `submit_order` run this session's intake on `batcher` (the API's edge; PostgreSQL)."""
    if batcher is not None:
        session.info[_INTAKE_BATCHER] = batcher


@dataclass
class StatementUnit:
    """The unit of work of an intake that needs no ORM session (the API on PostgreSQL): `batcher`,
    which runs its statement on the statement pool in autocommit mode (the statement is its own
    transaction), `reads`, the factory of the short-lived session a replay reads the first order
    with, and `effects`, what the edge runs once the statement has returned (`core.uow`)."""

    batcher: IntakeBatcher
    reads: async_sessionmaker[AsyncSession]
    effects: Effects = field(default_factory=Effects)


async def submit_order(unit: AsyncSession | StatementUnit, request: OrderRequest) -> Intake:
    """Store a `pending` order and register it for dispatch after the commit, in `unit`'s effects.

    Raises ProductNotFound (404; a product that does not exist, was deleted, or, for a store order,
    is another manager's), ProductDiscontinued (400), InsufficientStock (400), InvalidInput (400) when
    the total exceeds `core.types.MAX_ORDER_TOTAL`, Conflict (409) when the idempotency key was used with
    another body. A replay returns the first order (`replayed=True`) and dispatches nothing.
    `unit` is a `StatementUnit`, or a session: on PostgreSQL one in autocommit mode (the statement is
    then its own transaction), run through the batcher bound to it if any (`bind_batcher`)."""
    if isinstance(unit, StatementUnit):
        return await _submit_pg(unit.batcher, unit.reads, unit.effects, request)
    if not on_postgresql(unit):
        return await unit.run_sync(_submit_sync, request)
    batcher: IntakeBatcher | None = unit.sync_session.info.get(_INTAKE_BATCHER)
    return await _submit_pg(batcher or unit, unit, effects_of(unit.sync_session), request)


async def _submit_pg(
    on: IntakeBatcher | AsyncSession,
    reads: async_sessionmaker[AsyncSession] | AsyncSession,
    effects: Effects,
    request: OrderRequest,
) -> Intake:
    """The intake statement through `on` (the batcher, or a session in autocommit mode); a replay
    reads the first order with `reads` (a session factory, or the session)."""
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
        row, prior = await _run(await _driver_connection(on), params)
    else:
        row, prior = await on.run(params, request.lines)
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
    if total > MAX_ORDER_TOTAL:
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
