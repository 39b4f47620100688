"""The prefork pool the worker runs (`worker_pool` in workers/celery_app.py): Celery's own, with one
shutdown fault mended.

On a warm shutdown (SIGTERM, what `docker stop` sends) Celery's `AsynPool.flush` drops from its job
cache every job whose start the pool process has not yet acknowledged, on the grounds that the broker
will redeliver it. A job whose payload was already written to a pool process is not dropped there: the
process runs it and reports the result. The main process, whose cache no longer holds the job, stops
reading results once the cache is empty, while the pool process (billiard's
`Worker._ensure_messages_consumed`) waits up to 30 s for its result to be read before it exits. A
busy worker then stayed up until the container's grace period ended and was SIGKILLed.

`AsynPool.flush` here keeps the jobs already handed to a live pool process, so the pool reads their
results and its processes exit as soon as they are done. Nothing else changes: a job not yet written
is still dropped and redelivered (late ack), and a redelivered order is a no-op (its status is
re-checked under a lock).
"""

from __future__ import annotations

from typing import Any

from celery.concurrency import asynpool, prefork


class AsynPool(asynpool.AsynPool):
    """`celery.concurrency.asynpool.AsynPool` whose `flush` keeps the jobs a pool process is running."""

    def flush(self) -> None:
        jobs = self._cache  # type: ignore[attr-defined]  # the stubs omit billiard's job cache
        handed_over = [job for job in jobs.values() if _handed_to_live_process(job)]
        for job in handed_over:
            job.discard = _discard_unless_handed_over(job)
        try:
            super().flush()
        finally:
            for job in handed_over:
                del job.discard  # back to the class's method


def _handed_to_live_process(job: Any) -> bool:
    """True when the job's payload has been (or is being) written to a pool process that is alive,
    and the pool has not yet read that process's acknowledgement of it."""
    process = getattr(job, "_write_to", None)
    return not job._accepted and process is not None and process._is_alive()


def _discard_unless_handed_over(job: Any) -> Any:
    cls_discard = type(job).discard

    def discard() -> None:
        if not _handed_to_live_process(job):
            cls_discard(job)

    return discard


class TaskPool(prefork.TaskPool):
    """Celery's prefork pool with the `AsynPool` above (`worker_pool = "workers.pool:TaskPool"`)."""

    Pool = AsynPool
