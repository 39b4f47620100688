"""The order-event wire format (`core.events`): what a waiting request can read from a channel
message, and what it ignores (docs/architecture.md, "Order events")."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from core.events import OrderOutcome, decode, encode

pytestmark = pytest.mark.pure

AT = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)


def test_outcomes_survive_the_wire():
    outcomes = [
        OrderOutcome(7, "confirmed", None, AT),
        OrderOutcome(8, "rejected", {"code": "INSUFFICIENT_STOCK", "message": "Insufficient stock"}, AT),
    ]
    assert decode(encode(outcomes)) == outcomes
    assert decode(encode(outcomes).encode()) == outcomes  # as redis-py hands it over: bytes


@pytest.mark.parametrize("payload", ["not json", "{}", '"7"', "7", "null"])
def test_a_message_that_is_not_a_list_of_outcomes_gives_none(payload):
    assert decode(payload) == []


def test_a_malformed_item_is_skipped_and_its_neighbours_kept():
    good = OrderOutcome(9, "confirmed", None, AT)
    items = [
        [1, "confirmed", None],  # too short
        ["1", "confirmed", None, AT.isoformat()],  # the id as text
        [2, 3, None, AT.isoformat()],  # the status not a string
        [3, "confirmed", None, "yesterday"],  # not a time
        [4, "confirmed", None, None],  # no time
        5,  # a bare order id (an older publisher)
        good.to_wire(),
    ]
    assert decode(json.dumps(items)) == [good]


def test_from_wire_names_the_malformed_item():
    with pytest.raises(ValueError, match="malformed order event"):
        OrderOutcome.from_wire(["1", "confirmed", None, AT.isoformat()])
