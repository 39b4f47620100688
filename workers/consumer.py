"""The worker's broker consumer (`worker_consumer` in workers/celery_app.py): Celery's own, with one
reconnect fault mended and its task events sent in fewer messages.

Task events (`task-received`, `task-started`, `task-succeeded`, what Flower shows) are buffered by
Celery's event dispatcher and published as one `task.multi` message per flush; Celery flushes on the
event loop's next pass, which under load is one Redis `PUBLISH` per event or two, about a third of
the worker main process's CPU at 100 tasks/s (py-spy). Here a flush waits `TASK_EVENT_FLUSH_SECONDS`
(or until Celery's buffer limit, 24 events), so Flower sees each event at most that much later. Events
still buffered when the worker's broker connection closes are lost, as Celery's own buffered events
are; they are monitoring only, never an order's state.

When the Redis connection drops (Redis restarted, a network cut), Celery's consumer collects the dead
connection and then closes it before it reconnects. With kombu's Redis transport that close can crash
the worker when a late-ack task was running, so its message was delivered but not yet acknowledged:

1. The collect closes the task channel (the connection's default channel). The channel was waiting on
   its `BRPOP`, so the close first reads that reply, gets the connection error and stops there: the
   channel is not marked closed.
2. The transport then closes every channel it holds, and stops at the first one whose close fails the
   same way (the remote-control or event channel), before it reaches the task channel again. The
   collect then detaches the transport from the connection.
3. The close that follows closes the task channel again. Its poll is over, so this time it goes on to
   restore the unacknowledged message, and building a Redis client for that needs the transport's
   connection settings, which are gone: `AttributeError: 'NoneType' object has no attribute
   'hostname'`. Celery does not count that as a connection error, logs "Unrecoverable error" and the
   worker exits.

The worker then consumes nothing until something restarts it (compose's `restart: unless-stopped`
does; a bare `celery worker` stays down). Here the task channel is closed first, with the reads of the
open sockets bounded as Celery bounds them (5 s) and while the transport is still attached: a close
stopped by the poll's read error is repeated once, so the restore runs with working settings. If
Redis is still down the restore fails with a connection error, which is ignored: the message stays in
Redis's unacked index (restored after the visibility timeout) and its orders are `pending` in the
outbox, which the sweep sends again (CONTRACT.md, "Processing guarantees"). Celery's own clean-up then
finds the channel closed and the reconnect proceeds as usual.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.utils.threads import bound_open_broker_sockets  # type: ignore[attr-defined]  # new in 5.7
from celery.worker.consumer import consumer

_log = logging.getLogger(__name__)

#: Seconds the worker gathers task events before publishing them in one message.
TASK_EVENT_FLUSH_SECONDS = 0.1

#: A close stopped by the read of a pending `BRPOP` reply gets one more try (kombu clears the channel's
#: poll flag whatever the read's outcome, so the second close goes past it).
_CLOSE_ATTEMPTS = 2


def close_channel(channel: Any, errors: tuple[type[BaseException], ...]) -> None:
    """Close a kombu `channel` of a connection that was lost, ignoring `errors` (the transport's
    connection and channel errors); repeat once a close that one of them stopped before the channel
    was marked closed. Raises only what is not in `errors`."""
    for _ in range(_CLOSE_ATTEMPTS):
        if channel.closed:
            return
        try:
            channel.close()
        except errors as close_error:
            _log.debug("closing a channel of a lost connection: %r", close_error)


class Consumer(consumer.Consumer):
    """`celery.worker.consumer.Consumer` that closes its task channel before Celery collects a lost
    connection and flushes task events every `TASK_EVENT_FLUSH_SECONDS` (see the module docstring)."""

    #: When the scheduled flush of task events is due (`time.monotonic()`); a timer lost with a
    #: reconnect's reset of the event loop only delays the next flush until then.
    _event_flush_at = 0.0

    # The stubs give this a callable's return type and omit `hub` and `_flush_events`; Celery's own
    # method returns None.
    def on_send_event_buffered(self) -> None:  # type: ignore[override]
        """Called by the event dispatcher for each buffered event: schedule one flush."""
        hub = getattr(self, "hub", None)
        now = time.monotonic()
        if hub is not None and now >= self._event_flush_at:
            self._event_flush_at = now + TASK_EVENT_FLUSH_SECONDS
            # Celery's own flush (it flushes the event dispatcher, when there is one).
            hub.call_later(TASK_EVENT_FLUSH_SECONDS, self._flush_events)  # type: ignore[attr-defined]

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        task_consumer = getattr(self, "task_consumer", None)
        channel = getattr(task_consumer, "channel", None)
        if channel is not None:
            # Bound the reads of the open sockets first (a frozen Redis never answers), as Celery does.
            timeout = consumer.COLLECT_SOCKET_TIMEOUT  # type: ignore[attr-defined]  # the stubs predate it
            bound_open_broker_sockets(self.connection, timeout)
            # Set in Consumer.__init__ from the broker URL's transport; the stubs omit them.
            close_channel(channel, (*self.connection_errors, *self.channel_errors))  # type: ignore[attr-defined]
        super().on_connection_error_after_connected(exc)
