"""`core.orders.states`, the order state machine, against CONTRACT.md, "Orders" and "Processing
guarantees": every (current, target) pair is either a move, an idempotent no-op or a refusal (409).

The expected table below is written out from the contract by hand, not read from `TRANSITIONS`, so a
change to the table that the contract does not allow fails here. Pure functions: no database, no Redis.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from core.errors import InvalidStatusTransition
from core.orders import states
from core.orders.models import Order
from core.orders.states import OrderStatus

pytestmark = pytest.mark.pure


PENDING, CONFIRMED, COMPLETED, REJECTED, CANCELLED, FAILED = (
    "pending",
    "confirmed",
    "completed",
    "rejected",
    "cancelled",
    "failed",
)
ALL = (PENDING, CONFIRMED, COMPLETED, REJECTED, CANCELLED, FAILED)

#: CONTRACT.md, "Orders": pending -> confirmed -> completed; pending -> rejected; pending/confirmed ->
#: cancelled; pending -> failed (the worker gives up).
MOVES = {
    (PENDING, CONFIRMED),
    (PENDING, REJECTED),
    (PENDING, CANCELLED),
    (PENDING, FAILED),
    (CONFIRMED, COMPLETED),
    (CONFIRMED, CANCELLED),
}
#: `Pending` on a pending order and `Completed` on a completed one are no-ops (`PUT .../status`);
#: cancelling a cancelled order changes nothing (`POST .../cancel`).
NO_OPS = {(PENDING, PENDING), (COMPLETED, COMPLETED), (CANCELLED, CANCELLED)}


def test_the_table_names_every_status_and_only_statuses() -> None:
    assert set(states.TRANSITIONS) == set(OrderStatus) == set(ALL)
    assert all(targets <= set(OrderStatus) for targets in states.TRANSITIONS.values())


@pytest.mark.parametrize(("current", "target"), sorted(itertools.product(ALL, ALL)))
def test_every_pair_is_a_move_a_no_op_or_a_409(current: str, target: str) -> None:
    if (current, target) in MOVES:
        assert states.check_transition(7, current, target) is True
        assert states.can_move(current, target)
    elif (current, target) in NO_OPS:
        assert states.check_transition(7, current, target) is False
        assert not states.can_move(current, target)
    else:
        assert not states.can_move(current, target)
        with pytest.raises(InvalidStatusTransition) as raised:
            states.check_transition(7, current, target)
        error = raised.value
        assert (error.status, error.code) == (409, "INVALID_STATUS_TRANSITION")
        assert error.title == "Invalid status transition"
        assert error.message == f"Order 7 is {current} and cannot become {target}."
        assert error.details == {"order_id": 7, "current": current, "requested": target}


@pytest.mark.parametrize("member", [True, False])
def test_enum_members_and_stored_strings_are_checked_alike(member: bool) -> None:
    """The database hands back plain strings; the services pass `OrderStatus` members."""
    current = OrderStatus.REJECTED if member else "rejected"
    target = OrderStatus.COMPLETED if member else "completed"
    with pytest.raises(InvalidStatusTransition) as raised:
        states.check_transition(3, current, target)
    assert raised.value.message == "Order 3 is rejected and cannot become completed."
    assert raised.value.details == {"order_id": 3, "current": "rejected", "requested": "completed"}
    assert type(raised.value.details["current"]) is str


def test_an_unknown_current_status_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        states.can_move("shipped", COMPLETED)


def test_derived_sets_match_the_contract() -> None:
    assert states.INITIAL_STATUS == PENDING
    assert set(states.RESERVABLE_STATUSES) == {PENDING}
    assert set(states.RESERVATION_OUTCOMES) == {CONFIRMED, REJECTED}
    assert set(states.SETTLED_STATUSES) == {CONFIRMED, COMPLETED, REJECTED, CANCELLED, FAILED}
    assert set(states.STOCK_HOLDING_STATUSES) == {CONFIRMED, COMPLETED}
    assert dict(states.SETTABLE_STATUSES) == {"pending": PENDING, "completed": COMPLETED}
    assert set(states.IDEMPOTENT_STATUSES) == {status for status, _ in NO_OPS}


def _order(status: str) -> Order:
    then = datetime(2024, 1, 1, tzinfo=UTC)
    return Order(id=5, status=status, updated_at=then, created_at=then)


def test_transition_moves_the_order_and_stamps_it() -> None:
    order = _order(CONFIRMED)
    before = datetime.now(UTC)
    assert states.transition(order, OrderStatus.COMPLETED) is True
    assert order.status == COMPLETED and type(order.status) is str
    assert order.updated_at >= before

    at = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    order = _order(PENDING)
    assert states.transition(order, OrderStatus.FAILED, at=at) is True
    assert (order.status, order.updated_at) == (FAILED, at)


def test_an_idempotent_transition_changes_nothing() -> None:
    order = _order(CANCELLED)
    assert states.transition(order, OrderStatus.CANCELLED) is False
    assert (order.status, order.updated_at) == (CANCELLED, datetime(2024, 1, 1, tzinfo=UTC))


def test_a_refused_transition_leaves_the_order_as_it_was() -> None:
    order = _order(COMPLETED)
    with pytest.raises(InvalidStatusTransition, match="Order 5 is completed and cannot become cancelled"):
        states.transition(order, OrderStatus.CANCELLED)
    assert (order.status, order.updated_at) == (COMPLETED, datetime(2024, 1, 1, tzinfo=UTC))
