"""Waiting for an order's outcome, shared by both surfaces (CONTRACT.md, "Orders": `?wait=N` and
`Prefer: wait=N`; "Store API": `/api/orders/process` waits up to `ORDER_WAIT_SECONDS`).

A route stores or reads the order (one call into core) and returns a `SettlingResponse`. The request
dependency then commits and runs the effects (the order is sent to the workers), and only then does
the response wait, holding no session, connection or lock: it is woken by the order's event, which
carries the new status and error (`core.events`), so the answer is built without reading the order
again. A watch is registered (`OrderWatches`) before the order is read (`GET`), or right after it is
stored and before it is sent to the workers (`POST`), so no outcome can come in unseen. Should no
event come (a lost message, Redis down), the response re-reads the order every `RECHECK_SECONDS`
with its own short-lived session.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Generic, Protocol, TypeVar

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api import metrics
from core.events import OrderOutcome, Watch, hub
from core.orders.models import OrderStatus

#: Seconds a client should wait before polling a pending order again (the `Retry-After` header).
RETRY_AFTER_SECONDS = "1"
#: How often a waiting response re-reads the order when no event woke it.
RECHECK_SECONDS = 2.0
#: How often a response waiting for an order it has just submitted checks that the dispatcher has not
#: deferred it (left it to the outbox sweep).
IN_FLIGHT_POLL_SECONDS = 0.1

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Retries with the same key and body return the first order (no second order).",
    ),
]
PreferHeader = Annotated[
    str | None,
    Header(
        alias="Prefer",
        max_length=1024,
        description="RFC 7240. `wait=N` (seconds): answer with the settled order if it settles within "
        "N seconds (capped by the server); other preferences are ignored.",
    ),
]


def preferred_wait(prefer: str | None, cap: float) -> float | None:
    """The `wait` preference of a `Prefer` header (RFC 7240, section 4.3: `wait=delta-seconds`),
    capped at `cap` seconds; None when there is none or it is malformed (RFC 7240 section 2: a
    preference that is not understood is ignored)."""
    if not prefer:
        return None
    for preference in prefer.split(","):
        token, _, value = preference.split(";", 1)[0].partition("=")
        if token.strip().lower() == "wait":
            value = value.strip().strip('"')
            if value.isdigit():
                return min(float(value), cap)
    return None


class OrderWatches:
    """The watches a request opened; closed when the request ends (after its response was sent)."""

    def __init__(self) -> None:
        self._watches: list[Watch] = []

    def open(self, order_id: int) -> Watch:
        watch = hub.open(order_id)
        self._watches.append(watch)
        return watch

    def close(self) -> None:
        for watch in self._watches:
            hub.close(watch)
        self._watches.clear()


async def order_watches() -> AsyncIterator[OrderWatches]:
    watches = OrderWatches()
    try:
        yield watches
    finally:
        watches.close()


Watches = Annotated[OrderWatches, Depends(order_watches)]


class HasStatus(Protocol):
    """An order view that `settling` can wait on (read-only, so frozen dataclasses qualify)."""

    @property
    def id(self) -> int: ...

    @property
    def status(self) -> str: ...


S = TypeVar("S", bound=HasStatus)


class SettlingResponse(Response, Generic[S]):
    """A response that, when sent, first waits up to `wait` seconds for `order` to leave `pending`,
    then sends `render(order)`.

    `outcome(order, event)` applies an event's outcome to the order; `reread()` reads it anew (only
    when no event carried an outcome within `RECHECK_SECONDS`). `in_flight()`, when given, says
    whether the order is on its way to a worker: once it is False (the broker is unreachable and the
    order was left to the outbox sweep) the response stops waiting and answers as the order is."""

    def __init__(
        self,
        watch: Watch,
        order: S,
        wait: float,
        *,
        outcome: Callable[[S, OrderOutcome], S],
        reread: Callable[[], Awaitable[S]],
        render: Callable[[S], Response],
        in_flight: Callable[[], bool] | None = None,
    ) -> None:
        # Nothing is rendered yet: the answer depends on the wait (Response.__init__ is not called).
        self.status_code = 200
        self.background = None
        self._watch = watch
        self._order = order
        self._wait = wait
        self._outcome = outcome
        self._reread = reread
        self._render = render
        self._in_flight = in_flight or (lambda: True)
        self._polls = in_flight is not None

    async def settle(self) -> S:
        """The order once it left `pending`, or as it is when the wait ran out."""
        order, watch = self._order, self._watch
        if watch.outcome is not None:  # came in while the request was stored or read
            order = self._outcome(order, watch.outcome)
        if order.status != OrderStatus.PENDING or self._wait <= 0 or not self._in_flight():
            return order
        started = time.monotonic()
        deadline = started + self._wait
        recheck_at = started + RECHECK_SECONDS
        # With an in-flight check, wake up often enough to stop soon after the order stopped being
        # on its way (the breaker opened while the request waited).
        step = IN_FLIGHT_POLL_SECONDS if self._polls else RECHECK_SECONDS
        while order.status == OrderStatus.PENDING:
            now = time.monotonic()
            if now >= deadline or not self._in_flight():
                break
            woken = await watch.wait_changed(min(deadline, recheck_at, now + step) - now)
            watch.changed.clear()
            now = time.monotonic()
            if watch.outcome is not None:
                order = self._outcome(order, watch.outcome)
            elif woken or recheck_at <= now < deadline:
                order = await self._reread()
                recheck_at = time.monotonic() + RECHECK_SECONDS
        metrics.order_time_to_outcome.observe(time.monotonic() - started)
        return order

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wait, send the rendered order, and close the watch (closing it again, as the `Watches`
        dependency does at the end of the request, is harmless)."""
        try:
            await self._render(await self.settle())(scope, receive, send)
        finally:
            hub.close(self._watch)


def settling(
    request: Request,
    watch: Watch,
    order: S,
    wait: float,
    *,
    read: Callable[[Session], S],
    outcome: Callable[[S, OrderOutcome], S],
    render: Callable[[S], Response],
    submitted: bool = False,
) -> SettlingResponse[S]:
    """A `SettlingResponse` whose re-read is `read(session)` on a short-lived read session of its own
    (the request's session is closed by then). `submitted`: the request has just handed the order to
    the dispatcher, so the wait ends as soon as the dispatcher defers it (its breaker was open, or
    the publish of its batch failed or timed out): the order then waits for the outbox sweep,
    `ORDER_SWEEP_AFTER_SECONDS` away, and the client gets its 202 now."""

    async def reread() -> S:
        sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.read_sessionmaker
        async with sessionmaker() as session:
            return await session.run_sync(read)

    dispatcher = request.app.state.dispatcher

    def in_flight() -> bool:
        return not dispatcher.deferred(order.id)

    return SettlingResponse(
        watch,
        order,
        wait,
        outcome=outcome,
        reread=reread,
        render=render,
        in_flight=in_flight if submitted else None,
    )
