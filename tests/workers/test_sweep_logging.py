"""The outbox sweep is quiet when it has nothing to do (workers/tasks.py, workers/embedded.py): it
logs at DEBUG unless it re-sent orders, and the embedded default's console shows nothing for an idle
sweep (no Celery "received"/"succeeded" lines every ORDER_SWEEP_INTERVAL_SECONDS)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import redis

from core.config import settings
from tests.live_server import embedded_env, live_server
from tests.workers.helpers import make_product, place
from workers.celery_app import ORDERS_QUEUE_KEY
from workers.tasks import sweep_pending_orders


def _sweep_records(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "workers.tasks"]


def test_an_idle_sweep_logs_at_debug_and_one_that_re_sends_logs_at_info(caplog):
    caplog.set_level(logging.DEBUG, logger="workers.tasks")
    assert sweep_pending_orders.run(older_than_seconds=3600) == 0
    assert _sweep_records(caplog) == [(logging.DEBUG, "sweep re-sent 0 pending orders")]

    caplog.clear()
    place([(make_product(5), 1)])
    try:
        assert sweep_pending_orders.run(older_than_seconds=0) == 1
    finally:
        redis.Redis.from_url(settings.redis_url).delete(ORDERS_QUEUE_KEY)
    assert _sweep_records(caplog) == [(logging.INFO, "sweep re-sent 1 pending orders")]


def test_the_embedded_default_console_is_quiet_while_idle(tmp_path: Path):
    env = embedded_env(tmp_path, LOG_LEVEL="INFO", ORDER_SWEEP_INTERVAL_SECONDS="0.2")
    with live_server(tmp_path, env=env) as server:
        started = server.log().count("\n")
        time.sleep(2.5)  # about 12 sweeps
        idle = server.log().splitlines()[started:]
    assert [line for line in idle if "sweep" in line] == [], idle[:4]
