"""The anchors of `python -m bench stack`: what the same machine does with the least possible work
behind the same interfaces, measured in the same run as the stack.

* **bare endpoint** (`create_http_app`): a FastAPI app with one `POST /orders` that validates the
  body with the measured project's own `core.orders.schemas.OrderCreate` and answers 202 with a
  small JSON body: no authentication, no database, no broker. Run by one uvicorn process.
* **Celery no-op** (`celery_worker_main`): a Celery app configured like the project's
  `workers.celery_app.app` (its `conf`: late ack, reject on worker lost, prefetch, JSON, task
  events, broker transport options with the visibility timeout) with one no-op task on its own
  queue and Redis key prefix. The task only counts itself (one Redis INCR; the one that reaches
  the expected total records the time), so the benchmark sees the end without polling a result.

This file runs inside the *measured project's* environment, not the benchmark's: `bench stack`
copies it to a temporary directory as `bench_anchor_app.py`, puts that directory on PYTHONPATH and
starts the project's interpreter with the project directory as the working directory, so `core`
and `workers` are that project's code (an older checkout measures its own model and Celery
configuration). It must therefore import nothing from `bench`, and nothing at module level but the
standard library. No `from __future__ import annotations` either: FastAPI reads the endpoint's
annotations at run time, and `OrderCreate` is imported inside the factory, where a string annotation
could not be resolved (the body would be taken for a query parameter).
"""

import itertools
import os
import time
from typing import Any

MODULE_NAME = "bench_anchor_app"
NOOP_TASK = "bench.anchor.noop"
ENV_PREFIX = "BENCH_ANCHOR_PREFIX"
"""Redis key prefix of the no-op app (broker keys and the counter)."""
ENV_QUEUE = "BENCH_ANCHOR_QUEUE"
ENV_NODE = "BENCH_ANCHOR_NODE"
ENV_CONCURRENCY = "BENCH_ANCHOR_CONCURRENCY"
COUNTER_KEY = "noop:done"
DONE_AT_KEY = "noop:done_at"

# conf keys of the project's app that belong to its own tasks, not to how a task is carried
_NOT_COPIED = frozenset(
    {"beat_schedule", "include", "imports", "task_routes", "task_default_queue", "deprecated_settings"}
)


def create_http_app() -> Any:
    """The bare endpoint (a uvicorn `--factory`)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from core.orders.schemas import OrderCreate

    app = FastAPI(title="bench anchor", openapi_url=None, docs_url=None, redoc_url=None)
    ids = itertools.count(1)

    @app.post("/orders", status_code=202)
    async def create_order(body: OrderCreate) -> JSONResponse:
        return JSONResponse({"id": next(ids), "status": "pending"}, status_code=202)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def anchor_conf(project_conf: dict[str, Any], prefix: str, queue: str) -> dict[str, Any]:
    """The project's Celery settings (`app.conf.changes`) for the no-op app: everything but its
    task routing, includes and beat schedule, with the no-op queue and key prefix."""
    conf = {k: v for k, v in project_conf.items() if k not in _NOT_COPIED}
    transport = dict(conf.get("broker_transport_options") or {})
    transport["global_keyprefix"] = prefix
    conf["broker_transport_options"] = transport
    conf["task_default_queue"] = queue
    return conf


_redis_client: Any = None
_redis_pid: int | None = None


def _redis() -> Any:
    """One Redis client per (pool) process, made after the fork."""
    global _redis_client, _redis_pid
    if _redis_client is None or _redis_pid != os.getpid():
        import redis

        _redis_client = redis.Redis.from_url(os.environ["REDIS_URL"])
        _redis_pid = os.getpid()
    return _redis_client


def create_celery_app() -> Any:
    """The no-op app, configured from the project's `workers.celery_app.app`."""
    from celery import Celery

    from workers.celery_app import app as project_app

    prefix = os.environ[ENV_PREFIX]
    queue = os.environ[ENV_QUEUE]
    app = Celery("bench_anchor", broker=project_app.conf.broker_url)
    app.conf.update(anchor_conf(dict(project_app.conf.changes), prefix, queue))

    @app.task(name=NOOP_TASK)
    def noop(total: int) -> None:
        client = _redis()
        done = client.incr(prefix + COUNTER_KEY)
        if done == total:
            client.set(prefix + DONE_AT_KEY, repr(time.time()))

    return app


def celery_worker_main() -> None:
    """`celery worker` for the no-op app: prefork, consuming only the no-op queue."""
    app = create_celery_app()
    app.worker_main(
        [
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            os.environ.get(ENV_CONCURRENCY, "2"),
            "--loglevel",
            "warning",
            "--hostname",
            os.environ[ENV_NODE],
            "--queues",
            os.environ[ENV_QUEUE],
            "--without-mingle",
            "--without-gossip",
        ]
    )
