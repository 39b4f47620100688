"""A private orderflow stack for the fault suite: its own PostgreSQL cluster and Redis server on spare
ports (the machine's shared services are never touched), migrated by the project's Alembic, an API
(`orderflow serve`), a Celery worker (prefork, 2 pool processes) and Celery beat
(the outbox sweep), all subprocesses of the test run.

Every process is started here and stopped by its pid (or the process group it leads): other test
runs share the machine, so nothing is ever signalled by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import psycopg
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.coverage_env import unmeasured
from workers.celery_app import ORDERS_QUEUE

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
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
STOP_GRACE_SECONDS = 15.0
T = TypeVar("T")


class StackError(AssertionError):
    """A part of the private stack is missing or would not start (a test failure, never a skip)."""


def spare_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def find_binary(name: str, *candidates: str) -> str:
    """The path of `name`: the first existing candidate, else the one on PATH; a clear failure when
    there is none."""
    for candidate in candidates:
        if Path(candidate).is_file():
            return candidate
    found = shutil.which(name)
    if found is None:
        raise StackError(
            f"the fault suite needs `{name}` (looked in {', '.join(candidates) or 'PATH'} and PATH); "
            "install the PostgreSQL 15 server and redis-server packages"
        )
    return found


def _exited(pid: int) -> bool:
    """Whether our child `pid` has exited (it is left unreaped)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie left to an init that does not reap counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """The pids of `pid`'s direct children (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(pid_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


@dataclass
class Proc:
    """A subprocess of the stack, leader of its own process group, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to the leader, then SIGKILL to whatever is left of its group. The leader is reaped
        last, so the group id cannot have been reused when it is signalled; a leader reaped already
        (killed by a test, which then ended its children by pid) is left alone."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not _exited(self.pid):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(10)


def launch(name: str, command: list[str], env: dict[str, str], log_path: Path, **kwargs: object) -> Proc:
    log = log_path.open("ab")
    try:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,  # type: ignore[arg-type]
        )
    finally:
        log.close()
    return Proc(name, process, log_path)


# --- PostgreSQL ------------------------------------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of our own: `initdb` into a temporary directory, `pg_ctl start` on a
    spare port with its socket in that directory. Run as the `postgres` user when the tests run as
    root (PostgreSQL refuses root). Stopped by the postmaster's pid (from `postmaster.pid`)."""

    def __init__(self, base: Path) -> None:
        bin_dir = Path(os.environ.get("FAULTS_PG_BIN", "/usr/lib/postgresql/15/bin"))
        self.initdb = find_binary("initdb", str(bin_dir / "initdb"))
        self.pg_ctl = find_binary("pg_ctl", str(bin_dir / "pg_ctl"))
        self.base = base
        self.data = base / "pgdata"
        self.log_path = base / "postgres.log"
        self.port = spare_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{DB_NAME}"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL the stack's processes use."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{DB_NAME}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        kwargs: dict[str, object] = {"user": self.user} if self.user else {}
        with self.log_path.open("ab") as log:
            done = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                **kwargs,  # type: ignore[arg-type]
            )
        if done.returncode != 0:
            raise StackError(f"{' '.join(args[:2])} exited {done.returncode}; see {self.log_path}")

    def init(self) -> None:
        if self.user:
            shutil.chown(self.base, self.user)
            self.log_path.touch()
            shutil.chown(self.log_path, self.user)
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")  # fmt: skip
        self.start()
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses={HOST} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        if os.environ.get("FAULTS_PG_LOG_STATEMENTS"):  # every write in postgres.log, to debug a failure
            options += " -c log_statement=mod -c log_line_prefix=%m[%p]xid=%x:"
        self._run(self.pg_ctl, "start", "-D", str(self.data), "-w", "-t", "60", "-l",
                  str(self.log_path), "-o", options)  # fmt: skip

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, within: float = 30) -> None:
        """Fast shutdown (SIGINT to the postmaster: sessions are ended, no wait for clients)."""
        pid = self.postmaster_pid()
        if pid is None or not pid_alive(pid):
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not pid_alive(pid) and not (self.data / "postmaster.pid").exists():
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown
        if not wait_gone([pid], 10):
            raise StackError(f"the private PostgreSQL (pid {pid}) did not stop; see {self.log_path}")

    def terminate_backends(self) -> int:
        """`pg_terminate_backend` every other session of the orderflow database; returns how many."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (DB_NAME,),
            ).fetchone()
        return int(row[0]) if row else 0

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)


# --- Redis -----------------------------------------------------------------------------------------


class PrivateRedis:
    """A `redis-server` of our own on a spare port, without persistence (a restart empties it, as a
    cache node that lost its memory would)."""

    def __init__(self, base: Path) -> None:
        self.binary = find_binary("redis-server", "/usr/bin/redis-server")
        self.base = base
        self.port = spare_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly",
                   "no", "--dir", str(self.base), "--daemonize", "no"]  # fmt: skip
        self.proc = launch("redis", command, dict(os.environ), self.base / "redis.log")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise StackError(f"redis-server exited at start:\n{self.proc.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise StackError(f"redis-server did not answer PING within 15 s:\n{self.proc.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (redis-server shuts down; without persistence its data is gone)."""
        if self.proc is not None:
            self.proc.stop()

    def signal(self, signum: int) -> None:
        assert self.proc is not None and self.proc.alive()
        os.kill(self.proc.pid, signum)


# --- the orderflow processes -----------------------------------------------------------------------


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
    app = Celery("orderflow-faults", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=ORDERS_QUEUE,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
    )
    return app


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
        self.pg = PrivatePostgres(self.base)
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
        with contextlib.suppress(StackError, OSError):
            self.pg.stop()

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
