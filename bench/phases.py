"""The benchmark's phases: setup, probe, closed loop, open model, settling, invariant check.

Every phase is bounded: each request has a timeout, every wait for outcomes has a deadline, and the
number of orders is fixed up front. All orders are kept in `Run.records` so the invariant check can
account for every unit of stock the run moved.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench.client import (
    BenchError,
    OrderRecord,
    Target,
    create_product,
    follow_order,
    get_product,
    list_movements,
    submit_order,
)
from bench.stats import (
    CheckResult,
    ProductState,
    best_final_time,
    check_invariants,
    count_by,
    rate_per_second,
    summarize_latencies,
)
from core.orders.states import STOCK_HOLDING_STATUSES

LONG_POLL_SECONDS = 10.0
"""`GET /orders/{id}?wait=` used to follow orders to their final state."""

PRODUCT_PRICE = 9.99


@dataclass(slots=True)
class Product:
    id: int
    initial_stock: int


@dataclass(slots=True)
class Run:
    """State shared by the phases of one benchmark run."""

    target: Target
    console: Console
    seed: int | None = None
    products: list[Product] = field(default_factory=list)
    records: list[OrderRecord] = field(default_factory=list)
    rng: random.Random = field(init=False)
    perf0: float = field(init=False)
    wall0: float = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.perf0 = time.perf_counter()
        self.wall0 = time.time()

    def wall(self, perf: float) -> float:
        """A perf_counter reading as POSIX seconds."""
        return self.wall0 + (perf - self.perf0)

    def new_order(self, phase: str) -> OrderRecord:
        """A one-line order of quantity 1 for a random product, kept in `records`."""
        product = self.rng.choice(self.products)
        record = OrderRecord(product_id=product.id, quantity=1, phase=phase)
        self.records.append(record)
        return record

    def progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )


async def run_pool(
    items: Iterable[OrderRecord],
    concurrency: int,
    action: Callable[[OrderRecord], Awaitable[None]],
) -> None:
    """Run `action` over `items` with at most `concurrency` at a time (a fixed pool of coroutines
    pulling from one iterator, so memory does not grow with the number of items)."""
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:
            await action(item)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))


# --- setup -------------------------------------------------------------------------------------


async def setup_products(run: Run, count: int, stock: int, concurrency: int) -> dict[str, Any]:
    """Create `count` products with `stock` units each."""
    started = time.perf_counter()
    tag = f"{int(run.wall0)}-{run.rng.randrange(16**6):06x}"
    with run.progress() as progress:
        task = progress.add_task("setup: products", total=count)
        async with run.target.session(min(concurrency, 16)) as session:

            async def make(index: int) -> Product:
                body = await create_product(session, f"bench {tag} #{index + 1}", PRODUCT_PRICE, stock)
                progress.advance(task)
                return Product(id=body["id"], initial_stock=int(body.get("stock", stock)))

            semaphore = asyncio.Semaphore(min(concurrency, 16))

            async def bounded(index: int) -> Product:
                async with semaphore:
                    return await make(index)

            run.products = list(await asyncio.gather(*(bounded(i) for i in range(count))))
    return {
        "products": count,
        "stock_per_product": stock,
        "product_ids": [p.id for p in run.products],
        "seconds": round(time.perf_counter() - started, 3),
    }


async def probe_order(run: Run, within: float, phase: str = "probe") -> OrderRecord:
    """Submit one order and follow it up to `within` seconds: proves a worker is consuming the
    queue before the load starts. Raises BenchError when the order stays pending."""
    record = run.new_order(phase)
    record.intended_at = time.perf_counter()
    deadline = record.intended_at + within
    async with run.target.session(1) as session:
        await submit_order(session, record)
        if record.accepted:
            await follow_order(session, record, deadline, LONG_POLL_SECONDS)
    if record.refused:
        return record  # out of stock already: nothing to prove, nothing to wait for
    if not record.accepted:
        raise BenchError(f"the probe order was not accepted ({record.error})")
    if not record.is_final:
        raise BenchError(
            f"the probe order {record.order_id} is still pending after {within:g} s: "
            "is a worker consuming the queue?"
        )
    return record


# --- closed loop -------------------------------------------------------------------------------


async def closed_loop(
    run: Run, orders: int, concurrency: int, settle_timeout: float, phase: str = "closed"
) -> dict[str, Any]:
    """Peak throughput: `orders` one-line orders from `concurrency` clients that each send the
    next order as soon as the previous one is answered; then every accepted order is followed to
    its final state.

    Figures: accepted/s = 202 answers / wall time of the submit phase; confirmed/s = confirmed
    orders / (first submit -> last order final); submit latency percentiles in ms.
    """
    records = [run.new_order(phase) for _ in range(orders)]

    with run.progress() as progress:
        submit_task = progress.add_task(f"{phase}: submit (C={concurrency})", total=orders)
        async with run.target.session(concurrency) as session:

            async def submit(record: OrderRecord) -> None:
                record.intended_at = time.perf_counter()
                await submit_order(session, record)
                progress.advance(submit_task)

            submit_started = time.perf_counter()
            await run_pool(records, concurrency, submit)
            submit_ended = time.perf_counter()

        accepted = [r for r in records if r.accepted]
        await follow_all(run, accepted, concurrency, settle_timeout, progress, f"{phase}: outcomes")

    return closed_figures(run, records, submit_started, submit_ended, concurrency)


def closed_figures(
    run: Run,
    records: list[OrderRecord],
    submit_started: float,
    submit_ended: float,
    concurrency: int,
) -> dict[str, Any]:
    accepted = [r for r in records if r.accepted]
    confirmed = [r for r in accepted if r.status in STOCK_HOLDING_STATUSES]
    final = [r for r in accepted if r.is_final]
    submit_seconds = submit_ended - submit_started

    latencies = [r.answered_at - r.sent_at for r in records if r.answered_at is not None]
    first_submit_wall = run.wall(submit_started)
    last_observed: float | None = None
    last_best: float | None = None
    for r in final:
        if r.final_observed_at is None:
            continue
        observed = run.wall(r.final_observed_at)
        best = best_final_time(observed, r.server_final_at, run.wall(r.sent_at))
        last_observed = observed if last_observed is None else max(last_observed, observed)
        last_best = best if last_best is None else max(last_best, best)
    span = None if last_best is None else max(last_best - first_submit_wall, submit_seconds)
    span_observed = None if last_observed is None else last_observed - first_submit_wall

    return {
        "orders": len(records),
        "concurrency": concurrency,
        "accepted": len(accepted),
        "refused": sum(1 for r in records if r.refused),
        "errors": count_by(r.error for r in records if r.error and not r.refused),
        "submit_seconds": round(submit_seconds, 3),
        "accepted_per_s": rate_per_second(len(accepted), submit_seconds),
        "answered_per_s": rate_per_second(len(latencies), submit_seconds),
        "submit_latency": summarize_latencies(latencies).as_dict(),
        "outcomes": count_by(r.status or "unknown" for r in accepted),
        "confirmed": len(confirmed),
        "all_final": len(final) == len(accepted),
        "first_submit_to_last_final_seconds": None if span is None else round(span, 3),
        "confirmed_per_s": rate_per_second(len(confirmed), span),
        "confirmed_per_s_client_observed": rate_per_second(len(confirmed), span_observed),
    }


async def follow_all(
    run: Run,
    records: list[OrderRecord],
    concurrency: int,
    within: float,
    progress: Progress | None = None,
    description: str = "outcomes",
) -> None:
    """Long-poll every non-final record until it is final, at most `concurrency` polls at a time,
    for at most `within` seconds in all."""
    pending = [r for r in records if r.accepted and not r.is_final]
    task: TaskID | None = None
    if progress is not None:
        task = progress.add_task(description, total=len(records))
        progress.advance(task, len(records) - len(pending))
    if not pending:
        return
    deadline = time.perf_counter() + within
    async with run.target.session(concurrency) as session:

        async def follow(record: OrderRecord) -> None:
            await follow_order(session, record, deadline, LONG_POLL_SECONDS)
            if progress is not None and task is not None:
                progress.advance(task)

        await run_pool(pending, concurrency, follow)


# --- open model --------------------------------------------------------------------------------


async def open_model(
    run: Run,
    rate: float,
    schedule: list[float],
    connections: int,
    settle_timeout: float,
) -> dict[str, Any]:
    """A fixed arrival rate: order i is due at t0 + schedule[i] whatever happened to the previous
    ones, and every latency counts from that intended start (no coordinated omission). Each
    accepted order is then followed by long polls (`?wait=10`) to its final state.

    Submits and polls have a session of `connections` connections each, so long polls never hold
    up submits. A request first takes one of `connections` slots, then records its send time: a
    wait for a free connection shows as send lag (as it counts in the latency), and it does not
    eat into the request's timeout.
    """
    records = [run.new_order("open") for _ in schedule]
    duration = schedule[-1] + 1 / rate if schedule else 0.0
    tasks: set[asyncio.Task[None]] = set()

    with run.progress() as progress:
        sent_task = progress.add_task(f"open: send at {rate:g}/s", total=len(records))
        done_task = progress.add_task("open: final", total=len(records))
        async with (
            run.target.session(connections) as submit_session,
            run.target.session(connections) as poll_session,
        ):
            submit_slots = asyncio.Semaphore(connections)
            poll_slots = asyncio.Semaphore(connections)
            t0 = time.perf_counter() + 0.05
            deadline = t0 + duration + settle_timeout

            async def one(record: OrderRecord) -> None:
                try:
                    async with submit_slots:
                        await submit_order(submit_session, record)
                    if record.accepted:
                        await follow_order(poll_session, record, deadline, LONG_POLL_SECONDS, poll_slots)
                finally:
                    progress.advance(done_task)

            for record, offset in zip(records, schedule, strict=True):
                record.intended_at = t0 + offset
                delay = record.intended_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(record))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                progress.advance(sent_task)
            last_dispatch = time.perf_counter()

            if tasks:
                grace = run.target.timeout + LONG_POLL_SECONDS + 5
                _, still_running = await asyncio.wait(
                    set(tasks), timeout=max(0.0, deadline - time.perf_counter()) + grace
                )
                for task in still_running:
                    task.cancel()
                await asyncio.gather(*still_running, return_exceptions=True)

    return open_figures(records, rate, duration, t0, last_dispatch, connections)


def open_figures(
    records: list[OrderRecord],
    rate: float,
    duration: float,
    t0: float,
    last_dispatch: float,
    connections: int,
) -> dict[str, Any]:
    accepted = [r for r in records if r.accepted]
    answered = [r for r in records if r.answered_at is not None]
    confirmed = [r for r in accepted if r.status in STOCK_HOLDING_STATUSES]
    sent = [r for r in records if r.sent_at]
    submit_latency = [r.answered_at - r.intended_at for r in answered if r.answered_at]
    to_final = [r.final_observed_at - r.intended_at for r in confirmed if r.final_observed_at is not None]
    dispatch_lag = [r.sent_at - r.intended_at for r in sent]
    return {
        "rate": round(rate, 3),
        "duration_seconds": round(duration, 3),
        "scheduled": len(records),
        "sent": len(sent),
        "send_seconds": round(last_dispatch - t0, 3),
        "accepted": len(accepted),
        "refused": sum(1 for r in records if r.refused),
        "errors": count_by(r.error for r in records if r.error and not r.refused),
        "connections": connections,
        "submit_latency": summarize_latencies(submit_latency).as_dict(),
        "submit_to_confirmed_latency": summarize_latencies(to_final).as_dict(),
        "outcomes": count_by(r.status or "unknown" for r in accepted),
        "confirmed": len(confirmed),
        "all_final": all(r.is_final for r in accepted),
        "dispatch_lag": summarize_latencies(dispatch_lag).as_dict(),
    }


# --- invariants --------------------------------------------------------------------------------


async def check_stock(run: Run, concurrency: int = 8) -> tuple[list[CheckResult], list[dict]]:
    """Read every product and its movement ledger, and check the stock invariants against the
    orders of the run (see `bench.stats.check_invariants`)."""
    confirmed: dict[int, int] = {}
    pending: dict[int, int] = {}
    for r in run.records:
        if not r.accepted:
            continue
        if r.status in STOCK_HOLDING_STATUSES:
            confirmed[r.product_id] = confirmed.get(r.product_id, 0) + r.quantity
        elif not r.is_final:
            pending[r.product_id] = pending.get(r.product_id, 0) + 1

    semaphore = asyncio.Semaphore(concurrency)
    async with run.target.session(concurrency) as session:

        async def state_of(product: Product) -> ProductState:
            async with semaphore:
                body = await get_product(session, product.id)
                movements = await list_movements(session, product.id)
            return ProductState(
                product_id=product.id,
                initial_stock=product.initial_stock,
                confirmed_quantity=confirmed.get(product.id, 0),
                current_stock=int(body["stock"]),
                ledger_sum=sum(int(m["delta"]) for m in movements),
                ledger_order_sum=sum(int(m["delta"]) for m in movements if m.get("order_id") is not None),
                pending_orders=pending.get(product.id, 0),
            )

        states = await asyncio.gather(*(state_of(p) for p in run.products))
    per_product = [
        {
            "product_id": s.product_id,
            "initial_stock": s.initial_stock,
            "confirmed_quantity": s.confirmed_quantity,
            "stock": s.current_stock,
            "ledger_sum": s.ledger_sum,
        }
        for s in states
    ]
    return check_invariants(states), per_product
