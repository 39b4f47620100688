"""The Celery workers the tests start: one command line for all of them, and a Celery client app on
a private broker (the fault suite's, or a single test's private Redis)."""

from __future__ import annotations

from celery import Celery

from workers.celery_app import ORDERS_QUEUE


def worker_args(
    concurrency: int, queue: str | None = ORDERS_QUEUE, app_module: str = "workers.celery_app"
) -> list[str]:
    """The arguments after `python` of every Celery worker the tests start: `celery -A app_module worker`
    with `concurrency` prefork processes on `queue` (the app's default queues when None), without
    mingle and gossip, which only slow a start-up on a test's private broker. Add `-n <node>`."""
    args = ["-m", "celery", "-A", app_module, "worker", "--pool", "prefork"]
    args += ["--concurrency", str(concurrency)]
    if queue is not None:
        args += ["-Q", queue]
    return [*args, "--loglevel", "INFO", "--without-mingle", "--without-gossip"]


def private_celery(broker_url: str) -> Celery:
    """A Celery app on the private broker, for `send_task` and remote control (ping, inspect)."""
    app = Celery("orderflow-tests", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=ORDERS_QUEUE,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
    )
    return app
