"""How a waiting request is woken by its order's event (`core.events.Watch.wait_changed`, used by
`api.outcomes.SettlingResponse` for `Prefer: wait=N` and `GET /orders/{id}?wait=N`, CONTRACT.md
"Orders"). Functional, not timed: the latency itself is measured by `python -m bench.prefer_wait`."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, replace

import pytest
from starlette.responses import Response

from api.outcomes import SettlingResponse
from core.db import utcnow
from core.events import OrderOutcome, hub

pytestmark = pytest.mark.pure


def _outcome(order_id: int, status: str = "confirmed") -> OrderOutcome:
    return OrderOutcome(order_id, status, None, utcnow())


async def test_a_delivered_outcome_wakes_the_waiter_with_it():
    with hub.watch(7301) as watch:
        outcome = _outcome(7301)
        asyncio.get_running_loop().call_later(0.01, hub.deliver, [outcome])
        assert await watch.wait_changed(5) is True
        assert watch.outcome == outcome


async def test_an_outcome_from_another_thread_wakes_the_waiter():
    """The embedded worker notifies from its own thread (`LocalHub.notify`)."""
    with hub.watch(7302) as watch:
        outcome = _outcome(7302, "rejected")
        timer = threading.Timer(0.01, hub.notify, (7302, outcome))
        timer.start()
        try:
            assert await watch.wait_changed(5) is True
        finally:
            timer.join()
        assert watch.outcome == outcome


async def test_the_wait_ends_false_after_its_seconds_without_an_event():
    with hub.watch(7303) as watch:
        assert await watch.wait_changed(0.02) is False
        assert watch.outcome is None
        assert await watch.wait_changed(0) is False


async def test_an_event_that_came_before_the_wait_is_not_missed():
    with hub.watch(7304) as watch:
        hub.deliver([_outcome(7304)])
        assert await watch.wait_changed(5) is True  # at once: `changed` stays set until cleared
        watch.changed.clear()
        assert await watch.wait_changed(0.01) is False


async def test_a_cancelled_wait_leaves_the_watch_usable():
    with hub.watch(7305) as watch:
        task = asyncio.create_task(watch.wait_changed(5))
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        hub.deliver([_outcome(7305)])  # no waiter any more: must not raise
        assert await watch.wait_changed(5) is True


async def test_an_event_for_another_order_does_not_wake_the_waiter():
    with hub.watch(7306) as watch:
        hub.deliver([_outcome(7307)])
        assert await watch.wait_changed(0.02) is False


@dataclass(frozen=True)
class _Order:
    id: int
    status: str


async def test_a_settling_response_answers_from_the_event_without_reading_the_order():
    """The waiting response renders the event's outcome; it re-reads the order only when no event
    came within its recheck period."""
    reads = 0

    async def reread() -> _Order:
        nonlocal reads
        reads += 1
        return _Order(7308, "pending")

    rendered: list[_Order] = []

    def render(order: _Order) -> Response:
        rendered.append(order)
        return Response(order.status, 201 if order.status != "pending" else 202)

    watch = hub.open(7308)
    response = SettlingResponse(
        watch,
        _Order(7308, "pending"),
        5.0,
        outcome=lambda order, event: replace(order, status=event.status),
        reread=reread,
        render=render,
        in_flight=lambda: True,
    )
    asyncio.get_running_loop().call_later(0.02, hub.deliver, [_outcome(7308)])
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    await response({"type": "http", "method": "POST", "headers": []}, receive, send)
    assert rendered == [_Order(7308, "confirmed")]
    assert reads == 0
    assert sent[0]["status"] == 201
    assert hub.waiting() == 0  # the response closed its watch
