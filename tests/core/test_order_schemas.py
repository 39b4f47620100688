"""The order quantity limit (CONTRACT.md, "Orders"): at most `MAX_QUANTITY` units of one product per
order, its lines for that product summed; one rule (`core.orders.schemas.over_quantity_limit`), worded
by each surface (the core API's `OrderCreate`, the store's `ProcessOrderRequest`)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.orders.models import IDEMPOTENCY_SCOPE_MAX_LENGTH, idempotency_scope
from core.orders.schemas import OrderCreate, merge_lines, over_quantity_limit
from core.store.schemas import ProcessOrderRequest
from core.types import MANAGER_ID_MAX_LENGTH, MAX_QUANTITY

pytestmark = pytest.mark.pure

HALF = MAX_QUANTITY // 2 + 1  # two lines of this for one product exceed the limit


def test_the_first_product_over_the_limit_once_its_lines_are_summed():
    assert over_quantity_limit(merge_lines([(1, HALF), (2, 1), (1, HALF)])) == (1, 2 * HALF)
    assert over_quantity_limit(merge_lines([(1, MAX_QUANTITY), (2, MAX_QUANTITY)])) is None
    lines = [(2, 1), (3, HALF), (3, HALF), (4, MAX_QUANTITY + 1)]
    assert over_quantity_limit(merge_lines(lines)) == (3, 2 * HALF)


def test_the_core_api_words_the_limit_with_the_product_id():
    lines = [{"product_id": 7, "quantity": HALF}, {"product_id": 7, "quantity": HALF}]
    with pytest.raises(ValidationError) as caught:
        OrderCreate.model_validate({"products": lines})
    assert (
        f"Order quantity of product 7 is {2 * HALF} in all; "
        f"at most {MAX_QUANTITY} units of one product can be ordered at once."
    ) in str(caught.value)
    assert OrderCreate.model_validate({"products": lines[:1]}).merged_lines() == [(7, HALF)]


def test_the_store_api_words_the_limit_with_the_public_id():
    body = {
        "manager_id": "mgr_123",
        "customer": {"id": "cust_42", "email": "jane@example.com"},
        "products": [{"product_id": "prod_007", "quantity": HALF}] * 2,
    }
    with pytest.raises(ValidationError) as caught:
        ProcessOrderRequest.model_validate(body)
    assert (
        f"at most {MAX_QUANTITY} units of one product can be ordered at once (product prod_007 has "
        f"{2 * HALF} in all)"
    ) in str(caught.value)


def test_an_idempotency_key_is_scoped_by_the_stores_manager_else_by_the_caller():
    assert idempotency_scope(7, None) == "user:7"
    assert idempotency_scope(7, "mgr_1") == "store:mgr_1"  # a store order: the manager's key space
    assert idempotency_scope(None, "mgr_1") == "store:mgr_1"
    assert len(idempotency_scope(None, "m" * MANAGER_ID_MAX_LENGTH)) == IDEMPOTENCY_SCOPE_MAX_LENGTH
    with pytest.raises(ValueError, match=r"a manager .* or a user"):
        idempotency_scope(None, None)
