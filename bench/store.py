"""The store API benchmark (`python -m bench store`): listing latency with the cache hit and missed,
and `POST /api/orders/process` end to end under a closed loop, then a stock check.

The store API is the contract of CONTRACT.md, "Store API": products and orders belong to a
`manager_id`, the listing `GET /api/inventory/products` is cached in Redis per (manager, status) and
says so in `X-Cache: HIT|MISS`, and `POST /api/orders/process` answers once the worker has processed
the order (200), rejected it (400/404), or after `ORDER_WAIT_SECONDS` with 202 and a `Location` to poll.

Every request of the store API counts against a per-manager rate limit (100/hour by default), far
below what a benchmark sends: before any write, the run reads each manager's `RateLimit-Remaining`
and stops with a message when it is lower than the requests it plans for that manager (start the API
with `STORE_RATE_LIMIT=1000000/hour`, or spread the orders over more managers with `--managers`).

Pure helpers (figures, parsing, the rate-limit plan, the invariant checks) come first and are
unit-tested in tests/bench/test_bench_store.py; the phases after them do the I/O. Times are seconds
(floats) unless a name ends in `_ms`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.client import TRANSPORT_ERRORS, BenchError, Reply, Target, fetch
from bench.stats import CheckResult, count_by, percentile, rate_per_second

PRODUCTS_PATH = "api/inventory/products"
PROCESS_PATH = "api/orders/process"
CACHE_HEADER = "X-Cache"
SETUP_BATCH = 100
"""Products per `POST /api/inventory/products` during the setup."""

RATE_LIMIT_MARGIN = 1.05
"""Requests planned per manager are multiplied by this (plus `RATE_LIMIT_SLACK`) before they are
compared with `RateLimit-Remaining`: polls of a 202 and retries are not in the plan."""
RATE_LIMIT_SLACK = 10
RAISE_LIMIT_HINT = (
    "start the API processes with STORE_RATE_LIMIT=1000000/hour (the default is 100/hour per "
    "manager_id), or spread the orders over more managers with --managers"
)

LONG_POLL_SECONDS = 10.0
"""A 202's `Location` is polled with `?wait=10`: the API answers as soon as the order leaves pending."""
POLL_FIRST_SECONDS = 0.05
POLL_MAX_SECONDS = 0.5
"""A poll that came back early and still pending (an error) is repeated after 50 ms, doubling up to
500 ms."""

STOCK_HOLDING_OUTCOMES = frozenset({"processed"})
"""Final outcomes of `/api/orders/process` whose order keeps its stock deducted."""


# --- pure helpers ---------------------------------------------------------------------------------


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50/p90/p95/p99, max and mean of latencies given in seconds, in milliseconds
    (3 decimals); the figures are None when there is nothing to summarize."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    if not seconds:
        return {
            "count": 0,
            "p50_ms": None,
            "p90_ms": None,
            "p95_ms": None,
            "p99_ms": None,
            "max_ms": None,
            "mean_ms": None,
        }
    return {
        "count": len(seconds),
        "p50_ms": ms(percentile(seconds, 50)),
        "p90_ms": ms(percentile(seconds, 90)),
        "p95_ms": ms(percentile(seconds, 95)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds)),
        "mean_ms": ms(math.fsum(seconds) / len(seconds)),
    }


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` items shared by `parts` clients: sizes that differ by at most one, largest first."""
    if parts < 1 or total < 0:
        raise ValueError(f"cannot split {total} into {parts} parts")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def first_int(value: str | None) -> int | None:
    """The leading integer of a header value: `100`, `100, 100;w=3600` (the IETF draft's form) or
    `100;w=3600` -> 100; None when there is none."""
    if value is None:
        return None
    head = value.strip().split(",", 1)[0].split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None


@dataclass(frozen=True, slots=True)
class RateBudget:
    """The `RateLimit-*` headers of one answer (CONTRACT.md, "Store API")."""

    limit: int | None
    remaining: int | None
    reset: int | None


def rate_budget(headers: Mapping[str, str]) -> RateBudget | None:
    """The rate-limit headers of a response; None when it carries neither a limit nor a remainder."""
    limit = first_int(headers.get("RateLimit-Limit"))
    remaining = first_int(headers.get("RateLimit-Remaining"))
    if limit is None and remaining is None:
        return None
    return RateBudget(limit, remaining, first_int(headers.get("RateLimit-Reset")))


def planned_requests(
    managers: int,
    products: int,
    gets: int,
    listing_concurrency: Sequence[int],
    orders: int,
    order_managers: int,
) -> list[int]:
    """Store API requests the run sends for each of `managers` managers, once its first listing
    read has been answered (that read is not counted: its `RateLimit-Remaining` is what this is
    compared with).

    Manager i: the setup batches; for each listing concurrency K > i, client i's share of `gets`
    hits (plus a warm-up read) and of `gets` misses (a write and a read each, plus a warm-up read),
    unless `gets` is 0 (no listing phase);
    for i < `order_managers`, its share of `orders` plus the listing reads before and after the
    orders. Polls of a 202 are not known in advance (see RATE_LIMIT_MARGIN).
    """
    setup = math.ceil(products / SETUP_BATCH)
    plan = [setup] * managers
    for k in listing_concurrency if gets else ():
        for i, share in enumerate(split_evenly(gets, k)):
            plan[i] += (1 + share) + (1 + 2 * share)
    if orders:
        for i, share in enumerate(split_evenly(orders, order_managers)):
            plan[i] += share + 2
    return plan


def rate_limit_problem(manager_id: str, budget: RateBudget | None, planned: int) -> str | None:
    """Why the run cannot send `planned` more requests for `manager_id` within the rate limit, or
    None when it can (or when the API sent no rate-limit headers, which the caller notes)."""
    if budget is None:
        return None
    needed = math.ceil(planned * RATE_LIMIT_MARGIN) + RATE_LIMIT_SLACK
    available = budget.remaining if budget.remaining is not None else budget.limit
    if available is None or available >= needed:
        return None
    return (
        f"the store API's rate limit allows {available:,} more requests for {manager_id} "
        f"(RateLimit-Limit {budget.limit if budget.limit is not None else '?'}), and this run needs "
        f"about {needed:,}: {RAISE_LIMIT_HINT}"
    )


def location_path(location: str | None) -> str | None:
    """A `Location` header as a path relative to the API's base URL (no leading slash), keeping the
    query; None when there is none."""
    if not location or not location.strip():
        return None
    parts = urlsplit(location.strip())
    path = parts.path.lstrip("/")
    if not path:
        return None
    return f"{path}?{parts.query}" if parts.query else path


def error_code(payload: Any) -> str | None:
    """The `code` of the store API's nested error envelope (`{"error": {"code": ...}}`), or of the
    core API's flat one."""
    if not isinstance(payload, dict):
        return None
    inner = payload.get("error")
    if isinstance(inner, dict) and isinstance(inner.get("code"), str):
        return inner["code"]
    code = payload.get("code")
    return code if isinstance(code, str) else None


def listing_quantities(payload: Any) -> dict[str, int] | None:
    """`{"products": [{"id", "quantity", ...}]}` as {product id: quantity}; None when the body has
    another shape."""
    if not isinstance(payload, dict) or not isinstance(payload.get("products"), list):
        return None
    quantities: dict[str, int] = {}
    for item in payload["products"]:
        if not isinstance(item, dict):
            return None
        product_id, quantity = item.get("id"), item.get("quantity")
        if (
            not isinstance(product_id, str | int)
            or isinstance(quantity, bool)
            or not isinstance(quantity, int)
        ):
            return None
        quantities[str(product_id)] = quantity
    return quantities


def money(value: Any) -> float | None:
    """A price or amount (a JSON number or a decimal string) as a float; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def product_price(index: int) -> float:
    """The price of the index-th product of a manager: 1.99 to 20.61, two decimals."""
    return round(1.99 + (index % 50) * 0.38, 2)


@dataclass(frozen=True, slots=True)
class StoreProduct:
    id: str
    name: str
    price: float


def order_lines(
    rng: random.Random, products: Sequence[StoreProduct], max_lines: int, max_quantity: int
) -> list[tuple[StoreProduct, int]]:
    """One order: 1..max_lines distinct products (never more than there are), each with a quantity
    in 1..max_quantity."""
    count = rng.randint(1, min(max_lines, len(products)))
    return [(p, rng.randint(1, max_quantity)) for p in rng.sample(list(products), count)]


def expected_total(lines: Iterable[tuple[StoreProduct, int]]) -> float:
    """sum(price x quantity), to the cent."""
    return round(math.fsum(p.price * q for p, q in lines), 2)


def store_invariants(
    initial: Mapping[str, int],
    final: Mapping[str, int],
    processed: Mapping[str, int],
    unknown: Mapping[str, int],
) -> list[CheckResult]:
    """The stock checks after the order phase, over the products in `initial` (their quantities read
    before the orders; `final`: read after; `processed`: quantities of processed orders per product;
    `unknown`: per product, orders whose outcome is unknown (still pending, or the request failed)):

    * `all_outcomes_known`: every order of the phase was seen processed or rejected;
    * `total_decrease_matches`: sum of the processed quantities == the total stock decrease;
    * `stock_accounting`: per product, initial - processed == final;
    * `stock_non_negative`: every final quantity >= 0;
    * `products_listed`: every product is in the final listing.

    A product with an order of unknown outcome may have moved by it, so the two accounting checks
    skip it (and the first check fails) and say how many they skipped.
    """
    pending = [{"product_id": p, "orders": n} for p, n in sorted(unknown.items()) if n]
    missing = [{"product_id": p} for p in sorted(initial) if p not in final]
    negative = [{"product_id": p, "quantity": q} for p, q in sorted(final.items()) if q < 0]
    accounting: list[dict[str, object]] = []
    skipped = 0
    decrease = ordered = 0
    for product_id, before in sorted(initial.items()):
        if unknown.get(product_id) or product_id not in final:
            skipped += 1
            continue
        after = final[product_id]
        sold = processed.get(product_id, 0)
        decrease += before - after
        ordered += sold
        if before - sold != after:
            accounting.append({"product_id": product_id, "expected": before - sold, "actual": after})
    n = len(initial)
    checked = f"{n - skipped} products" + (f", {skipped} skipped" if skipped else "")
    total: list[dict[str, object]] = []
    if decrease != ordered:
        total.append({"processed_quantity": ordered, "stock_decrease": decrease})
    return [
        _result("all_outcomes_known", pending, f"every order processed or rejected ({n} products)"),
        _result(
            "total_decrease_matches",
            total,
            f"processed quantities {ordered:,} == stock decrease {decrease:,} ({checked})",
        ),
        _result("stock_accounting", accounting, f"initial - processed == final ({checked})"),
        _result("stock_non_negative", negative, f"quantity >= 0 ({len(final)} products)"),
        _result("products_listed", missing, f"every product in the final listing ({n} products)"),
    ]


def _result(name: str, failures: list[dict[str, object]], ok_detail: str) -> CheckResult:
    if failures:
        return CheckResult(name, False, f"{len(failures)} failure(s); {ok_detail}", failures)
    return CheckResult(name, True, ok_detail)


@dataclass(slots=True)
class ListingSample:
    """One timed `GET /api/inventory/products`."""

    seconds: float | None
    """None when the request got no HTTP answer (see `error`)."""
    http_status: int | None = None
    cache: str | None = None
    """The `X-Cache` header, upper case; None when absent."""
    error: str | None = None
    stale: bool = False
    """A miss-phase read that did not show the quantity written just before it."""


def listing_figures(
    samples: Sequence[ListingSample],
    expected: str,
    wall_seconds: float,
    write_seconds: Sequence[float] = (),
) -> dict[str, Any]:
    """The figures of one listing phase whose reads should all answer `X-Cache: <expected>`.

    `latency` is over the 200 answers; `unexpected_cache` counts the 200 answers whose `X-Cache`
    was something else or absent; `stale_reads` the reads that missed the write before them.
    """
    ok = [s for s in samples if s.http_status == 200 and s.seconds is not None]
    figures: dict[str, Any] = {
        "expected_cache": expected,
        "requests": len(samples),
        "latency": summarize_ms([s.seconds for s in ok if s.seconds is not None]),
        "reads_per_s": rate_per_second(len(ok), wall_seconds),
        "seconds": round(wall_seconds, 3),
        "x_cache": count_by(s.cache or "absent" for s in ok),
        "unexpected_cache": sum(1 for s in ok if s.cache != expected),
        "http": count_by(str(s.http_status) for s in samples if s.http_status is not None),
        "errors": count_by(s.error for s in samples if s.error),
        "stale_reads": sum(1 for s in samples if s.stale),
    }
    if expected == "MISS":
        figures["write_latency"] = summarize_ms(write_seconds)
    return figures


@dataclass(slots=True)
class OrderSample:
    """One `POST /api/orders/process` and what became of it."""

    manager_id: str
    lines: list[tuple[StoreProduct, int]]
    customer: int
    sent_at: float = 0.0
    http_status: int | None = None
    """The POST's status code; None when it got no HTTP answer."""
    final_at: float | None = None
    """perf_counter seconds when the outcome was known (the POST's answer, or the poll after a 202)."""
    outcome: str | None = None
    """`processed`, `rejected:<CODE>`, `pending` (still, at the deadline), `error:<kind>`."""
    order_id: str | None = None
    total_amount: float | None = None
    polls: int = 0

    @property
    def body(self) -> dict[str, Any]:
        return {
            "manager_id": self.manager_id,
            "customer": {"id": f"cust_{self.customer}", "email": f"bench{self.customer}@example.com"},
            "products": [{"product_id": p.id, "quantity": q} for p, q in self.lines],
        }

    @property
    def known(self) -> bool:
        """Whether the outcome is known (processed or rejected); otherwise the order may or may not
        hold stock."""
        return self.outcome is not None and (
            self.outcome in STOCK_HOLDING_OUTCOMES or self.outcome.startswith("rejected")
        )


def classify_order_reply(reply: Reply) -> tuple[str | None, str | None, float | None]:
    """(outcome, order id, total amount) of an answer of `POST /api/orders/process` or of the poll of
    its `Location`; outcome None means still pending.

    200 `{"status": "processed"}` -> processed; 202 or a `pending` status -> None; 400/404/409 with
    an error code -> `rejected:<code>`; 429 -> `rejected:RATE_LIMIT_EXCEEDED` (nothing was created);
    anything else -> `error:http_<status>` (the order may exist).
    """
    payload = reply.payload if isinstance(reply.payload, dict) else {}
    order_id = payload.get("order_id")
    order_id = str(order_id) if isinstance(order_id, str | int) and not isinstance(order_id, bool) else None
    status = payload.get("status")
    if reply.status in (200, 202) and status == "pending":
        return None, order_id, None
    if reply.status == 202:
        return None, order_id, None
    if reply.status == 200:
        if status == "processed":
            return "processed", order_id, money(payload.get("total_amount"))
        if isinstance(status, str) and status:
            return f"rejected:{status}", order_id, None
        return "error:bad_body", order_id, None
    if reply.status == 429:
        return "rejected:RATE_LIMIT_EXCEEDED", order_id, None
    if reply.status in (400, 404, 409, 422):
        return f"rejected:{error_code(reply.payload) or f'http_{reply.status}'}", order_id, None
    return f"error:http_{reply.status}", order_id, None


def order_figures(samples: Sequence[OrderSample], concurrency: int, started: float, ended: float) -> dict:
    """The figures of the order phase: processed orders/s over the phase's wall time (first send to
    last outcome), end-to-end latency (send -> outcome, polls of a 202 included) of processed orders
    and of every known outcome, first answers by HTTP status, outcomes."""
    processed = [s for s in samples if s.outcome in STOCK_HOLDING_OUTCOMES and s.final_at is not None]
    known = [s for s in samples if s.known and s.final_at is not None]
    wall = ended - started
    mismatched = [
        s
        for s in processed
        if s.total_amount is None or abs(s.total_amount - expected_total(s.lines)) > 0.005
    ]
    return {
        "orders": len(samples),
        "concurrency": concurrency,
        "lines": count_by(str(len(s.lines)) for s in samples),
        "units": sum(q for s in samples for _, q in s.lines),
        "seconds": round(wall, 3),
        "processed": len(processed),
        "processed_per_s": rate_per_second(len(processed), wall),
        "latency": summarize_ms([s.final_at - s.sent_at for s in processed if s.final_at is not None]),
        "latency_known_outcomes": summarize_ms(
            [s.final_at - s.sent_at for s in known if s.final_at is not None]
        ),
        "http": count_by(str(s.http_status) if s.http_status is not None else "no_answer" for s in samples),
        "outcomes": count_by(s.outcome or "unknown" for s in samples),
        "followed_202": sum(1 for s in samples if s.http_status == 202),
        "polls": sum(s.polls for s in samples),
        "total_amount_mismatches": len(mismatched),
    }


# --- the phases -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Manager:
    id: str
    products: list[StoreProduct] = field(default_factory=list)
    budget: RateBudget | None = None


@dataclass(slots=True)
class StoreRun:
    """State shared by the phases of one store benchmark."""

    target: Target
    console: Console
    seed: int | None = None
    managers: list[Manager] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stock: int = 0
    written: dict[str, int] = field(default_factory=dict)
    """The last quantity the listing phases wrote, per manager id (each write must change it)."""
    rng: random.Random = field(init=False)
    tag: str = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.tag = f"{int(time.time())}{random.SystemRandom().randrange(16**4):04x}"

    def progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )


async def run_clients(count: int, client: Callable[[int], Awaitable[None]]) -> float:
    """Run `client(0)` .. `client(count - 1)` at once; returns the wall seconds they took."""
    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(count)))
    return time.perf_counter() - started


def _describe(reply: Reply) -> str:
    code = error_code(reply.payload)
    if code:
        inner = reply.payload.get("error") if isinstance(reply.payload, dict) else None
        message = inner.get("message") if isinstance(inner, dict) else None
        return f"HTTP {reply.status} {code}" + (f": {message}" if message else "")
    return f"HTTP {reply.status}: {reply.body.decode(errors='replace')[:200]!r}"


def _check_reply(reply: Reply, expected: int, what: str) -> None:
    if reply.status == 429:
        raise BenchError(f"{what}: rate limited ({_describe(reply)}); {RAISE_LIMIT_HINT}")
    if reply.status in (401, 403):
        raise BenchError(
            f"{what}: {_describe(reply)}; the API requires credentials on the store routes "
            "(STORE_REQUIRE_AUTH=true): pass --login USER:PASS, --token TOKEN or --basic USER:PASS"
        )
    if reply.status != expected:
        raise BenchError(f"{what}: expected HTTP {expected}, got {_describe(reply)}")


async def read_listing(session: Any, manager_id: str, status: str | None = None) -> Reply:
    """`GET /api/inventory/products?manager_id=...[&status=...]`; raises TRANSPORT_ERRORS."""
    params = {"manager_id": manager_id}
    if status:
        params["status"] = status
    return await fetch(session, "GET", PRODUCTS_PATH, params=params)


async def must_fetch(session: Any, method: str, path: str, what: str, **options: Any) -> Reply:
    """`fetch`, with a transport failure turned into BenchError (for setup and checks, where the run
    cannot go on without the answer)."""
    try:
        return await fetch(session, method, path, **options)
    except TRANSPORT_ERRORS as exc:
        raise BenchError(f"{what}: no answer from the API ({exc!r})") from exc


async def read_quantities(session: Any, manager_id: str) -> dict[str, int]:
    """Every product of `manager_id` (all statuses) -> its quantity; BenchError unless a 200 listing."""
    what = f"listing the products of {manager_id}"
    reply = await must_fetch(session, "GET", PRODUCTS_PATH, what, params={"manager_id": manager_id})
    _check_reply(reply, 200, what)
    quantities = listing_quantities(reply.payload)
    if quantities is None:
        raise BenchError(f"unexpected listing body for {manager_id}: {reply.body[:200]!r}")
    return quantities


async def upsert_products(session: Any, manager_id: str, items: list[dict[str, Any]]) -> list[dict]:
    """`POST /api/inventory/products` -> the products of the answer; BenchError unless 201."""
    what = f"writing products of {manager_id}"
    body = {"manager_id": manager_id, "products": items}
    reply = await must_fetch(session, "POST", PRODUCTS_PATH, what, json=body)
    _check_reply(reply, 201, what)
    body = reply.payload
    if not isinstance(body, dict) or not isinstance(body.get("products"), list):
        raise BenchError(f"unexpected body of POST /{PRODUCTS_PATH}: {reply.body[:200]!r}")
    return body["products"]


async def setup(
    run: StoreRun,
    managers: int,
    products: int,
    stock: int,
    plan_for: Callable[[int], list[int]],
) -> dict[str, Any]:
    """Read each new manager's (empty) listing, check its rate-limit budget against `plan_for(managers)`
    before any write, then create `products` products of `stock` units for each."""
    started = time.perf_counter()
    run.stock = stock
    run.managers = [Manager(f"mgr_bench_{run.tag}_{i + 1}") for i in range(managers)]
    plan = plan_for(managers)
    async with run.target.session(min(managers, 8)) as session:
        for manager in run.managers:
            what = f"the first listing of {manager.id}"
            reply = await must_fetch(session, "GET", PRODUCTS_PATH, what, params={"manager_id": manager.id})
            _check_reply(reply, 200, what)
            manager.budget = rate_budget(reply.headers)
        problems = [
            problem
            for manager, planned in zip(run.managers, plan, strict=True)
            if (problem := rate_limit_problem(manager.id, manager.budget, planned))
        ]
        if problems:
            raise BenchError(
                problems[0] + (f" ({len(problems)} managers short)" if len(problems) > 1 else "")
            )
        if all(m.budget is None for m in run.managers):
            run.notes.append(
                "the store API sent no RateLimit-* headers: the rate-limit budget was not checked"
            )

        with run.progress() as progress:
            task = progress.add_task("setup: products", total=managers * products)
            for manager in run.managers:
                for first in range(0, products, SETUP_BATCH):
                    items = [
                        {
                            "name": f"bench-store {run.tag} #{i + 1:04d}",
                            "price": product_price(i),
                            "quantity": stock,
                        }
                        for i in range(first, min(first + SETUP_BATCH, products))
                    ]
                    created = await upsert_products(session, manager.id, items)
                    by_name = {item.get("name"): item for item in created if isinstance(item, dict)}
                    for item in items:
                        answer = by_name.get(item["name"])
                        if answer is None or not isinstance(answer.get("id"), str | int):
                            raise BenchError(f"product {item['name']!r} missing from the answer")
                        price = money(answer.get("price"))
                        manager.products.append(
                            StoreProduct(
                                str(answer["id"]), item["name"], item["price"] if price is None else price
                            )
                        )
                    progress.advance(task, len(items))
    budgets = [m.budget for m in run.managers if m.budget is not None]
    remaining = [b.remaining for b in budgets if b.remaining is not None]
    return {
        "managers": managers,
        "manager_ids": [m.id for m in run.managers],
        "products_per_manager": products,
        "stock_per_product": stock,
        "seconds": round(time.perf_counter() - started, 3),
        "rate_limit": {
            "limit": budgets[0].limit if budgets else None,
            "remaining_min": min(remaining) if remaining else None,
            "planned_max": max(plan) if plan else 0,
            "checked": bool(budgets),
        },
    }


async def _timed_read(
    session: Any, manager_id: str, status: str | None
) -> tuple[ListingSample, Reply | None]:
    started = time.perf_counter()
    try:
        reply = await read_listing(session, manager_id, status)
    except TRANSPORT_ERRORS as exc:
        return ListingSample(None, error=type(exc).__name__), None
    elapsed = time.perf_counter() - started
    cache = reply.headers.get(CACHE_HEADER)
    return ListingSample(elapsed, reply.status, cache.strip().upper() if cache else None), reply


async def listing_phase(run: StoreRun, concurrency: int, gets: int, status: str | None) -> dict[str, Any]:
    """Listing latency at `concurrency` clients, client i on manager i (so no client's write or read
    changes what another one's read finds in the cache):

    * miss: each client repeats {re-POST its first product, same name, a new quantity; timed GET};
      the write invalidates the manager's cached listings, so every read should say MISS and show
      the new quantity (else it is counted as a stale read; only checked for the listings that hold
      the product: all, or `in_stock`);
    * hit: each client repeats the timed GET with nothing in between: every read should say HIT.

    Each client reads once untimed before each phase (connection set-up; it also fills the cache).
    `gets` reads per phase are shared by the clients.
    """
    shares = split_evenly(gets, concurrency)
    miss_samples: list[ListingSample] = []
    hit_samples: list[ListingSample] = []
    writes: list[float] = []

    with run.progress() as progress:
        miss_task = progress.add_task(f"listing C={concurrency}: miss", total=gets)
        hit_task = progress.add_task(f"listing C={concurrency}: hit", total=gets)
        async with run.target.session(concurrency) as session:

            async def miss_client(i: int) -> None:
                manager = run.managers[i]
                product = manager.products[0]
                await _timed_read(session, manager.id, status)
                for _ in range(shares[i]):
                    quantity = run.written.get(manager.id, run.stock) + 1
                    run.written[manager.id] = quantity
                    item = {"name": product.name, "price": product.price, "quantity": quantity}
                    started = time.perf_counter()
                    try:
                        reply = await fetch(
                            session,
                            "POST",
                            PRODUCTS_PATH,
                            json={"manager_id": manager.id, "products": [item]},
                        )
                    except TRANSPORT_ERRORS as exc:
                        miss_samples.append(ListingSample(None, error=f"write:{type(exc).__name__}"))
                        progress.advance(miss_task)
                        continue
                    if reply.status != 201:
                        miss_samples.append(ListingSample(None, error=f"write:http_{reply.status}"))
                        progress.advance(miss_task)
                        continue
                    writes.append(time.perf_counter() - started)
                    sample, answer = await _timed_read(session, manager.id, status)
                    if answer is not None and answer.status == 200 and status in (None, "in_stock"):
                        seen = listing_quantities(answer.payload) or {}
                        sample.stale = seen.get(product.id) != quantity
                    miss_samples.append(sample)
                    progress.advance(miss_task)

            async def hit_client(i: int) -> None:
                manager = run.managers[i]
                await _timed_read(session, manager.id, status)
                for _ in range(shares[i]):
                    sample, _ = await _timed_read(session, manager.id, status)
                    hit_samples.append(sample)
                    progress.advance(hit_task)

            miss_wall = await run_clients(concurrency, miss_client)
            hit_wall = await run_clients(concurrency, hit_client)

    return {
        "concurrency": concurrency,
        "status": status,
        "products_listed": len(run.managers[0].products),
        "miss": listing_figures(miss_samples, "MISS", miss_wall, writes),
        "hit": listing_figures(hit_samples, "HIT", hit_wall),
    }


async def process_order(session: Any, sample: OrderSample, deadline: float) -> None:
    """`POST /api/orders/process`, then, after a 202, long-poll its `Location` (`?wait=10`) until the
    outcome is known or `deadline` (perf_counter seconds) passes. Fills in `sample`; never raises for
    HTTP errors or transport failures (they are counted)."""
    sample.sent_at = time.perf_counter()
    try:
        reply = await fetch(session, "POST", PROCESS_PATH, json=sample.body)
    except TRANSPORT_ERRORS as exc:
        sample.outcome = f"error:{type(exc).__name__}"
        return
    sample.http_status = reply.status
    outcome, sample.order_id, sample.total_amount = classify_order_reply(reply)
    if outcome is not None:
        sample.outcome, sample.final_at = outcome, time.perf_counter()
        return
    path = location_path(reply.headers.get("Location"))
    if path is None and sample.order_id:
        path = f"api/orders/{sample.order_id}"
    if path is None:
        sample.outcome = "error:no_location"
        return
    pause = POLL_FIRST_SECONDS
    base_timeout = session.timeout.total
    while (remaining := deadline - time.perf_counter()) > 0:
        hold = min(LONG_POLL_SECONDS, remaining)
        timeout = None if base_timeout is None else aiohttp.ClientTimeout(total=base_timeout + hold)
        sample.polls += 1
        polled = time.perf_counter()
        try:
            reply = await fetch(session, "GET", path, params={"wait": round(hold, 3)}, client_timeout=timeout)
        except TRANSPORT_ERRORS:
            reply = None
        if reply is not None:
            outcome, order_id, total = classify_order_reply(reply)
            if outcome is not None:
                if reply.status == 404 and outcome == "rejected:ORDER_NOT_FOUND":
                    outcome = "error:poll_not_found"  # the order's own fate is unknown
                sample.outcome, sample.final_at, sample.total_amount = outcome, time.perf_counter(), total
                sample.order_id = sample.order_id or order_id
                return
        if time.perf_counter() - polled < hold / 2:  # not held (an error, or no long poll): back off
            await asyncio.sleep(min(pause, max(0.0, deadline - time.perf_counter())))
            pause = min(pause * 2, POLL_MAX_SECONDS)
    sample.outcome = "pending"


async def orders_phase(
    run: StoreRun,
    orders: int,
    concurrency: int,
    managers: int,
    max_lines: int,
    max_quantity: int,
    settle_timeout: float,
) -> tuple[dict[str, Any], list[OrderSample]]:
    """`orders` orders from `concurrency` clients in a closed loop (each sends its next order when the
    previous one has its outcome), spread round-robin over the first `managers` managers, each order
    1..`max_lines` random products of its manager with quantities 1..`max_quantity`. A 202 is
    followed for up to `settle_timeout` seconds from its send, and that time counts in its latency."""
    samples = [
        OrderSample(
            manager_id=run.managers[n % managers].id,
            lines=order_lines(run.rng, run.managers[n % managers].products, max_lines, max_quantity),
            customer=n + 1,
        )
        for n in range(orders)
    ]
    queue = iter(samples)
    with run.progress() as progress:
        task = progress.add_task(f"orders: process (C={concurrency})", total=orders)
        async with run.target.session(concurrency) as session:

            async def client(_: int) -> None:
                for sample in queue:
                    await process_order(session, sample, time.perf_counter() + settle_timeout)
                    progress.advance(task)

            started = time.perf_counter()
            await run_clients(concurrency, client)
            ended = time.perf_counter()
    return order_figures(samples, concurrency, started, ended), samples


async def order_invariants(
    run: StoreRun, managers: int, initial: Mapping[str, int], samples: Sequence[OrderSample]
) -> dict[str, Any]:
    """Read the final listing of the order managers and check the stock against the outcomes."""
    processed: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for sample in samples:
        if sample.outcome in STOCK_HOLDING_OUTCOMES:
            for product, quantity in sample.lines:
                processed[product.id] = processed.get(product.id, 0) + quantity
        elif not sample.known:
            for product, _ in sample.lines:
                unknown[product.id] = unknown.get(product.id, 0) + 1
    final: dict[str, int] = {}
    async with run.target.session(1) as session:
        for manager in run.managers[:managers]:
            final.update(await read_quantities(session, manager.id))
    final = {p: q for p, q in final.items() if p in initial}
    checks = store_invariants(initial, final, processed, unknown)
    return {
        "passed": all(c.passed for c in checks),
        "checks": [c.as_dict() for c in checks],
        "processed_quantity": sum(processed.values()),
        "stock_decrease": sum(initial[p] - final[p] for p in initial if p in final),
    }


async def initial_quantities(run: StoreRun, managers: int) -> dict[str, int]:
    """The quantities of the order managers' products before the order phase."""
    ids = {p.id for m in run.managers[:managers] for p in m.products}
    quantities: dict[str, int] = {}
    async with run.target.session(1) as session:
        for manager in run.managers[:managers]:
            quantities.update(await read_quantities(session, manager.id))
    missing = ids - quantities.keys()
    if missing:
        raise BenchError(f"{len(missing)} products of the run are missing from their listing")
    return {p: q for p, q in quantities.items() if p in ids}


async def run_store_benchmark(
    target: Target,
    console: Console,
    results: dict[str, Any],
    *,
    products: int,
    stock: int,
    gets: int,
    listing_concurrency: Sequence[int],
    status: str | None,
    orders: int,
    concurrency: int,
    managers: int,
    max_lines: int,
    max_quantity: int,
    settle_timeout: float,
    seed: int | None,
) -> None:
    """Setup, the listing phases (one per listing concurrency), the order phase and its stock check,
    filling in `results` as they finish (so a failed run keeps what it measured)."""
    started = time.perf_counter()
    run = StoreRun(target=target, console=console, seed=seed)
    results["notes"] = run.notes
    created = max(managers if orders else 1, *listing_concurrency)

    def plan_for(count: int) -> list[int]:
        return planned_requests(count, products, gets, listing_concurrency, orders, managers)

    results["setup"] = await setup(run, created, products, stock, plan_for)
    results["listing"] = []
    for k in listing_concurrency if gets else ():
        figures = await listing_phase(run, k, gets, status)
        results["listing"].append(figures)
        if figures["miss"]["stale_reads"]:
            run.notes.append(
                f"listing C={k}: {figures['miss']['stale_reads']} read(s) after a write did not show it"
            )
        for phase in ("miss", "hit"):
            unexpected = figures[phase]["unexpected_cache"]
            if unexpected:
                run.notes.append(
                    f"listing C={k}, {phase}: {unexpected} answer(s) without X-Cache: "
                    f"{figures[phase]['expected_cache']} ({figures[phase]['x_cache']})"
                )
    cache_checks = [
        CheckResult(
            "listing_reflects_writes",
            not any(f["miss"]["stale_reads"] for f in results["listing"]),
            "every read after a write shows the written quantity (no stale cache entry)",
        )
    ]
    results["invariants"] = {"passed": cache_checks[0].passed, "checks": [c.as_dict() for c in cache_checks]}

    if orders:
        initial = await initial_quantities(run, managers)
        results["orders"], samples = await orders_phase(
            run, orders, concurrency, managers, max_lines, max_quantity, settle_timeout
        )
        if results["orders"]["outcomes"].get("rejected:RATE_LIMIT_EXCEEDED"):
            run.notes.append(f"orders were rate limited (429): {RAISE_LIMIT_HINT}")
        if results["orders"]["total_amount_mismatches"]:
            run.notes.append(
                f"{results['orders']['total_amount_mismatches']} processed order(s) answered a "
                "total_amount other than sum(price x quantity)"
            )
        stock_checks = await order_invariants(run, managers, initial, samples)
        checks = results["invariants"]["checks"] + stock_checks.pop("checks")
        results["invariants"] = {
            **stock_checks,
            "passed": all(c["passed"] for c in checks),
            "checks": checks,
        }
    results["seconds"] = round(time.perf_counter() - started, 3)
