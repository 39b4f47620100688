"""Private PostgreSQL and Redis servers for tests that break their dependency (stop, restart, freeze).

The machine's shared services are never stopped or frozen: a test that needs a broken server starts
its own here, on a spare port under a temporary directory, and every process it starts is stopped by
its own pid (or, for PostgreSQL, by `pg_ctl` on its own data directory) when the context ends.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
import redis

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def spare_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A `redis-server` child process (no persistence) on a spare port."""

    def __init__(self, workdir: Path) -> None:
        self.port = spare_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"private redis-server on port {self.port} did not answer within 10 s")

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets open (connects succeed) but answers nothing."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.proc is not None and self.frozen:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.frozen = False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.thaw()
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """A running private Redis; always thawed and killed at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="orderflow-redis-"))
    server = PrivateRedis(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class PrivatePostgres:
    """A PostgreSQL 15 cluster made by `initdb` in a temporary directory, on a spare port, with trust
    authentication for the `postgres` role. Run as the `postgres` system user when the tests run as
    root (PostgreSQL refuses to run as root)."""

    def __init__(self, workdir: Path) -> None:
        self.port = spare_port()
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.logfile = workdir / "postgres.log"
        self._as_postgres = os.geteuid() == 0

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def init(self) -> None:
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.workdir} "
            "-c fsync=off -c max_connections=60"
        )
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop` of this cluster (its backends are terminated: clients see their connections
        closed)."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.url(driver="postgresql"), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private cluster; stopped (immediate mode) and removed at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="orderflow-pg-"))
    cluster = PrivatePostgres(workdir)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running:
            with suppress(subprocess.SubprocessError):
                cluster.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)
