"""The order invariants, read straight from the private database (CONTRACT.md, "Processing
guarantees"): every order final, none reserved twice, stock never negative, the ledger equal to the
stock and to initial - confirmed + released, and every order a client was told about stored with
the lines it sent.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable

import psycopg

from core.orders.states import SETTLED_STATUSES, STOCK_HOLDING_STATUSES
from tests.faults.load import Tally

#: Settled (left `pending`) and holding stock, from the state machine (`core.orders.states`).
FINAL = {status.value for status in SETTLED_STATUSES}
HOLDS_STOCK = {status.value for status in STOCK_HOLDING_STATUSES}


def pending_count(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM orders WHERE status = 'pending'").fetchone()[0])


def max_order_id(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM orders").fetchone()[0])


def wait_drained(dsn: str, within: float) -> float | None:
    """Poll until no order is `pending`; the seconds it took, or None when `within` ran out. A
    database that does not answer yet is polled again."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                while time.monotonic() - started < within:
                    if pending_count(conn) == 0:
                        return time.monotonic() - started
                    time.sleep(0.1)
        except psycopg.OperationalError:
            time.sleep(0.2)
    return None


def statuses_since(conn: psycopg.Connection, after_id: int) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) FROM orders WHERE id > %s GROUP BY status ORDER BY status", (after_id,)
    ).fetchall()
    return {status: int(n) for status, n in rows}


def check(conn: psycopg.Connection, tallies: Iterable[Tally], keyed_users: Iterable[int]) -> list[str]:
    """Every violated invariant over the whole database, one message each (empty when all hold)."""
    problems: list[str] = []
    orders = {oid: status for oid, status in conn.execute("SELECT id, status FROM orders")}
    lines: dict[int, dict[int, int]] = defaultdict(dict)
    for oid, pid, qty in conn.execute("SELECT order_id, product_id, quantity FROM order_lines"):
        lines[oid][pid] = qty
    stock = dict(conn.execute("SELECT id, stock FROM products"))
    moves = conn.execute(
        "SELECT id, product_id, delta, stock_after, reason, order_id FROM stock_movements ORDER BY id"
    ).fetchall()

    # -- every order final, reserved at most once, with exactly its lines ----------------------------
    taken: dict[tuple[str, int], Counter] = defaultdict(Counter)  # (reason, order) -> product -> units
    count: Counter = Counter()
    for _, pid, delta, _, reason, oid in moves:
        if reason in ("reservation", "release"):
            if oid is None:
                problems.append(f"a {reason} movement of product {pid} names no order")
                continue
            taken[(reason, oid)][pid] += abs(delta)
            count[(reason, oid, pid)] += 1
        elif reason != "create":
            problems.append(f"unexpected movement reason {reason!r} (product {pid})")
    problems += [
        f"order {oid}: {n} {reason} movements for product {pid} (reserved twice)"
        for (reason, oid, pid), n in count.items()
        if n > 1
    ]
    for oid, status in sorted(orders.items()):
        wanted = Counter(lines.get(oid, {}))
        reserved = taken.get(("reservation", oid), Counter())
        released = taken.get(("release", oid), Counter())
        if status not in FINAL:
            problems.append(f"order {oid} is still {status}")
        elif status in HOLDS_STOCK and (reserved != wanted or released):
            problems.append(f"order {oid} ({status}): reserved {dict(reserved)}, released {dict(released)}")
        elif status == "cancelled" and not (
            (not reserved and not released) or (reserved == wanted and released == wanted)
        ):
            problems.append(f"order {oid} (cancelled): reserved {dict(reserved)}, released {dict(released)}")
        elif status in ("rejected", "failed") and (reserved or released):
            problems.append(f"order {oid} ({status}) moved stock: {dict(reserved)} / {dict(released)}")

    # -- per product: stock >= 0, equal to its ledger and to initial - confirmed + released ----------
    initial: Counter = Counter()
    ledger: Counter = Counter()
    running: Counter = Counter()
    for mid, pid, delta, stock_after, reason, _ in moves:
        if reason == "create":
            initial[pid] += delta
        ledger[pid] += delta
        running[pid] += delta
        if running[pid] != stock_after:
            problems.append(f"movement {mid} of product {pid}: stock_after {stock_after}, sum {running[pid]}")
        if stock_after < 0:
            problems.append(f"movement {mid} left product {pid} at {stock_after}")
    held: Counter = Counter()
    for oid, status in orders.items():
        if status in HOLDS_STOCK:
            held.update(lines.get(oid, {}))
    for pid, on_hand in sorted(stock.items()):
        expected = initial[pid] - held[pid]
        if on_hand < 0 or on_hand != ledger[pid] or on_hand != expected:
            problems.append(
                f"product {pid}: stock {on_hand}, ledger {ledger[pid]}, initial {initial[pid]} - "
                f"held by confirmed orders {held[pid]} = {expected}"
            )

    # -- what the clients were told -----------------------------------------------------------------
    for tally in tallies:
        for oid, sent in tally.accepted.items():
            if oid not in orders:
                problems.append(f"order {oid} was answered 202/201 but does not exist")
            elif tuple(sorted(lines.get(oid, {}).items())) != sent:
                problems.append(f"order {oid}: lines {dict(lines.get(oid, {}))}, the client sent {sent}")
        for oid, status in tally.settled.items():
            if orders.get(oid) != status:
                problems.append(f"order {oid} was answered 201 {status} but is {orders.get(oid)}")
        for oid in tally.cancelled:
            if orders.get(oid) != "cancelled":
                problems.append(f"order {oid}: its cancel was answered 200 but it is {orders.get(oid)}")
        problems += [
            f"Idempotency-Key {key}: first order {first}, a retry got order {other}"
            for key, first, other in tally.key_mismatches
        ]

    # -- a keyed client's retries never made a second order -----------------------------------------
    for user_id in keyed_users:
        made, keys, distinct = conn.execute(
            "SELECT (SELECT count(*) FROM orders WHERE user_id = %(u)s), count(*), count(DISTINCT order_id) "
            "FROM idempotency_keys WHERE scope = %(scope)s",
            {"u": user_id, "scope": f"user:{user_id}"},
        ).fetchone()
        if not made == keys == distinct:
            problems.append(f"user {user_id} (keyed orders only): {made} orders, {keys} keys, {distinct} ids")
    return problems
