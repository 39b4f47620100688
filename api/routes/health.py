"""`/healthz`, `/readyz`, `/metrics` (CONTRACT.md, "Operations")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api import metrics
from api.deps import StaffUser
from api.openapi import responses
from core.orders import service as orders
from core.orders.models import OrderStatus
from workers.celery_app import ORDERS_QUEUE_KEY

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)

#: Longest the database check of `/readyz` waits, in seconds (Redis gets `REDIS_TIMEOUT_SECONDS`).
DATABASE_CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check_database(request: Request) -> str:
    """`SELECT 1` on the request engine and a connection of the intake statement pool (PostgreSQL):
    both pools reach the server. A pooled connection the server closed is replaced on the way
    (`core.db.closed_by_server`), so after an outage this says "ok" as soon as the server is back."""
    async with request.app.state.sessionmaker() as session:
        await session.execute(text("SELECT 1"))
    pool = getattr(request.app.state, "statement_pool", None)
    if pool is not None:
        async with pool.connection(timeout=DATABASE_CHECK_TIMEOUT_SECONDS) as conn:
            await conn.execute("SELECT 1")
    return "ok"


async def _check_redis(request: Request) -> str:
    """Ping Redis; on the embedded default there is none (the broker is in memory)."""
    redis = request.app.state.redis
    if redis is None:
        return "in-memory"
    await redis.ping()
    return "ok"


#: Checks given up on by `_checked` and still unwinding (the loop keeps only weak references to tasks).
_abandoned: set[asyncio.Task[str]] = set()


def _forget(task: asyncio.Task[str]) -> None:
    _abandoned.discard(task)
    _ = task.cancelled() or task.exception()  # retrieved, so asyncio does not log it as never retrieved


async def _checked(name: str, check: Coroutine[Any, Any, str], within: float) -> str:
    """`check`'s answer, or "unavailable" when it failed or took longer than `within` seconds.

    A check that runs out of time (or whose request is cancelled) is cancelled and not waited for:
    psycopg answers a cancellation during a query by asking the server to cancel it and waiting for
    the query's end, up to 5 s each, which a frozen server (stopped, or stalled on its storage)
    spends in full."""
    task = asyncio.ensure_future(check)
    try:
        done, _ = await asyncio.wait((task,), timeout=within)
    finally:
        if not task.done():
            task.cancel()
            _abandoned.add(task)
            task.add_done_callback(_forget)
    if not done:
        log.warning("readiness check %s failed: no answer within %g s", name, within)
        return "unavailable"
    exc = task.exception()
    if exc is not None:
        log.warning("readiness check %s failed: %s", name, type(exc).__name__)
        return "unavailable"
    return task.result()


@router.get(
    "/readyz",
    summary="The database and Redis are reachable",
    responses={503: {"description": "A dependency is unreachable"}},
)
async def readyz(request: Request) -> JSONResponse:
    """200 when the database and Redis answer, else 503 naming the one that did not. The checks
    run together; the answer comes within 2 s for the database and `REDIS_TIMEOUT_SECONDS` for
    Redis."""
    database, redis = await asyncio.gather(
        _checked("database", _check_database(request), DATABASE_CHECK_TIMEOUT_SECONDS),
        _checked("redis", _check_redis(request), request.app.state.settings.redis_timeout_seconds),
    )
    checks = {"database": database, "redis": redis}
    ready = "unavailable" not in checks.values()
    return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks}, 200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (managers and admins)",
    response_class=Response,
    responses=responses("staff"),
)
async def prometheus_metrics(request: Request, _user: StaffUser) -> Response:
    """Prometheus text format. Like every route but the health checks, it needs credentials
    (CONTRACT.md, "Users and authentication"): give the scraper a manager account
    (`basic_auth` in the Prometheus scrape config)."""
    try:
        async with request.app.state.sessionmaker() as session:
            counts = await session.run_sync(orders.counts_by_status)
        for status in OrderStatus:
            metrics.orders_by_status.labels(status.value).set(counts.get(status.value, 0))
    except Exception as exc:  # noqa: BLE001 - metrics must answer even when the database does not
        log.warning("order counts unavailable for /metrics: %s", type(exc).__name__)
    redis = request.app.state.redis
    try:
        timeout = request.app.state.settings.redis_timeout_seconds
        depth = await asyncio.wait_for(redis.llen(ORDERS_QUEUE_KEY), timeout) if redis is not None else -1
    except Exception:  # noqa: BLE001 - a sick Redis costs the scrape at most REDIS_TIMEOUT_SECONDS
        depth = -1
    metrics.queue_depth.set(depth)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
