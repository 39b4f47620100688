"""The order state machine: every status, every move between them, and the one check of a move.

The rules are CONTRACT.md's, section "Orders" (the statuses and `PUT /orders/{id}/status`) and section
"Processing guarantees" (the status guard: only a `pending` order is decided by the worker):

    pending   -> confirmed | rejected | cancelled | failed
    confirmed -> completed | cancelled
    rejected, cancelled, completed, failed: final (no move out)

A request for the status an order already has is an idempotent no-op for `pending` (`Pending` on a
pending order), `completed` (`Completed` on a completed order) and `cancelled` (cancelling a cancelled
order); any other move that is not in `TRANSITIONS` is refused with `InvalidStatusTransition` (409).

Who makes each move: the worker's reservation (`core.orders.reservation`) pending -> confirmed or
rejected; `core.orders.service.mark_failed` pending -> failed; `set_status` confirmed -> completed;
`cancel_order` pending or confirmed -> cancelled. This module is pure (no database, no I/O), so the
benchmark can import it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

from core.errors import InvalidStatusTransition

if TYPE_CHECKING:
    from core.orders.models import Order


class OrderStatus(StrEnum):
    """Order states (lowercase, as stored and as answered). The moves are `TRANSITIONS`."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    COMPLETED = "completed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    FAILED = "failed"


_S = OrderStatus

#: For each status, the statuses it may move to (CONTRACT.md, "Orders"). A final status maps to none.
TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = MappingProxyType(
    {
        _S.PENDING: frozenset({_S.CONFIRMED, _S.REJECTED, _S.CANCELLED, _S.FAILED}),
        _S.CONFIRMED: frozenset({_S.COMPLETED, _S.CANCELLED}),
        _S.COMPLETED: frozenset(),
        _S.REJECTED: frozenset(),
        _S.CANCELLED: frozenset(),
        _S.FAILED: frozenset(),
    }
)

#: Statuses a request may ask for again and that then change nothing (CONTRACT.md, "Orders": `Pending`
#: on a pending order; `Completed` on a completed one; cancelling a cancelled order).
IDEMPOTENT_STATUSES = frozenset({_S.PENDING, _S.COMPLETED, _S.CANCELLED})

#: The status every order starts in (stored, queued).
INITIAL_STATUS = _S.PENDING

#: What the worker's reservation decides: stock reserved and deducted, or a business rule failed.
RESERVATION_OUTCOMES = frozenset({_S.CONFIRMED, _S.REJECTED})

#: Statuses the reservation decides from (the status guard): those that may move to either outcome.
RESERVABLE_STATUSES = frozenset(
    status for status, targets in TRANSITIONS.items() if targets >= RESERVATION_OUTCOMES
)

#: Statuses in which the worker has decided the order (it is no longer waiting for a reservation):
#: what a client polls for and what `?wait=N` waits for.
SETTLED_STATUSES = frozenset(OrderStatus) - RESERVABLE_STATUSES

#: Statuses whose order keeps its reserved stock deducted: `confirmed` and where it goes without a
#: cancellation (a cancellation puts the stock back).
STOCK_HOLDING_STATUSES = frozenset({_S.CONFIRMED}) | (TRANSITIONS[_S.CONFIRMED] - {_S.CANCELLED})

#: Values `PUT /orders/{id}/status` accepts (any case, surrounding spaces ignored; CONTRACT.md,
#: "Orders"); anything else is 400 `Invalid status`.
SETTABLE_STATUSES: Mapping[str, OrderStatus] = MappingProxyType(
    {"pending": _S.PENDING, "completed": _S.COMPLETED}
)


def can_move(current: str, target: str) -> bool:
    """Whether `current -> target` is a move of `TRANSITIONS` (a change of status; an idempotent
    no-op is not one). Both are status values (an `OrderStatus` or its lowercase string). Raises
    ValueError for an unknown `current`."""
    return target in TRANSITIONS[OrderStatus(current)]


def check_transition(order_id: int, current: str, target: str) -> bool:
    """Check the request to move order `order_id` from `current` to `target`. Returns True for a move
    of `TRANSITIONS`, False for an idempotent no-op (`target == current` in `IDEMPOTENT_STATUSES`).
    Raises InvalidStatusTransition (409, `{order_id, current, requested}`) for anything else."""
    if can_move(current, target):
        return True
    if current == target and current in IDEMPOTENT_STATUSES:
        return False
    raise InvalidStatusTransition(order_id, str(current), str(target))


def transition(order: Order, target: OrderStatus, *, at: datetime | None = None) -> bool:
    """Move `order` (loaded and locked by the caller) to `target`: sets `status` and `updated_at` (`at`,
    default now, UTC) and returns True; an idempotent no-op changes nothing and returns False. Raises
    InvalidStatusTransition as `check_transition` does. The caller flushes and announces the move."""
    if not check_transition(order.id, order.status, target):
        return False
    order.status = target.value
    order.updated_at = at or datetime.now(UTC)
    return True
