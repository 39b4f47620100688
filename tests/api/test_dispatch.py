"""The API's order dispatcher: a failed send opens it for the cooldown, then one probe runs in a
worker thread, and a success closes it again."""

from __future__ import annotations

import asyncio

from api.dispatch import OrderDispatcher


async def test_a_failed_send_opens_the_dispatcher_until_the_cooldown_ends():
    results = [False, True, True]
    calls: list[int] = []

    def send(order_id: int) -> bool:
        calls.append(order_id)
        return results[len(calls) - 1]

    dispatcher = OrderDispatcher(send, cooldown=0.2)
    assert await dispatcher.send(1) is False
    assert await dispatcher.send(2) is False  # open: not even tried
    assert calls == [1]
    await asyncio.sleep(0.25)
    assert await dispatcher.send(3) is True  # the probe, in a worker thread
    assert await dispatcher.send(4) is True  # closed again: on the loop
    assert calls == [1, 3, 4]
