"""Private PostgreSQL and Redis servers, and the processes the tests start beside them, for tests that
break a dependency (stop, restart, freeze, kill).

The machine's shared services are never stopped or frozen: a test that needs a broken server starts
its own here, on a spare port under a temporary directory. Every process is started here and stopped
by its pid (or the process group it leads, or for PostgreSQL the postmaster's pid from its data
directory): other test runs share the machine, so nothing is ever signalled by name. A server that is
missing or will not start is a test failure (`ServiceError`), never a skip. The fault suite's stack
(`tests/faults/stack.py`) and the tests of a single fault (`tests/api/test_redis_frozen.py`,
`tests/api/test_db_reconnect.py`, `tests/workers/test_consumer.py`) use the same classes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
STOP_GRACE_SECONDS = 15.0


class ServiceError(AssertionError):
    """A private server or process is missing or would not start or stop (a test failure, never a
    skip)."""


def spare_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
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
        raise ServiceError(
            f"the test needs `{name}` (looked in {', '.join(candidates) or 'PATH'} and PATH); "
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
    """Whether every one of `pids` has ended within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(pid_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


@dataclass
class Proc:
    """A subprocess the tests started, leader of its own process group, with its log file."""

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
        """SIGCONT and SIGTERM to the leader, then SIGKILL to whatever is left of its group. The
        leader is reaped last, so the group id cannot have been reused when it is signalled; a leader
        reaped already (killed by a test, which then ended its children by pid) is left alone."""
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
    """`command` started in the project's root in a session of its own, stdout and stderr appended
    to `log_path`."""
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


class PrivatePostgres:
    """A PostgreSQL cluster of our own: `initdb` into `base/pgdata`, `pg_ctl start` on a spare port
    with its socket in `base`, trust authentication for the `postgres` role, and one database,
    `database`. Durability is off (`fsync`, `synchronous_commit`, `full_page_writes`): the cluster is
    thrown away at the end. Run as the `postgres` user when the tests run as root (PostgreSQL refuses
    root). `FAULTS_PG_BIN` names another server's bin directory (default PostgreSQL 15's)."""

    def __init__(self, base: Path, database: str = "orderflow") -> None:
        bin_dir = Path(os.environ.get("FAULTS_PG_BIN", "/usr/lib/postgresql/15/bin"))
        self.initdb = find_binary("initdb", str(bin_dir / "initdb"))
        self.pg_ctl = find_binary("pg_ctl", str(bin_dir / "pg_ctl"))
        self.base = base
        self.database = database
        self.data = base / "pgdata"
        self.log_path = base / "postgres.log"
        self.port = spare_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def admin_dsn(self) -> str:
        """libpq DSN of the `postgres` database."""
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        """libpq DSN of `database`."""
        return f"postgresql://postgres@{HOST}:{self.port}/{self.database}"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of `database`, as the project's settings take it (`DATABASE_URL`)."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{self.database}"

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
            raise ServiceError(f"{' '.join(args[:2])} exited {done.returncode}; see {self.log_path}")

    def init(self) -> None:
        """`initdb`, start the cluster and create `database`."""
        if self.user:
            shutil.chown(self.base, self.user)
            self.log_path.touch()
            shutil.chown(self.log_path, self.user)
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")  # fmt: skip
        self.start()
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')

    def start(self) -> None:
        """`pg_ctl start` on the same port; returns once the cluster accepts connections."""
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
        """Fast shutdown (SIGINT to the postmaster: sessions are ended, clients see their connections
        closed), immediate shutdown (SIGQUIT) after `within` seconds; nothing when it is not running."""
        pid = self.postmaster_pid()
        if pid is None or not pid_alive(pid):
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not pid_alive(pid) and not (self.data / "postmaster.pid").exists():
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGQUIT)
        if not wait_gone([pid], 10):
            raise ServiceError(f"the private PostgreSQL (pid {pid}) did not stop; see {self.log_path}")

    def freeze(self) -> list[int]:
        """SIGSTOP to the postmaster and every process it started: the server keeps its sockets open
        (connects and sends succeed) and answers nothing, as one stalled on its storage would.
        Returns the pids, for `thaw`."""
        pid = self.postmaster_pid()
        assert pid is not None and pid_alive(pid), "the private PostgreSQL is not running"
        pids = [pid, *children_of(pid)]
        for each in pids:
            os.kill(each, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int]) -> None:
        """SIGCONT to what `freeze` stopped (the postmaster last, so its children run first)."""
        for each in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGCONT)

    def terminate_backends(self) -> int:
        """`pg_terminate_backend` every other session of `database`; returns how many."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,),
            ).fetchone()
        return int(row[0]) if row else 0

    def connect(self) -> psycopg.Connection:
        """An autocommit connection to `database`."""
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)


class PrivateRedis:
    """A `redis-server` of our own on a spare port, without persistence (a restart empties it, as a
    cache node that lost its memory would). `start()` again after `stop()` uses the same port."""

    def __init__(self, base: Path) -> None:
        self.binary = find_binary("redis-server", "/usr/bin/redis-server")
        self.base = base
        self.port = spare_port()
        self.proc: Proc | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start the server; returns once it answers PING."""
        command = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly",
                   "no", "--dir", str(self.base), "--daemonize", "no"]  # fmt: skip
        self.proc = launch("redis", command, dict(os.environ), self.base / "redis.log")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise ServiceError(f"redis-server exited at start:\n{self.proc.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise ServiceError(f"redis-server did not answer PING within 15 s:\n{self.proc.log_tail()}")

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets open (connects succeed) but answers nothing."""
        assert self.proc is not None and self.proc.alive()
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after `freeze()`; nothing otherwise."""
        if self.proc is not None and self.frozen:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.frozen = False

    def stop(self) -> None:
        """SIGTERM (thawed first): the server shuts down and, without persistence, its data is gone."""
        if self.proc is not None:
            self.proc.stop()
            self.frozen = False


@contextlib.contextmanager
def private_postgres(database: str = "orderflow") -> Iterator[PrivatePostgres]:
    """A running private cluster with `database`; stopped and removed at the end."""
    base = Path(tempfile.mkdtemp(prefix="orderflow-pg-"))
    base.chmod(0o755)  # the postgres user must reach its data and socket
    cluster = PrivatePostgres(base, database)
    try:
        cluster.init()
        yield cluster
    finally:
        with contextlib.suppress(ServiceError, OSError):
            cluster.stop(within=10)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """A running private Redis; thawed, stopped and removed at the end."""
    base = Path(tempfile.mkdtemp(prefix="orderflow-redis-"))
    server = PrivateRedis(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
