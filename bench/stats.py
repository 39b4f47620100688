"""Pure helpers of the benchmark: percentiles, rates, the open-model schedule, invariant checks.

Nothing here does I/O, so it is unit-tested directly (tests/bench/test_bench_stats.py).
Times are seconds (floats) unless a name ends in `_ms`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from core.orders.states import STOCK_HOLDING_STATUSES


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0 <= q <= 100) by linear interpolation between closest ranks.

    The same definition as numpy's default (`method="linear"`). Returns None for no values.
    Raises ValueError when q is out of range.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    fraction = position - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency figures in milliseconds; None when there was nothing to measure."""

    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def summarize_latencies(seconds: Sequence[float]) -> LatencySummary:
    """p50/p95/p99/max/mean of latencies given in seconds, reported in milliseconds (3 decimals)."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    if not seconds:
        return LatencySummary(0, None, None, None, None, None)
    return LatencySummary(
        count=len(seconds),
        p50_ms=ms(percentile(seconds, 50)),
        p95_ms=ms(percentile(seconds, 95)),
        p99_ms=ms(percentile(seconds, 99)),
        max_ms=ms(max(seconds)),
        mean_ms=ms(math.fsum(seconds) / len(seconds)),
    )


def rate_per_second(count: int, seconds: float | None) -> float | None:
    """count / seconds, rounded to 2 decimals; None when the interval is missing or not positive."""
    if seconds is None or seconds <= 0:
        return None
    return round(count / seconds, 2)


def arrival_schedule(rate: float, duration: float) -> list[float]:
    """Intended start offsets (seconds after t0) of an open-model run: i / rate for every order
    whose start falls inside [0, duration).

    Raises ValueError for a non-positive rate or duration.
    """
    if rate <= 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a positive number, got {rate}")
    if duration <= 0 or not math.isfinite(duration):
        raise ValueError(f"duration must be a positive number, got {duration}")
    count = math.ceil(rate * duration - 1e-9)
    return [i / rate for i in range(count)]


def parse_timestamp(value: object) -> float | None:
    """An ISO 8601 timestamp as POSIX seconds; a naive timestamp is taken as UTC.

    Returns None for anything that does not parse.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def best_final_time(observed: float, server: float | None, earliest: float) -> float:
    """When an order reached its final state, on the client's wall clock.

    `observed` is when the client saw the final state (a poll can come late); `server` is the order's
    `updated_at` (the moment the worker moved it, same host clock on loopback). The server time is used
    when it is plausible, i.e. within [earliest - 1 s, observed + 0.5 s]; otherwise the observation.
    """
    if server is not None and earliest - 1.0 <= server <= observed + 0.5:
        return min(server, observed)
    return observed


@dataclass(slots=True)
class ProductState:
    """What the benchmark knows about one product at the end of a run."""

    product_id: int
    initial_stock: int
    confirmed_quantity: int
    current_stock: int
    ledger_sum: int | None
    ledger_order_sum: int | None = None
    """Sum of the deltas of movements that carry an order id (reservations and returns)."""
    pending_orders: int = 0


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    passed: bool
    detail: str
    failures: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "failures": self.failures[:20],
            "failure_count": len(self.failures),
        }


def check_invariants(products: Iterable[ProductState]) -> list[CheckResult]:
    """The stock invariants after a run, one result per check:

    * `all_orders_final`: no order of the run is still pending;
    * `stock_accounting`: initial stock - confirmed quantities == current stock;
    * `stock_non_negative`: current stock >= 0 (every product);
    * `ledger_matches_stock`: the sum of the product's stock movement deltas == current stock;
    * `ledger_matches_orders`: the movements that carry an order id sum to -(confirmed quantities).

    A product with a pending order can still move while it is read, so the accounting and ledger
    checks skip it (the first check fails instead) and say how many they skipped.
    """
    states = list(products)
    pending: list[dict[str, object]] = []
    accounting: list[dict[str, object]] = []
    negative: list[dict[str, object]] = []
    ledger: list[dict[str, object]] = []
    ledger_orders: list[dict[str, object]] = []
    skipped = 0
    for p in states:
        if p.current_stock < 0:
            negative.append({"product_id": p.product_id, "stock": p.current_stock})
        if p.pending_orders:
            pending.append({"product_id": p.product_id, "pending_orders": p.pending_orders})
            skipped += 1
            continue
        expected = p.initial_stock - p.confirmed_quantity
        if expected != p.current_stock:
            accounting.append({"product_id": p.product_id, "expected": expected, "actual": p.current_stock})
        if p.ledger_sum != p.current_stock:
            ledger.append({"product_id": p.product_id, "ledger_sum": p.ledger_sum, "stock": p.current_stock})
        if p.ledger_order_sum != -p.confirmed_quantity:
            ledger_orders.append(
                {
                    "product_id": p.product_id,
                    "ledger_order_sum": p.ledger_order_sum,
                    "expected": -p.confirmed_quantity,
                }
            )
    n = len(states)
    checked = f"{n - skipped} products" + (f", {skipped} skipped: pending orders" if skipped else "")
    return [
        _result("all_orders_final", pending, f"no order left pending ({n} products)"),
        _result("stock_accounting", accounting, f"initial - confirmed == stock ({checked})"),
        _result("stock_non_negative", negative, f"stock >= 0 ({n} products)"),
        _result("ledger_matches_stock", ledger, f"sum(movement deltas) == stock ({checked})"),
        _result(
            "ledger_matches_orders",
            ledger_orders,
            f"order movements == -confirmed quantities ({checked})",
        ),
    ]


def _result(name: str, failures: list[dict[str, object]], ok_detail: str) -> CheckResult:
    if failures:
        return CheckResult(name, False, f"{len(failures)} product(s) fail; {ok_detail}", failures)
    return CheckResult(name, True, ok_detail)


def confirmed_quantities(
    lines: Iterable[tuple[int, int, str]],
) -> dict[int, int]:
    """Per product, the quantities of orders whose final status holds stock.

    `lines` are (product_id, quantity, order status) triples, one per order line.
    """
    totals: dict[int, int] = {}
    for product_id, quantity, status in lines:
        if status in STOCK_HOLDING_STATUSES:
            totals[product_id] = totals.get(product_id, 0) + quantity
    return totals


def count_by(values: Iterable[str]) -> dict[str, int]:
    """How many times each value occurs, sorted by value."""
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def merge_counts(*counts: Mapping[str, int]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for c in counts:
        for key, value in c.items():
            merged[key] = merged.get(key, 0) + value
    return dict(sorted(merged.items()))
