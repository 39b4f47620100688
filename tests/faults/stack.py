"""A private orderflow stack for the fault suite: its own PostgreSQL cluster and Redis server on spare
ports (the machine's shared services are never touched), migrated by the project's Alembic, an API
(`orderflow serve`), a Celery worker (prefork, 2 pool processes) and Celery beat
(the outbox sweep), all subprocesses of the test run.

Every process is started here and stopped by its pid (or the process group it leads): other test
runs share the machine, so nothing is ever signalled by name.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.celery_workers import private_celery, worker_args
from tests.coverage_env import unmeasured
from tests.private_services import (
    HOST,
    PrivatePostgres,
    PrivateRedis,
    Proc,
    ServiceError,
    children_of,
    launch,
    spare_port,
)

DB_NAME = "orderflow"
JWT_SECRET = "faults-secret-key-of-at-least-32-bytes-long"
ADMIN = ("admin", "admin-password-faults")
#: How often beat sends the outbox sweep, and how long an order may stay pending before the sweep
#: sends it again: small, so that an order whose message was lost is final within seconds.
SWEEP_INTERVAL_SECONDS = 1
SWEEP_AFTER_SECONDS = 3
#: The tests hold a product's row lock for a few seconds to catch a reservation inside its
#: transaction; PostgreSQL's lock_timeout of the stack's sessions must outlast that hold.
LOCK_TIMEOUT_MS = 15000
T = TypeVar("T")


class StackError(ServiceError):
    """A part of the private stack is missing or would not start (a test failure, never a skip)."""


@dataclass
class Worker:
    """A running `celery worker` of the stack: its main process and its node name."""

    proc: Proc
    node: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pool(self) -> list[int]:
        return children_of(self.pid)


@dataclass
class Stack:
    """The private stack; `start()` brings up every part, `close()` stops them by pid."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="orderflow-faults-")))
    api_processes: int = 1
    worker_processes: int = 2

    def __post_init__(self) -> None:
        self.base.chmod(0o755)  # the postgres user must reach its data and socket
        self.pg = PrivatePostgres(self.base, DB_NAME)
        self.redis = PrivateRedis(self.base)
        self.api_port = spare_port()
        self.api: Proc | None = None
        self.worker: Worker | None = None
        self.beat: Proc | None = None
        self.launched: list[Proc] = []  # every process started, stopped by close()
        self._workers_started = 0

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    def env(self) -> dict[str, str]:
        # The stack's processes are not measured by coverage: a whole stack under load for a minute or
        # more, three times over, cost about 19 s of the suite's CPU under the tracer and covered
        # nothing the other tests do not, except by the timing of a fault. The suite proves the
        # invariants, not coverage.
        env = {
            **unmeasured(),
            "DATABASE_URL": self.pg.url,
            "REDIS_URL": self.redis.url,
            "REDIS_KEY_PREFIX": "",
            "JWT_SECRET_KEY": JWT_SECRET,
            "FIRST_ADMIN_USERNAME": ADMIN[0],
            "FIRST_ADMIN_PASSWORD": ADMIN[1],
            "BCRYPT_ROUNDS": "4",
            "ORDER_SWEEP_INTERVAL_SECONDS": str(SWEEP_INTERVAL_SECONDS),
            "ORDER_SWEEP_AFTER_SECONDS": str(SWEEP_AFTER_SECONDS),
            "DB_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS),
            "DATA_DIR": str(self.base),  # files a process keeps (e.g. a worker heartbeat) stay private
            "LOG_LEVEL": "INFO",
            "ENVIRONMENT": "test",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("STORE_REQUIRE_AUTH", None)
        return env

    def log(self, name: str) -> Path:
        return self.base / f"{name}.log"

    def start(self) -> None:
        """Bring up every part; the processes import and start side by side (each takes seconds of
        CPU on a small machine), the API once the schema is migrated."""
        self.pg.init()
        self.redis.start()
        worker = self.launch_worker()
        self.start_beat()
        self.migrate()
        self.start_api()
        self.wait_worker(worker)

    def migrate(self) -> None:
        """The project's Alembic migrations (`core.migrate.upgrade`, what `orderflow migrate` runs), in
        this process (its modules are loaded already), against the private database."""
        from core.migrate import upgrade

        upgrade(self.pg.url)

    def start_api(self) -> None:
        command = [sys.executable, "-m", "orderflow", "serve", "--host", HOST, "--port", str(self.api_port),
                   "--workers", str(self.api_processes), "--no-migrate"]  # fmt: skip
        self.api = launch("api", command, self.env(), self.log("api"))
        self.launched.append(self.api)
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=self.api_url, trust_env=False, timeout=2) as client:
            while time.monotonic() < deadline:
                if not self.api.alive():
                    raise StackError(f"the API exited at start:\n{self.api.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/readyz").status_code == 200:
                        return
                time.sleep(0.2)
        raise StackError(f"the API was not ready within 90 s:\n{self.api.log_tail()}")

    def start_worker(self) -> Worker:
        """A `celery worker` (prefork, `worker_processes` pool processes) on the orders queue; returns
        once it answers a ping and its pool is up."""
        return self.wait_worker(self.launch_worker())

    def launch_worker(self) -> Worker:
        self._workers_started += 1
        node = f"faults{self._workers_started}-{uuid.uuid4().hex[:6]}@localhost"
        command = [sys.executable, *worker_args(self.worker_processes), "-n", node]
        log = self.log(f"worker{self._workers_started}")
        proc = launch("worker", command, self.env(), log)
        self.launched.append(proc)
        return Worker(proc, node)

    def wait_worker(self, worker: Worker, within: float = 90) -> Worker:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not worker.proc.alive():
                raise StackError(f"the worker exited at start:\n{worker.proc.log_tail()}")
            if self.on_broker(lambda app: app.control.ping(destination=[worker.node], timeout=0.5)):
                if len(worker.pool()) >= self.worker_processes:
                    self.worker = worker
                    return worker
                time.sleep(0.1)
        worker.proc.stop()
        raise StackError(f"the worker did not answer a ping within {within:g} s:\n{worker.proc.log_tail()}")

    def start_beat(self) -> None:
        command = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat", "--schedule",
                   str(self.base / "beat-schedule"), "--loglevel", "INFO"]  # fmt: skip
        self.beat = launch("beat", command, self.env(), self.log("beat"))
        self.launched.append(self.beat)

    def active_tasks(self) -> list[dict]:
        """The tasks the current worker runs now (Celery remote control `inspect active`)."""
        node = self.worker.node
        replies = self.on_broker(lambda app: app.control.inspect(destination=[node], timeout=1).active())
        return [task for tasks in (replies or {}).values() for task in tasks]

    def on_broker(self, call: Callable[[Celery], T], attempts: int = 3) -> T:
        """`call(app)` with a Celery app on the private broker, tried again on a connection error:
        kombu keeps redis-py connection pools across apps, and the first use of a connection that a
        Redis restart broke fails once."""
        for attempt in range(1, attempts + 1):
            app = private_celery(self.redis.url)
            try:
                return call(app)
            except (KombuOperationalError, RedisConnectionError, ConnectionError):
                if attempt == attempts:
                    raise
                time.sleep(0.2)
            finally:
                app.close()
        raise AssertionError("unreachable")

    def close(self) -> None:
        for proc in reversed(self.launched):
            proc.stop()
        self.redis.stop()
        with contextlib.suppress(ServiceError, OSError):
            self.pg.stop()

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
