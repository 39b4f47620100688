"""Order use cases: intake checks (the embedded default's intake path), reads, status moves and
cancellation; the worker's reservation is `core.orders.reservation`.

Rules come from CONTRACT.md, "Orders" and "Processing guarantees":

* Intake checks the request against current stock as a courtesy; the worker's reservation is the
  authority. The order is stored `pending` and dispatched after the commit (`core.orders.intake`
  registers the dispatch as an after-commit effect; on PostgreSQL it stores the order in one
  statement and `place_order` here serves the SQLite default).
* `reserve_order` is the reservation of one order: `reservation.reserve_orders` with one id.
* Every status move goes through `core.orders.states` (the transition table and `transition`).
* Cancelling a `confirmed` order releases its stock (`core.inventory.release`: in product-id order,
  with ledger rows). A status move or a cancellation is announced to the waiting requests after the
  commit (`core.events`).

Functions take a synchronous `Session` and never commit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from sqlalchemy.orm import Session

from core import inventory
from core.audit import service as audit
from core.audit.models import AuditAction, AuditEntity
from core.db import utcnow
from core.errors import (
    IdempotencyKeyReused,
    InvalidInput,
    InvalidStatus,
    OrderNotFound,
    OrderTotalTooLarge,
    ProcessingFailed,
    UnknownOrderStatus,
)
from core.events import OrderOutcome
from core.orders import repository as repo
from core.orders import reservation
from core.orders.models import Order, OrderLine
from core.orders.states import (
    INITIAL_STATUS,
    SETTABLE_STATUSES,
    STOCK_HOLDING_STATUSES,
    OrderStatus,
    can_move,
    transition,
)
from core.products import repository as products_repo
from core.types import MAX_ORDER_TOTAL
from core.uow import effects_of


@dataclass(frozen=True)
class IdempotencyRequest:
    """An `Idempotency-Key` header value within a client scope (`core.orders.models.idempotency_scope`)."""

    scope: str
    key: str


@dataclass(frozen=True)
class PlacedOrder:
    order: Order
    replayed: bool


def request_fingerprint(lines: list[tuple[int, int]], extra: dict[str, object] | None = None) -> str:
    """SHA-256 of the canonical order request (lines sorted by product id)."""
    payload = {"lines": sorted(lines), **(extra or {})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def place_order(
    session: Session,
    lines: list[tuple[int, int]],
    *,
    user_id: int | None = None,
    customer: dict[str, object] | None = None,
    manager_id: str | None = None,
    idempotency: IdempotencyRequest | None = None,
) -> PlacedOrder:
    """Check and store a `pending` order with unit prices snapshotted.

    `lines` are (product_id, quantity) pairs, product ids unique. With `manager_id` (a store order),
    only that manager's products can be ordered: another's is reported missing. Raises
    ProductNotFound (404),
    ProductDiscontinued (400), InsufficientStock (400), InvalidInput (400) when the total exceeds
    MAX_ORDER_TOTAL, or Conflict (409) when the idempotency key
    was used with another body. A replayed key returns the first order with `replayed=True`.
    """
    if idempotency is not None:
        fingerprint = request_fingerprint(lines, {"manager_id": manager_id, "customer": customer})
        if not repo.claim_idempotency_key(session, idempotency.scope, idempotency.key, fingerprint):
            return _replay(session, idempotency, fingerprint)

    products = products_repo.snapshot_for_order(session, [pid for pid, _ in lines])
    refusal = inventory.unorderable(lines, products, manager_id)
    if refusal is not None:
        raise refusal

    now = utcnow()
    order_lines = [
        OrderLine(
            product_id=pid,
            position=position,
            name=products[pid].name,
            quantity=quantity,
            unit_price=Decimal(products[pid].price),
        )
        for position, (pid, quantity) in enumerate(lines)
    ]
    total = sum((line.unit_price * line.quantity for line in order_lines), Decimal("0.00"))
    if total > MAX_ORDER_TOTAL:
        raise total_too_large(total)
    order = Order(
        status=INITIAL_STATUS.value,
        user_id=user_id,
        manager_id=manager_id,
        customer=customer,
        total_price=total.quantize(Decimal("0.01")),
        error=None,
        attempts=0,
        created_at=now,
        updated_at=now,
        enqueued_at=now,
        lines=order_lines,
    )
    repo.insert_order(session, order)
    if idempotency is not None:
        repo.bind_idempotency_key(session, idempotency.scope, idempotency.key, order.id)
    return PlacedOrder(order=order, replayed=False)


def total_too_large(total: Decimal) -> InvalidInput:
    """The 400 for an order whose total exceeds MAX_ORDER_TOTAL (`orders.total_price NUMERIC(14, 2)`)."""
    return OrderTotalTooLarge(total, MAX_ORDER_TOTAL)


def _replay(session: Session, idempotency: IdempotencyRequest, fingerprint: str) -> PlacedOrder:
    record = repo.get_idempotency_key(session, idempotency.scope, idempotency.key)
    if record is None or record.request_hash != fingerprint or record.order_id is None:
        raise IdempotencyKeyReused(idempotency.key)
    return PlacedOrder(order=get_order(session, record.order_id), replayed=True)


def get_order(session: Session, order_id: int, *, user_id: int | None = None) -> Order:
    """The order with its lines. With `user_id`, another user's order is reported as missing.
    Raises OrderNotFound."""
    order = repo.get(session, order_id)
    if order is None or (user_id is not None and order.user_id != user_id):
        raise OrderNotFound(order_id)
    return order


def list_orders(
    session: Session,
    *,
    status: str | None = None,
    user_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Order], int]:
    """Orders newest first. `status` is any case; an unknown one raises InvalidInput."""
    return repo.list_page(session, status=status, user_id=user_id, limit=limit, offset=offset)


def reserve_order(session: Session, order_id: int) -> str | None:
    """The worker's step for one order: `core.orders.reservation.reserve_orders` with one id (the
    only reservation code path). Returns the order's status afterwards, or None when the order does
    not exist. An order that has left `pending` is left untouched, and its current outcome is still
    announced after the commit (the per-order task always tells the waiters where the order is)."""
    outcomes = reservation.reserve_orders(session, [order_id])
    if outcomes:
        return outcomes[0].status
    current = repo.current_outcome(session, order_id)
    if current is None:
        return None
    status, error, updated_at = current
    effects_of(session).events.append(OrderOutcome(order_id, status, error, updated_at))
    return status


def mark_failed(session: Session, order_id: int, reason: str) -> str | None:
    """Set a still-pending order `failed` after its retries ran out (no stock is held by a pending
    order) and register its outcome event. An order that can no longer become `failed`
    (`states.can_move`) is left as it is, without an error. Returns the status afterwards, or None
    when the order does not exist."""
    order = _lock(session, order_id)
    if order is None:
        return None
    if can_move(order.status, OrderStatus.FAILED):
        now = utcnow()
        transition(order, OrderStatus.FAILED, at=now)
        order.error = ProcessingFailed(reason).to_dict()
        order.processed_at = now
        session.flush()
        _announce(session, order)
    return order.status


def parse_status(value: object) -> OrderStatus:
    """A status filter value, any case. Raises InvalidInput for an unknown one."""
    try:
        return OrderStatus(str(value).strip().lower())
    except ValueError:
        allowed = ", ".join(s.value for s in OrderStatus)
        raise UnknownOrderStatus(value, allowed) from None


def set_status(session: Session, order_id: int, value: object, *, actor: str | None = None) -> Order:
    """`PUT /orders/{id}/status`: `Completed` moves a confirmed order to completed; `Pending` on a
    pending order (and `Completed` on a completed one) changes nothing; any other move raises
    InvalidStatusTransition (409) (`states.transition`). A value other than Pending/Completed
    (`states.SETTABLE_STATUSES`) raises InvalidStatus (400). Raises OrderNotFound (404).
    The request is recorded in the audit log as `actor`; a move is announced to waiting requests.
    """
    target = SETTABLE_STATUSES.get(str(value).strip().lower()) if isinstance(value, str) else None
    if target is None:
        raise InvalidStatus(value)
    order = _lock(session, order_id)
    if order is None:
        raise OrderNotFound(order_id)
    if transition(order, target):
        session.flush()
        _announce(session, order)
    _audit(session, actor, AuditAction.ORDER_STATUS, order)
    return get_order(session, order_id)


def cancel_order(
    session: Session, order_id: int, *, user_id: int | None = None, actor: str | None = None
) -> Order:
    """Cancel a pending or confirmed order; a confirmed order's stock goes back (ledger reason
    `release`). Cancelling a cancelled order changes nothing. Raises OrderNotFound, or
    InvalidStatusTransition (409) for a completed, rejected or failed order (`states.transition`).
    Recorded in the audit log as `actor`; the cancellation is announced to waiting requests."""
    order = _lock(session, order_id)
    if order is None or (user_id is not None and order.user_id != user_id):
        raise OrderNotFound(order_id)
    holds_stock = order.status in STOCK_HOLDING_STATUSES
    if not transition(order, OrderStatus.CANCELLED):
        _audit(session, actor, AuditAction.ORDER_CANCEL, order)
        return get_order(session, order_id)
    if holds_stock:
        lines = repo.lines_by_product(session, order_id)
        inventory.release(session, order_id, [(line.product_id, line.quantity) for line in lines], actor)
    session.flush()
    _announce(session, order)
    _audit(session, actor, AuditAction.ORDER_CANCEL, order)
    return get_order(session, order_id)


def _lock(session: Session, order_id: int) -> Order | None:
    """The order, locked (`repo.lock`, the one way to lock orders), or None when it does not exist."""
    found = repo.lock(session, [order_id])
    return found[0] if found else None


def _announce(session: Session, order: Order) -> None:
    """Publish the order's new status to the waiting requests once the transaction commits."""
    effects_of(session).events.append(OrderOutcome(order.id, order.status, order.error, order.updated_at))


def _audit(session: Session, actor: str | None, action: str, order: Order) -> None:
    audit.record(
        session,
        actor=actor,
        action=action,
        entity=AuditEntity.ORDER,
        entity_id=order.id,
        details={"status": order.status},
    )


def stale_pending_orders(session: Session, older_than_seconds: float, limit: int = 500) -> list[int]:
    """The outbox sweep: ids of orders still `pending` whose last send to the broker is older than
    `older_than_seconds`. Their `enqueued_at` is set to now, so the next sweep waits again."""
    now = utcnow()
    ids = repo.stale_pending_ids(session, now - timedelta(seconds=older_than_seconds), limit)
    repo.mark_enqueued(session, ids, now)
    return ids


def counts_by_status(session: Session) -> dict[str, int]:
    return repo.count_by_status(session)
