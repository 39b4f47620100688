"""Task events still reach a monitor such as Flower, gathered into few messages (workers/consumer.py):
a real worker on the real Redis reserves batches one after another, and a subscriber to the event
exchange sees every task's `task-received`, `task-started` and `task-succeeded`, in at most two
messages per task. Celery's own flush, on the event loop's next pass, sent each event in a message of
its own here (24 messages for 8 tasks). Two, not one: a task that runs longer than the gathering
window (`TASK_EVENT_FLUSH_SECONDS`, which a loaded machine can stretch it past) has its
`task-succeeded` in the next message; a run of the suite on a busy day gave 9 messages for 8 tasks."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from typing import Any

import redis

from core.config import settings
from tests.workers.helpers import make_product, place, wait_until_final
from workers.celery_app import ORDERS_QUEUE, RESERVE_ORDERS, app
from workers.consumer import TASK_EVENT_FLUSH_SECONDS

TASKS = 8
TASK_EVENTS = ("task-received", "task-started", "task-succeeded")


def events_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The Celery events in one kombu message published on the event exchange."""
    envelope = json.loads(message["data"])
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    events = json.loads(body)
    return events if isinstance(events, list) else [events]


class EventTap:
    """Collects the messages published on the worker's event exchange (`celeryev`) in a thread."""

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(settings.redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(f"*{settings.redis_key_prefix}*celeryev*")
        self.messages: list[list[dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None:
                self.messages.append(events_of(message))

    def task_messages(self, task_ids: set[str]) -> list[list[dict[str, Any]]]:
        """The messages that carry an event of one of `task_ids`, each cut to those events."""
        kept = [[e for e in events if e.get("uuid") in task_ids] for events in self.messages]
        return [events for events in kept if events]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()
        self.client.close()


def test_task_events_reach_a_monitor_in_at_most_two_messages_per_task(celery_worker):
    product = make_product(stock=100)
    tap = EventTap()
    try:
        time.sleep(0.2)  # the subscription is in place
        task_ids = set()
        for _ in range(TASKS):  # one task at a time, as a lightly loaded worker sees them
            order = place([(product, 1)])
            task_ids.add(app.send_task(RESERVE_ORDERS, args=([order],), queue=ORDERS_QUEUE).id)
            assert wait_until_final([order], timeout=30)[order] == "confirmed"
        deadline = time.monotonic() + 10 * TASK_EVENT_FLUSH_SECONDS + 5
        while time.monotonic() < deadline:
            events = [e for m in tap.task_messages(task_ids) for e in m]
            if len(events) >= TASKS * len(TASK_EVENTS):
                break
            time.sleep(0.05)
    finally:
        tap.close()

    messages = tap.task_messages(task_ids)
    seen = Counter((e["uuid"], e["type"]) for m in messages for e in m)
    assert seen == Counter({(task_id, kind): 1 for task_id in task_ids for kind in TASK_EVENTS})
    assert len(messages) <= 2 * TASKS
