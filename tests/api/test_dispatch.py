"""The API's order dispatcher: ids are coalesced into batches (by window and by size) and published
off the event loop; an idle dispatcher sends on the loop's next pass, a busy one at most one batch
per window; a failed publish opens the breaker for the cooldown (orders are left to the
outbox sweep), and the first publish after it closes it again."""

from __future__ import annotations

import asyncio
import threading

import pytest

from api.dispatch import OrderDispatcher

pytestmark = pytest.mark.pure


class Recorder:
    """A `send` that records each batch and the thread it ran in; answers from `results`."""

    def __init__(self, results: list[bool] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()
        self._results = results

    def __call__(self, ids: list[int]) -> bool:
        self.batches.append(list(ids))
        self.threads.add(threading.get_ident())
        return True if self._results is None else self._results[len(self.batches) - 1]


async def settle(dispatcher: OrderDispatcher) -> None:
    await asyncio.sleep(0.05)
    await dispatcher.drain()


async def test_ids_within_the_window_go_in_one_batch_off_the_event_loop():
    send = Recorder()
    dispatcher = OrderDispatcher(send, window=0.02, max_batch=100)
    dispatcher.submit([1])
    dispatcher.submit([2, 3])
    dispatcher.submit([])
    assert send.batches == []  # nothing is published before the window ends
    await settle(dispatcher)
    assert send.batches == [[1, 2, 3]]
    assert threading.get_ident() not in send.threads
    dispatcher.close()


async def sent_within(send: Recorder, expected: list[list[int]], seconds: float) -> bool:
    """Whether `send` has recorded exactly `expected` within `seconds` (polled every 10 ms): the
    publish runs in the dispatcher's thread, which a loaded machine may start late."""
    deadline = asyncio.get_running_loop().time() + seconds
    while send.batches != expected:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_an_idle_dispatcher_sends_at_once_and_the_next_ids_wait_for_the_window():
    # "At once" is within a third of the window: late enough for a thread hop on a loaded machine,
    # early enough that a dispatcher that waited for the window would fail.
    window = 0.6
    send = Recorder()
    dispatcher = OrderDispatcher(send, window=window, max_batch=100)
    dispatcher.submit([1])
    assert await sent_within(send, [[1]], window / 3)  # no batch started within the window
    dispatcher.submit([2])
    dispatcher.submit([3])
    await asyncio.sleep(window / 3)
    assert send.batches == [[1]]  # the window the first batch opened is still running
    assert await sent_within(send, [[1], [2, 3]], window)
    await asyncio.sleep(window * 1.2)
    dispatcher.submit([4])  # idle for longer than the window again
    assert await sent_within(send, [[1], [2, 3], [4]], window / 3)
    dispatcher.close()


async def test_a_full_batch_is_published_at_once_and_the_rest_waits_for_the_window():
    send = Recorder()
    dispatcher = OrderDispatcher(send, window=10, max_batch=3)
    dispatcher.submit([1, 2, 3, 4])
    await asyncio.sleep(0.05)
    assert send.batches == [[1, 2, 3]]
    dispatcher.flush()
    await settle(dispatcher)
    assert send.batches == [[1, 2, 3], [4]]
    dispatcher.close()


async def test_a_failed_publish_opens_the_breaker_until_the_cooldown_ends():
    send = Recorder([False, True])
    dispatcher = OrderDispatcher(send, window=0, max_batch=100, cooldown=0.2)
    dispatcher.submit([1])
    await settle(dispatcher)
    assert dispatcher.is_open
    dispatcher.submit([2])  # open: left to the sweep, not even tried
    await settle(dispatcher)
    assert send.batches == [[1]]
    await asyncio.sleep(0.25)
    assert not dispatcher.is_open
    dispatcher.submit([3])
    await settle(dispatcher)
    assert send.batches == [[1], [3]]
    assert not dispatcher.is_open
    # The ids left to the sweep are known as deferred (a waiting request stops waiting for them).
    assert [dispatcher.deferred(i) for i in (1, 2, 3)] == [True, True, False]
    dispatcher.close()


async def test_a_send_that_raises_counts_as_failed():
    def send(ids: list[int]) -> bool:
        raise ConnectionError("broker down")

    dispatcher = OrderDispatcher(send, window=0, max_batch=100, cooldown=5)
    dispatcher.submit([1])
    await settle(dispatcher)
    assert dispatcher.is_open
    dispatcher.reset()
    assert not dispatcher.is_open
    dispatcher.close()


async def test_ids_submitted_while_a_publish_is_under_way_go_together_in_the_next_batch():
    release = threading.Event()
    batches: list[list[int]] = []

    def send(ids: list[int]) -> bool:
        batches.append(list(ids))
        release.wait(5)
        return True

    dispatcher = OrderDispatcher(send, window=0, max_batch=100)
    dispatcher.submit([1])
    await asyncio.sleep(0.05)  # the first publish is under way and blocks
    for order_id in range(2, 7):
        dispatcher.submit([order_id])
        await asyncio.sleep(0.01)  # each window ends while the publish still blocks
    assert batches == [[1]]
    release.set()
    await settle(dispatcher)
    assert batches == [[1], [2, 3, 4, 5, 6]]
    dispatcher.close()
