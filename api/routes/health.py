"""`/healthz`, `/readyz`, `/metrics` (CONTRACT.md, "Operations")."""

from __future__ import annotations

import asyncio
import logging

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

CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check_database(request: Request) -> str:
    async with request.app.state.sessionmaker() as session:
        await session.execute(text("SELECT 1"))
    return "ok"


async def _check_redis(request: Request) -> str:
    """Ping Redis; on the embedded default there is none (the broker is in memory)."""
    redis = request.app.state.redis
    if redis is None:
        return "in-memory"
    await redis.ping()
    return "ok"


@router.get(
    "/readyz",
    summary="The database and Redis are reachable",
    responses={503: {"description": "A dependency is unreachable"}},
)
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    for name, check in (("database", _check_database), ("redis", _check_redis)):
        try:
            checks[name] = await asyncio.wait_for(check(request), CHECK_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            log.warning("readiness check %s failed: %s", name, type(exc).__name__)
            checks[name] = "unavailable"
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
        depth = await redis.llen(ORDERS_QUEUE_KEY) if redis is not None else -1
    except Exception:  # noqa: BLE001
        depth = -1
    metrics.queue_depth.set(depth)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
