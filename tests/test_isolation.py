"""The suite's per-test isolation (tests/conftest.py): a `rolled_back` test's writes, committed or not,
are gone when the next test starts, though its tables are not emptied in between, unless it committed
beside its `db` session; a test that is not `rolled_back` starts from emptied tables. The tests run
in file order, in one process."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db import session_scope
from core.products import service as products
from core.products.models import Product
from core.products.schemas import ProductCreate
from core.users.models import User


def _counts(db: Session) -> tuple[int, int]:
    """(products, users) as the session sees them."""
    return (
        db.execute(select(func.count()).select_from(Product)).scalar_one(),
        db.execute(select(func.count()).select_from(User)).scalar_one(),
    )


@pytest.mark.rolled_back
def test_a_rolled_back_test_commits_inside_its_transaction(db: Session) -> None:
    assert _counts(db) == (0, 1)  # the seeded admin only
    products.create_product(db, ProductCreate(name="Kept until the end", price="1.00", stock=3))
    db.commit()  # releases a savepoint; the outer transaction stays open
    assert _counts(db) == (1, 1)


@pytest.mark.rolled_back
def test_the_next_rolled_back_test_sees_none_of_it(db: Session) -> None:
    assert _counts(db) == (0, 1)
    products.create_product(db, ProductCreate(name="Rolled back too", price="1.00", stock=3))


@pytest.mark.rolled_back
def test_a_rolled_back_test_that_commits_beside_its_session_dirties_the_tables(db: Session) -> None:
    assert _counts(db) == (0, 1)
    with session_scope() as other:  # a unit of work of its own: a real commit
        products.create_product(other, ProductCreate(name="Committed for real", price="1.00", stock=3))


@pytest.mark.rolled_back
def test_so_the_next_rolled_back_test_starts_from_emptied_tables(db: Session) -> None:
    assert _counts(db) == (0, 1)


def test_a_committing_test_writes_for_real(db: Session) -> None:
    assert _counts(db) == (0, 1)
    products.create_product(db, ProductCreate(name="Committed for real", price="1.00", stock=3))
    # the `db` fixture commits this when the test ends


@pytest.mark.rolled_back
def test_a_rolled_back_test_after_a_committing_one_starts_from_emptied_tables(db: Session) -> None:
    assert _counts(db) == (0, 1)
