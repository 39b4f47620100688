"""The batch's parameters on PostgreSQL: arrays travel as one text literal each (`core.db.pg_array`),
so what PostgreSQL parses back must be exactly the values sent, whatever characters they hold."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from core.db import pg_array, session_scope
from core.orders import reservation
from tests.workers.helpers import assert_reserved_once, make_product, order_rows, place

AWKWARD = ['a "quoted" name', "back\\slash", "comma, {brace}", "", "NULL", "null", "ünï ✓", " lead", "x\ny"]


def test_pg_array_round_trips_awkward_strings_nulls_and_integers():
    with session_scope() as s:
        texts = s.execute(text("SELECT CAST(:v AS text[])"), {"v": pg_array([*AWKWARD, None])}).scalar_one()
        ints = s.execute(text("SELECT CAST(:v AS integer[])"), {"v": pg_array([3, -1, 0])}).scalar_one()
        empty = s.execute(text("SELECT CAST(:v AS integer[])"), {"v": pg_array([])}).scalar_one()
    assert texts == [*AWKWARD, None]
    assert ints == [3, -1, 0]
    assert empty == []


@pytest.mark.parametrize("name", ['Tea "Earl" Grey', "C:\\path\\", "a,b}{c"])
def test_a_rejection_naming_an_awkward_product_is_stored_as_the_error_object(name: str):
    product = make_product(stock=1, name=name)
    lines = {place([(product, 1)]): [(product, 1)], place([(product, 1)]): [(product, 1)]}
    with session_scope() as s:
        outcomes = reservation.reserve_orders(s, list(lines))

    assert [o.status for o in outcomes] == ["confirmed", "rejected"]
    assert_reserved_once({product: 1}, lines)
    rejected = order_rows(list(lines))[outcomes[1].order_id]
    assert rejected.error == outcomes[1].error
    assert rejected.error is not None and name in rejected.error["message"]
