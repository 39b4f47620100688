"""`python -m bench stack`: start the whole stack from a project directory, measure it with wrk, and
measure its anchors (a bare FastAPI endpoint, a Celery no-op task) in the same run.

The stack is started from `--project DIR` with `DIR/.venv/bin/python` and the working directory DIR,
so the same benchmark code measures an older checkout and the current one back to back. It only
uses what every version has: the public HTTP API (`/healthz`, `/login`, `/products`, `/orders`), the
CLI (`migrate`), the Celery app module `workers.celery_app`, and the tables `orders`, `products` and
`stock_movements` (never a task name of the project).

Phases, in order (docs/benchmark.md, "Whole stack"):

1. a fresh database `orderflow_bench_<pid>`, migrated with `python -m orderflow migrate` (`python -m
   core.cli migrate` in a checkout from before the CLI left `core`; `cli_module`);
2. anchors: the bare endpoint under wrk, then the Celery no-op (M tasks end to end);
3. the stack: uvicorn (`--api-processes`), one Celery worker (`--worker-processes`); products;
4. closed loop with wrk (warm-up, then the measured window, until every order of the window is
   final), with the CPU of every process kind from /proc;
5. optional py-spy profile, the hot-product run, the open model (plain, then `Prefer: wait=5`),
   the optional worker sweep;
6. the stock checks in SQL; the table and the JSON.

Everything started is stopped (SIGTERM to the leader, SIGKILL to its process group after a grace)
and the database dropped in a `finally`, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import uvloop
from rich.console import Console

from bench import anchors, procstat
from bench.client import BenchError, Target, create_product, login
from bench.openloop import TRANSPORT_ERRORS, OpenLoopClient, request_bytes
from bench.phases import PRODUCT_PRICE, Product, Run, closed_loop, probe_order, setup_products
from bench.report import machine_info, plot_sweep, timestamp
from bench.scratch import celery_worker_command
from bench.stats import count_by, percentile
from bench.workers import wait_child_exit
from bench.wrk import WrkResult, lua_script, ratio, run_wrk, wrk_command
from core.orders.states import SETTLED_STATUSES, STOCK_HOLDING_STATUSES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_HOST = "postgres@127.0.0.1:5432"
REDIS_BASE = "redis://127.0.0.1:6379"
HOST = "127.0.0.1"
STOP_GRACE_SECONDS = 15.0
MAIN_KINDS = ("api", "worker", "postgres", "redis")
"""The kinds whose CPU per order is summed into `total`."""
STOCK = 10**7
WRK_TIMEOUT_SECONDS = 30
SETTLE_POLL_SECONDS = 0.2
ADMIN_USER = "benchadmin"


# --- pure figures ------------------------------------------------------------------------------


def per_unit_ms(cpu_ms: Mapping[str, float], units: int, kinds: Sequence[str] = MAIN_KINDS) -> dict[str, Any]:
    """CPU ms per unit (order, request, task) of every kind, and `total` over `kinds` (those that
    are present). None everywhere when there are no units."""
    figures: dict[str, Any] = {}
    for kind, value in cpu_ms.items():
        figures[kind] = None if units <= 0 else round(value / units, 3)
    present = [cpu_ms[k] for k in kinds if k in cpu_ms]
    figures["total"] = None if units <= 0 or not present else round(math.fsum(present) / units, 3)
    return figures


def confirmed_rate(processed: int, window_start: float, last_processed: float | None) -> float | None:
    """Orders that left pending / (last processed_at - window start), POSIX seconds."""
    if last_processed is None or processed <= 0 or last_processed <= window_start:
        return None
    return round(processed / (last_processed - window_start), 2)


def ms_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """count, p50/p90/p99/max in ms of durations in seconds."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "count": len(seconds),
        "p50_ms": ms(percentile(seconds, 50)),
        "p90_ms": ms(percentile(seconds, 90)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds)) if seconds else None,
    }


def poisson_schedule(rate: float, duration: float, rng: random.Random, cap: int) -> list[float]:
    """Arrival offsets (s) of a Poisson process of `rate`/s within [0, duration), at most `cap`."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    offsets: list[float] = []
    t = rng.expovariate(rate)
    while t < duration and len(offsets) < cap:
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


def parse_counts(text: str, name: str, low: int = 1, high: int = 128) -> list[int]:
    """'1,2,4' -> [1, 2, 4]: distinct integers within [low, high]. ValueError with a sentence."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"{name} must be comma-separated integers, e.g. 1,2,4") from exc
    if not values or not all(low <= v <= high for v in values):
        raise ValueError(f"{name}: counts within {low}..{high}")
    if len(values) != len(set(values)):
        raise ValueError(f"{name}: counts must be distinct")
    return values


def frame_function(frame: str) -> str:
    """A py-spy frame `name (path/file.py:123)` without its line number: `name (path/file.py)`."""
    if frame.endswith(")") and ":" in frame:
        head, _, line = frame[:-1].rpartition(":")
        if line.isdigit():
            return head + ")"
    return frame


def summarize_collapsed(text: str, top: int = 25) -> dict[str, Any]:
    """Top functions of py-spy's raw (collapsed) output, `frame;frame;... count` per line: by own
    samples (the innermost frame) and by total samples (in the stack at all, counted once per
    stack)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_function(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count

    def ranked(counts: dict[str, int]) -> list[dict[str, Any]]:
        best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return [
            {"function": f, "samples": n, "share": round(n / samples, 4) if samples else None}
            for f, n in best
        ]

    return {"samples": samples, "own": ranked(own), "total": ranked(total)}


def profile_text(title: str, summary: Mapping[str, Any]) -> str:
    lines = [f"{title}: {summary['samples']:,} samples", ""]
    for key, label in (
        ("own", "own samples (innermost frame)"),
        ("total", "total samples (anywhere in stack)"),
    ):
        lines.append(f"top {len(summary[key])} by {label}:")
        for row in summary[key]:
            share = "" if row["share"] is None else f"{row['share'] * 100:5.1f}%"
            lines.append(f"  {row['samples']:7,} {share}  {row['function']}")
        lines.append("")
    return "\n".join(lines)


def stock_checks(
    products: Sequence[Mapping[str, Any]],
    regular_confirmed: int,
    hot: Mapping[str, Any] | None,
    pending: int,
) -> list[dict[str, Any]]:
    """The invariants at the end of a run, from SQL.

    `products`: {id, initial, stock, ledger, hot} per product of the run; `regular_confirmed`: orders
    holding stock that are not the hot run's (every order of the run is one line of quantity 1, so
    the units of the regular products that left equal that count); `hot`: {product_id, confirmed}
    of the hot run (None without one); `pending`: orders still pending in the database.
    """
    regular = [p for p in products if not p.get("hot")]
    left = sum(p["initial"] - p["stock"] for p in regular)
    ledger_bad = [p["id"] for p in products if p["ledger"] != p["stock"]]
    negative = [p["id"] for p in products if p["stock"] < 0]
    checks = [
        {"name": "all_orders_final", "passed": pending == 0, "detail": f"{pending} order(s) pending"},
        {
            "name": "stock_accounting",
            "passed": left == regular_confirmed,
            "detail": f"{len(regular)} products: initial - stock = {left}, "
            f"confirmed orders = {regular_confirmed}",
        },
        {
            "name": "ledger_matches_stock",
            "passed": not ledger_bad,
            "detail": "sum(stock_movements.delta) == stock for "
            f"{len(products) - len(ledger_bad)}/{len(products)}"
            + (f"; failing: {ledger_bad[:10]}" if ledger_bad else ""),
        },
        {
            "name": "stock_non_negative",
            "passed": not negative,
            "detail": "stock >= 0" + (f"; failing: {negative[:10]}" if negative else ""),
        },
    ]
    if hot is not None:
        row = next((p for p in products if p["id"] == hot["product_id"]), None)
        ok = row is not None and row["initial"] - hot["confirmed"] == row["stock"]
        detail = (
            "hot product missing"
            if row is None
            else f"{row['initial']} - {hot['confirmed']} confirmed == stock {row['stock']}"
        )
        checks.append({"name": "hot_no_oversell", "passed": ok, "detail": detail})
    return checks


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Managed:
    """A process the benchmark started, in its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


class Processes:
    """Every process started by the run; `stop_all` ends them (also those already reaped)."""

    def __init__(self) -> None:
        self.running: list[Managed] = []
        self.other: list[subprocess.Popen[bytes]] = []
        """Short-lived children (wrk, py-spy) to kill on an interrupt."""

    def start(
        self, name: str, command: list[str], *, env: dict[str, str], cwd: Path, log_path: Path
    ) -> Managed:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("ab")
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        managed = Managed(name, process, log_path, log)
        self.running.append(managed)
        return managed

    def stop(self, managed: Managed, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM to the leader, SIGKILL to the group after `grace` s, then SIGKILL to the group
        anyway (children that outlived the leader); the leader is reaped last, so its process group
        id cannot have been reused when the group is signalled."""
        process = managed.process
        try:
            if process.returncode is None and _unreaped(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                if not wait_child_exit(process.pid, grace):
                    _kill_group(process.pid)
                    wait_child_exit(process.pid, 5.0)
                _kill_group(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5.0)
            return process.returncode
        finally:
            if managed in self.running:
                self.running.remove(managed)
            if managed.log is not None:
                managed.log.close()
                managed.log = None

    def stop_all(self) -> None:
        for process in self.other:
            if process.returncode is None and _unreaped(process.pid):
                _kill_group(process.pid)
                with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                    process.wait(5.0)
        self.other.clear()
        for managed in list(reversed(self.running)):
            self.stop(managed)


def _unreaped(pid: int) -> bool:
    """Whether `pid` is our child and not reaped yet (running or a zombie)."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def cli_module(project: Path) -> str:
    """The module that runs the `orderflow` command in the checkout `project`: `orderflow` when it has
    `orderflow/cli.py`, else `core.cli` (where the command lived before it left `core`), so that an
    older commit can still be measured as the "before" run."""
    return "orderflow" if (project / "orderflow" / "cli.py").is_file() else "core.cli"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, within: float, alive: Callable[[], bool], what: str) -> float:
    """GET `url` until it answers 200 (no proxies); returns the seconds it took."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.monotonic()
    deadline = started + within
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"{what} exited before answering {url}")
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise BenchError(f"{what} did not answer {url} within {within:g} s")


# --- database ----------------------------------------------------------------------------------


class Database:
    """The run's own database: created fresh, read with psycopg (autocommit), dropped at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sqlalchemy_url = f"postgresql+psycopg://{PG_HOST}/{name}"
        self.url = f"postgresql://{PG_HOST}/{name}"
        self.conn: Any = None
        self.created = False

    def create(self) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.name}"')
        self.created = True

    def connect(self) -> None:
        import psycopg

        self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)

    def drop(self) -> None:
        import psycopg

        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        if self.created:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False

    def autovacuum(self) -> bool:
        """Whether the cluster runs autovacuum (the CI machines' PostgreSQL does not)."""
        return str(self.one("SHOW autovacuum")[0]) == "on"

    def analyze(self) -> float:
        """ANALYZE the run's database; returns the seconds it took."""
        started = time.monotonic()
        self.conn.execute("ANALYZE")
        return time.monotonic() - started

    def one(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row

    def max_order_id(self) -> int:
        return int(self.one("SELECT coalesce(max(id), 0) FROM orders")[0])

    def pending(self) -> int:
        return int(self.one("SELECT count(*) FROM orders WHERE status = 'pending'")[0])

    def wait_settled(self, within: float) -> tuple[bool, int]:
        """Poll until no order is pending (at most `within` s); (settled, pending left)."""
        deadline = time.monotonic() + within
        while True:
            left = self.pending()
            if left == 0 or time.monotonic() >= deadline:
                return left == 0, left
            time.sleep(SETTLE_POLL_SECONDS)

    def window(self, after_id: int, upto_id: int | None = None) -> dict[str, Any]:
        """Orders with after_id < id (<= upto_id): count, by status, first created, last processed
        (POSIX seconds)."""
        bound = "" if upto_id is None else " AND id <= %s"
        params: list[Any] = [after_id] + ([] if upto_id is None else [upto_id])
        rows = self.conn.execute(
            "SELECT status, count(*), extract(epoch FROM min(created_at)),"
            " extract(epoch FROM max(processed_at))"
            f" FROM orders WHERE id > %s{bound} GROUP BY status",
            params,
        ).fetchall()
        statuses = {str(r[0]): int(r[1]) for r in rows}
        firsts = [float(r[2]) for r in rows if r[2] is not None]
        lasts = [float(r[3]) for r in rows if r[3] is not None and r[0] in SETTLED_STATUSES]
        return {
            "orders": sum(statuses.values()),
            "statuses": dict(sorted(statuses.items())),
            "processed": sum(n for s, n in statuses.items() if s in SETTLED_STATUSES),
            "confirmed": sum(n for s, n in statuses.items() if s in STOCK_HOLDING_STATUSES),
            "first_created": min(firsts) if firsts else None,
            "last_processed": max(lasts) if lasts else None,
        }

    def order_times(self, ids: Sequence[int]) -> dict[int, tuple[str, float | None]]:
        """id -> (status, processed_at - created_at in seconds, None while pending)."""
        rows = self.conn.execute(
            "SELECT id, status, extract(epoch FROM processed_at - created_at) FROM orders WHERE id = ANY(%s)",
            [list(ids)],
        ).fetchall()
        return {int(r[0]): (str(r[1]), None if r[2] is None else float(r[2])) for r in rows}

    def products(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT p.id, p.stock, coalesce((SELECT sum(m.delta) FROM stock_movements m"
            " WHERE m.product_id = p.id), 0) FROM products p ORDER BY p.id"
        ).fetchall()
        return [{"id": int(r[0]), "stock": int(r[1]), "ledger": int(r[2])} for r in rows]

    def confirmed_between(self, ranges: Sequence[tuple[int, int]], inside: bool) -> int:
        """Orders holding stock whose id is inside (or outside) every (after, upto] range."""
        clause = " OR ".join("(id > %s AND id <= %s)" for _ in ranges) or "false"
        where = f"({clause})" if inside else f"NOT ({clause})"
        params = [v for r in ranges for v in r]
        return int(
            self.one(
                f"SELECT count(*) FROM orders WHERE status IN ('confirmed', 'completed') AND {where}", params
            )[0]
        )

    def backend_pids(self) -> list[int]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", [self.name]
        ).fetchall()
        return [int(r[0]) for r in rows]

    def postmaster_pid(self) -> int | None:
        """The parent of this connection's backend: the postmaster (same host)."""
        backend = int(self.one("SELECT pg_backend_pid()")[0])
        stat = procstat.read_pid_stat(backend)
        return None if stat is None else stat.ppid


# --- CPU ---------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    machine: procstat.MachineCpu
    trees: dict[str, dict[procstat.ProcessKey, int]]
    own: dict[str, dict[procstat.ProcessKey, int]]


@dataclass
class CpuMeter:
    """Snapshots of the CPU time of process trees (`roots`, kind -> root pids), of the PostgreSQL
    backends of the run's database (`backends`, own ticks: one that vanishes is lost), of this
    process (`bench`) and of the machine."""

    roots: dict[str, list[int]]
    backends: Callable[[], list[int]] | None = None

    def snapshot(self) -> Snapshot:
        stats = procstat.read_all()
        trees = {kind: procstat.tree_totals(pids, stats) for kind, pids in self.roots.items()}
        own = {"bench": procstat.pid_totals([os.getpid()], stats)}
        if self.backends is not None:
            own["postgres_run_backends"] = procstat.pid_totals(self.backends(), stats)
        return Snapshot(time.time(), procstat.read_machine(), trees, own)

    @staticmethod
    def delta(start: Snapshot, end: Snapshot) -> dict[str, Any]:
        kinds: dict[str, Any] = {}
        for kind in end.trees:
            kinds[kind] = procstat.tree_delta(start.trees.get(kind, {}), end.trees[kind]).as_dict()
        for kind in end.own:
            kinds[kind] = procstat.own_delta(start.own.get(kind, {}), end.own[kind]).as_dict()
        return {
            "window_s": round(end.at - start.at, 3),
            "kinds": kinds,
            "machine": procstat.machine_delta(start.machine, end.machine, os.cpu_count() or 1),
        }


def cpu_ms_of(cpu: Mapping[str, Any]) -> dict[str, float]:
    return {kind: float(v["cpu_ms"]) for kind, v in cpu["kinds"].items()}


def redis_pid(client: Any) -> int | None:
    with contextlib.suppress(Exception):
        return int(client.info("server")["process_id"])
    return None


# --- the run -----------------------------------------------------------------------------------


@dataclass
class StackRun:
    args: argparse.Namespace
    console: Console
    results: dict[str, Any]
    procs: Processes = field(default_factory=Processes)
    pid: int = field(default_factory=os.getpid)

    def __post_init__(self) -> None:
        self.project: Path = self.args.project.resolve()
        self.python = self.project / ".venv" / "bin" / "python"
        # Absolute: the processes run in the project directory, which may not be this one.
        self.out: Path = self.args.out.resolve()
        self.logs = self.out.parent / f"{self.out.stem}-logs"
        self.db = Database(f"orderflow_bench_{self.pid}")
        self.redis_url = f"{REDIS_BASE}/{self.args.redis_db}"
        self.prefix = f"bench{self.pid}:"
        self.anchor_prefix = f"bench{self.pid}noop:"
        self.password = secrets.token_urlsafe(18)
        self.jwt_secret = secrets.token_urlsafe(36)  # 48 characters
        self.seed = self.args.seed if self.args.seed is not None else random.randrange(1 << 30)
        self.api: Managed | None = None
        self.worker: Managed | None = None
        self.api_url = ""
        self.products: list[Product] = []
        self.hot_product: Product | None = None
        self.hot_ranges: list[tuple[int, int]] = []
        self.redis: Any = None
        self.postmaster: int | None = None
        self.redis_server: int | None = None

    # -- environment

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of every process of the stack: the benchmark's, minus anything naming
        another virtualenv or settings, plus the run's settings."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT")
            and not k.startswith(
                ("DATABASE_", "REDIS_", "ORDER_", "STORE_", "JWT_", "FIRST_ADMIN_", "WORKER_")
            )
        }
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            {
                "DATABASE_URL": self.db.sqlalchemy_url,
                "REDIS_URL": self.redis_url,
                "REDIS_KEY_PREFIX": self.prefix,
                "JWT_SECRET_KEY": self.jwt_secret,
                "FIRST_ADMIN_USERNAME": ADMIN_USER,
                "FIRST_ADMIN_PASSWORD": self.password,
                "STORE_RATE_LIMIT": "1000000/hour",
                "LOG_LEVEL": "WARNING",
                "BCRYPT_ROUNDS": "4",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if extra:
            env.update(extra)
        return env

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def note(self, text: str) -> None:
        self.results["notes"].append(text)
        self.console.print(f"[yellow]note:[/] {text}")

    # -- setup and teardown

    def prepare(self) -> None:
        import redis

        if not self.python.exists():
            raise BenchError(f"{self.python} does not exist: is {self.project} a synced checkout?")
        if shutil.which("wrk") is None:
            raise BenchError("wrk is not installed (apt-get install wrk)")
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results["project"] = project_info(self.project, self.python)
        self.redis = redis.Redis.from_url(self.redis_url, socket_timeout=10)
        self.redis.ping()
        self.redis_server = redis_pid(self.redis)
        self.console.print(f"[bold]database {self.db.name}[/] (migrating with {self.python})")
        self.db.create()
        self.db.connect()
        self.postmaster = self.db.postmaster_pid()
        if self.postmaster is None:
            self.note("the PostgreSQL server's processes are not visible here: no 'postgres' CPU figures")
        if self.redis_server is None:
            self.note("Redis did not report its process id: no 'redis' CPU figures")
        started = time.monotonic()
        code = self._run_once(
            "migrate",
            [str(self.python), "-m", cli_module(self.project), "migrate"],
            within=self.args.ready_timeout * 2,
        )
        if code != 0:
            raise BenchError(f"migrate exited with {code} (log: {self.log('migrate')})")
        self.results["stack"].update(
            {
                "database": self.db.name,
                "redis": self.redis_url,
                "redis_key_prefix": self.prefix,
                "postmaster_pid": self.postmaster,
                "redis_pid": self.redis_server,
                "migrate_seconds": round(time.monotonic() - started, 2),
                "logs": str(self.logs),
                "autovacuum": self.db.autovacuum(),
            }
        )

    def autoanalyze(self, label: str) -> None:
        """ANALYZE the run's database before a measured phase when the cluster runs without
        autovacuum (the CI machines' PostgreSQL: `autovacuum = off`). A production cluster's
        autovacuum analyzes each table once a tenth of it changed; without it the tables of the
        run's fresh database never get statistics and the planner, guessing, reads the whole of
        `orders` and `order_lines` for each batch of the workers, a cost that grows with every order
        stored and that no deployment pays. What it took is kept in `stack.analyze`."""
        if self.results["stack"].get("autovacuum", True):
            return
        seconds = self.db.analyze()
        runs = self.results["stack"].setdefault("analyze", [])
        runs.append({"before": label, "seconds": round(seconds, 3)})

    def _run_once(self, name: str, command: list[str], within: float) -> int:
        managed = self.procs.start(name, command, env=self.env(), cwd=self.project, log_path=self.log(name))
        if not wait_child_exit(managed.pid, within):
            self.procs.stop(managed, grace=2)
            raise BenchError(f"{name} did not finish within {within:g} s (log: {managed.log_path})")
        code = self.procs.stop(managed, grace=0)
        return -1 if code is None else code

    def close(self) -> None:
        """Stop everything, drop the database and the run's Redis keys (each step on its own)."""
        self.procs.stop_all()
        try:
            self.db.drop()
        except Exception as exc:  # noqa: BLE001 - report, keep cleaning
            self.console.print(f"[red]could not drop database {self.db.name}:[/] {exc}")
        if self.redis is not None:
            with contextlib.suppress(Exception):
                for prefix in (self.prefix, self.anchor_prefix):
                    keys = list(self.redis.scan_iter(match=f"{prefix}*", count=1000))[:100_000]
                    for i in range(0, len(keys), 1000):
                        self.redis.delete(*keys[i : i + 1000])
                self.redis.close()

    # -- the stack

    def start_api(self) -> None:
        port = free_port()
        self.api_url = f"http://{HOST}:{port}"
        command = [
            str(self.python),
            "-m",
            "uvicorn",
            "api.main:app",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(self.args.api_processes),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        self.api = self.procs.start(
            "api", command, env=self.env(), cwd=self.project, log_path=self.log("api")
        )
        api = self.api
        seconds = wait_http(f"{self.api_url}/healthz", self.args.ready_timeout, api.alive, "the API")
        self.results["stack"].update(
            {"api_url": self.api_url, "api_pid": api.pid, "api_ready_seconds": round(seconds, 2)}
        )

    def start_worker(self, processes: int) -> float:
        if self.worker is not None:
            self.procs.stop(self.worker)
            self.worker = None
        node = f"bench-{self.pid}@localhost"
        command = celery_worker_command(self.python, processes, "warning", node)
        self.worker = self.procs.start(
            f"worker-{processes}",
            command,
            env=self.env(),
            cwd=self.project,
            log_path=self.log(f"worker-{processes}"),
        )
        return ping_worker(self.redis_url, self.prefix, node, self.args.ready_timeout, self.worker)

    def token(self) -> str:
        return asyncio.run(_login(self.api_url, ADMIN_USER, self.password))

    def target(self, token: str) -> Target:
        return Target(url=self.api_url, timeout=WRK_TIMEOUT_SECONDS, token=token)

    def meter(self) -> CpuMeter:
        assert self.api is not None and self.worker is not None
        roots: dict[str, list[int]] = {"api": [self.api.pid], "worker": [self.worker.pid]}
        if self.postmaster:
            roots["postgres"] = [self.postmaster]
        if self.redis_server:
            roots["redis"] = [self.redis_server]
        return CpuMeter(roots, self.db.backend_pids)

    # -- wrk

    def wrk(self, url: str, script: Path, duration: int, label: str) -> WrkResult:
        command = wrk_command(
            url,
            script,
            threads=self.args.threads,
            connections=self.args.concurrency,
            duration=duration,
            timeout=WRK_TIMEOUT_SECONDS,
            seed=self.seed,
        )
        result, code = run_wrk(command, self.log(f"wrk-{label}"), duration + 60, self.procs.other.append)
        if code != 0:
            self.note(f"wrk ({label}) exited with code {code}")
        return result

    def script(self, name: str, product_ids: Sequence[int], token: str | None) -> Path:
        path = self.logs / f"{name}.lua"
        path.write_text(lua_script(product_ids, token))
        return path

    def closed(self, label: str, duration: int, warmup: int, profile: int = 0) -> dict[str, Any]:
        """Warm-up (not counted; then every order settles), then the measured window: wrk for
        `duration` s, then until every order of the window is final. With `profile`, py-spy records
        one API child and one worker pool child meanwhile (and the figures are only for reference)."""
        token = self.token()
        script = self.script(f"orders-{label}", [p.id for p in self.products], token)
        self.console.print(
            f"[bold]closed loop {label}[/]: wrk C={self.args.concurrency}, {warmup} s + {duration} s"
        )
        if warmup:
            self.wrk(self.api_url, script, warmup, f"{label}-warmup")
            time.sleep(0.3)
            settled, left = self.db.wait_settled(self.args.settle_timeout)
            if not settled:
                self.note(f"{label}: {left} warm-up order(s) still pending after --settle-timeout")
        self.autoanalyze(label)
        meter = self.meter()
        marker = self.db.max_order_id()
        spies = self.start_profilers(profile) if profile else []
        start = meter.snapshot()
        result = self.wrk(self.api_url, script, duration, label)
        time.sleep(0.3)  # requests wrk cut off may still create their orders
        settled, left = self.db.wait_settled(self.args.settle_timeout)
        end = meter.snapshot()
        cpu = CpuMeter.delta(start, end)
        if result.cpu_ms is not None:
            cpu["kinds"]["loadgen"] = {"cpu_ms": round(result.cpu_ms, 1), "processes_start": 1}
        window = self.db.window(marker)
        figures = closed_figures(result, window, start.at, cpu, settled)
        if spies:
            figures["profile"] = self.finish_profilers(spies)
        if not settled:
            self.note(f"{label}: {left} order(s) still pending after --settle-timeout")
        return figures

    # -- profile

    def start_profilers(self, seconds: int) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
        assert self.api is not None and self.worker is not None
        stats = procstat.read_all()
        api_children = [
            p for p in procstat.children_of(self.api.pid, stats) if "spawn_main" in procstat.cmdline(p)
        ] or [self.api.pid]
        worker_children = procstat.children_of(self.worker.pid, stats) or [self.worker.pid]
        py_spy = Path(sys.executable).parent / "py-spy"
        spies = []
        for name, pid in (("api", api_children[0]), ("worker", worker_children[0])):
            raw = self.logs / f"profile-{name}.raw.txt"
            command = [
                str(py_spy if py_spy.exists() else "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "100",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(raw),
            ]
            log = self.log(f"py-spy-{name}").open("wb")
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            self.procs.other.append(process)
            spies.append((name, process, raw))
        return spies

    def finish_profilers(self, spies: list[tuple[str, subprocess.Popen[bytes], Path]]) -> dict[str, Any]:
        summaries: dict[str, Any] = {}
        for name, process, raw in spies:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            if not raw.exists():
                summaries[name] = {"error": f"py-spy wrote nothing (exit {process.returncode}); see its log"}
                continue
            summary = summarize_collapsed(raw.read_text(errors="replace"))
            text_path = self.out.parent / f"{self.out.stem}-profile-{name}.txt"
            text_path.write_text(profile_text(f"py-spy, {name} process", summary))
            summaries[name] = {"samples": summary["samples"], "summary": str(text_path), "raw": str(raw)}
        return summaries

    # -- anchors

    def anchor_module_dir(self) -> Path:
        directory = self.logs / "anchor"
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(anchors.__file__), directory / f"{anchors.MODULE_NAME}.py")
        return directory

    def anchor_http(self) -> dict[str, Any]:
        directory = self.anchor_module_dir()
        port = free_port()
        url = f"http://{HOST}:{port}"
        command = [
            str(self.python),
            "-m",
            "uvicorn",
            f"{anchors.MODULE_NAME}:create_http_app",
            "--factory",
            "--host",
            HOST,
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        self.console.print("[bold]anchor: bare endpoint[/] (FastAPI + OrderCreate, one uvicorn process)")
        app = self.procs.start(
            "anchor-http",
            command,
            env=self.env({"PYTHONPATH": str(directory)}),
            cwd=self.project,
            log_path=self.log("anchor-http"),
        )
        try:
            wait_http(f"{url}/healthz", self.args.ready_timeout, app.alive, "the anchor endpoint")
            script = self.script("anchor-http", list(range(1, self.args.products + 1)), "anchor-token")
            if self.args.warmup:
                self.wrk(url, script, self.args.warmup, "anchor-http-warmup")
            meter = CpuMeter({"anchor_http": [app.pid]})
            start = meter.snapshot()
            result = self.wrk(url, script, self.args.duration, "anchor-http")
            end = meter.snapshot()
        finally:
            self.procs.stop(app)
        cpu = CpuMeter.delta(start, end)
        server_ms = cpu["kinds"]["anchor_http"]["cpu_ms"]
        return {
            "wrk": result.as_dict(),
            "requests_per_s": result.accepted_per_s,
            "other_statuses": {str(s): n for s, n in result.other_statuses.items()},
            "cpu": cpu,
            "cpu_ms_per_request": {
                "server": None if not result.accepted else round(server_ms / result.accepted, 4),
                "loadgen": None
                if not result.accepted or result.cpu_ms is None
                else round(result.cpu_ms / result.accepted, 4),
            },
        }

    def anchor_celery(self) -> dict[str, Any]:
        from celery import Celery

        directory = self.anchor_module_dir()
        queue = f"bench-noop-{self.pid}"
        node = f"bench-noop-{self.pid}@localhost"
        extra = {
            "PYTHONPATH": str(directory),
            anchors.ENV_PREFIX: self.anchor_prefix,
            anchors.ENV_QUEUE: queue,
            anchors.ENV_NODE: node,
            anchors.ENV_CONCURRENCY: str(self.args.anchor_worker_processes),
        }
        command = [str(self.python), "-c", f"import {anchors.MODULE_NAME} as a; a.celery_worker_main()"]
        tasks = self.args.anchor_tasks
        self.console.print(
            f"[bold]anchor: Celery no-op[/] ({tasks:,} tasks, prefork x{self.args.anchor_worker_processes})"
        )
        worker = self.procs.start(
            "anchor-celery",
            command,
            env=self.env(extra),
            cwd=self.project,
            log_path=self.log("anchor-celery"),
        )
        publisher = Celery("bench_anchor_publisher", broker=self.redis_url, set_as_current=False)
        publisher.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_transport_options={"global_keyprefix": self.anchor_prefix},
            broker_connection_retry_on_startup=True,
        )
        counter = self.anchor_prefix + anchors.COUNTER_KEY
        done_at = self.anchor_prefix + anchors.DONE_AT_KEY
        try:
            ready = ping_worker(self.redis_url, self.anchor_prefix, node, self.args.ready_timeout, worker)

            def batch(count: int) -> tuple[float, float]:
                self.redis.delete(counter, done_at)
                started = time.time()
                with publisher.producer_or_acquire() as producer:
                    for _ in range(count):
                        publisher.send_task(anchors.NOOP_TASK, args=(count,), queue=queue, producer=producer)
                published = time.time()
                deadline = time.monotonic() + self.args.settle_timeout
                while self.redis.get(done_at) is None:
                    if time.monotonic() >= deadline:
                        raise BenchError(
                            f"the no-op worker did {int(self.redis.get(counter) or 0)}/{count} tasks in "
                            f"{self.args.settle_timeout:g} s (log: {worker.log_path})"
                        )
                    if not worker.alive():
                        raise BenchError(f"the no-op worker exited: {worker.log_tail()}")
                    time.sleep(0.02)
                return started, published

            batch(min(100, tasks))  # warm-up: every pool process has run the task
            meter = CpuMeter(
                {"worker": [worker.pid], "redis": [self.redis_server] if self.redis_server else []}
            )
            start = meter.snapshot()
            first, published = batch(tasks)
            finished = float(self.redis.get(done_at))
            end = meter.snapshot()
        finally:
            with contextlib.suppress(Exception):
                publisher.close()
            self.procs.stop(worker)
        cpu = CpuMeter.delta(start, end)
        cpu["kinds"]["publisher"] = cpu["kinds"].pop("bench")
        seconds = finished - first
        per_task = {kind: round(v / tasks, 4) for kind, v in cpu_ms_of(cpu).items()}
        return {
            "tasks": tasks,
            "worker_processes": self.args.anchor_worker_processes,
            "ready_seconds": round(ready, 2),
            "publish_seconds": round(published - first, 3),
            "seconds": round(seconds, 3),
            "tasks_per_s": round(tasks / seconds, 2) if seconds > 0 else None,
            "cpu": cpu,
            "cpu_ms_per_task": per_task,
        }

    # -- hot product

    def hot(self) -> dict[str, Any]:
        token = self.token()
        target = self.target(token)
        orders, stock = self.args.hot_orders, self.args.hot_stock
        self.console.print(
            f"[bold]hot product[/]: {orders:,} orders of 1 for stock {stock} "
            f"from {self.args.concurrency} clients"
        )

        async def go() -> tuple[Product, dict[str, Any], Run]:
            async with target.session(2) as session:
                body = await create_product(session, f"bench hot {self.pid}", PRODUCT_PRICE, stock)
            product = Product(id=int(body["id"]), initial_stock=int(body.get("stock", stock)))
            run = Run(target=target, console=self.console, seed=self.seed)
            run.products = [product]
            figures = await closed_loop(run, orders, self.args.concurrency, self.args.settle_timeout, "hot")
            return product, figures, run

        self.autoanalyze("hot")
        marker = self.db.max_order_id()
        started = time.time()
        product, figures, run = asyncio.run(go())
        self.hot_product = product
        settled, left = self.db.wait_settled(self.args.settle_timeout)
        upto = self.db.max_order_id()
        self.hot_ranges.append((marker, upto))
        window = self.db.window(marker, upto)
        stock_row = next((p for p in self.db.products() if p["id"] == product.id), None)
        http = count_by(str(r.http_status) if r.http_status else f"error:{r.error}" for r in run.records)
        fivexx = sum(1 for r in run.records if r.http_status is not None and r.http_status >= 500)
        refused = sum(1 for r in run.records if r.refused)
        last, first = window["last_processed"], window["first_created"] or started
        seconds = None if last is None else max(last - first, 0.0)
        return {
            "orders": orders,
            "initial_stock": product.initial_stock,
            "product_id": product.id,
            "http": http,
            "refused_at_intake": refused,
            "accepted": figures["accepted"],
            "statuses": window["statuses"],
            "confirmed": window["confirmed"],
            "rejected_by_worker": window["statuses"].get("rejected", 0),
            "failed": window["statuses"].get("failed", 0),
            "http_5xx": fivexx,
            "transport_errors": sum(1 for r in run.records if r.http_status is None),
            "seconds": None if seconds is None else round(seconds, 3),
            "orders_per_s": None if not seconds else round(orders / seconds, 2),
            "confirmed_per_s": figures.get("confirmed_per_s"),
            "submit_latency": figures.get("submit_latency"),
            "stock": None if stock_row is None else stock_row["stock"],
            "ledger": None if stock_row is None else stock_row["ledger"],
            "settled": settled,
            "pending_left": left,
        }

    # -- open model

    def open_model(self, rate: float, prefer: int | None) -> dict[str, Any]:
        token = self.token()
        label = "open" if prefer is None else f"open Prefer: wait={prefer}"
        self.console.print(
            f"[bold]{label}[/]: Poisson arrivals at {rate:g}/s for {self.args.open_duration:g} s"
        )
        self.autoanalyze(label)
        marker = self.db.max_order_id()
        meter = self.meter()
        start = meter.snapshot()
        samples, dispatch = uvloop.run(  # the client's own CPU shares the machine: keep it small
            open_loop(
                self.target(token),
                [p.id for p in self.products],
                rate,
                self.args.open_duration,
                self.args.open_connections,
                prefer,
                random.Random(self.seed + (prefer or 0) + 1),
            )
        )
        settled, _ = self.db.wait_settled(self.args.settle_timeout)
        cpu = CpuMeter.delta(start, meter.snapshot())
        ids = [s.order_id for s in samples if s.order_id is not None]
        times = self.db.order_times(ids) if ids else {}
        window = self.db.window(marker)
        figures = open_figures(samples, times, rate, self.args.open_duration, dispatch)
        figures["settled"] = settled
        figures["db_statuses"] = window["statuses"]
        cpu_ms = cpu_ms_of(cpu)
        cpu_ms["loadgen"] = cpu_ms.pop("bench", 0.0)  # the open model's client runs in this process
        figures["cpu"] = cpu
        figures["cpu_ms_per_order"] = per_unit_ms(cpu_ms, int(window["orders"]))
        figures["machine_busy_share"] = cpu["machine"]["busy_share"]
        if prefer is not None:
            figures["prefer"] = f"wait={prefer}"
        return figures


# --- open model --------------------------------------------------------------------------------


@dataclass(slots=True)
class OpenSample:
    intended: float
    sent: float = 0.0
    answered: float | None = None
    status: int | None = None
    order_id: int | None = None
    error: str | None = None


async def open_loop(
    target: Target,
    product_ids: Sequence[int],
    rate: float,
    duration: float,
    connections: int,
    prefer: int | None,
    rng: random.Random,
) -> tuple[list[OpenSample], float]:
    """Poisson arrivals: order i is sent at t0 + offset[i] whatever happened to the others, and its
    latency counts from that intended start. At most `connections` requests in flight (a wait for
    one shows as send lag). The client is `bench.openloop`'s, lean on CPU. Returns the samples and
    the seconds the dispatch took."""
    offsets = poisson_schedule(rate, duration, rng, cap=int(rate * duration * 2) + 100)
    samples: list[OpenSample] = []
    tasks: set[asyncio.Task[None]] = set()
    async with OpenLoopClient(target.url, connections, target.timeout) as client:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        if prefer is not None:
            headers["Prefer"] = f"wait={prefer}"
        requests = {
            pid: request_bytes(
                "POST",
                client.path("orders"),
                client.netloc,
                headers,
                json.dumps({"product_id": pid, "quantity": 1}).encode(),
            )
            for pid in product_ids
        }

        async def one(sample: OpenSample, product_id: int) -> None:
            def written() -> None:
                sample.sent = time.perf_counter()

            try:
                sample.status, raw = await client.send(requests[product_id], on_write=written)
            except TRANSPORT_ERRORS as exc:
                sample.error = type(exc).__name__
                return
            sample.answered = time.perf_counter()
            try:
                payload = json.loads(raw) if sample.status in (200, 201, 202) and raw else None
            except ValueError:
                payload = None
            if isinstance(payload, dict) and isinstance(payload.get("id"), int):
                sample.order_id = payload["id"]

        t0 = time.perf_counter() + 0.05
        for offset in offsets:
            sample = OpenSample(intended=t0 + offset)
            samples.append(sample)
            delay = sample.intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(sample, rng.choice(product_ids)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        dispatch = time.perf_counter() - t0
        if tasks:
            _, late = await asyncio.wait(set(tasks), timeout=target.timeout + 10)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
    return samples, dispatch


def open_figures(
    samples: Sequence[OpenSample],
    times: Mapping[int, tuple[str, float | None]],
    rate: float,
    duration: float,
    dispatch: float,
) -> dict[str, Any]:
    """Submit latency (intended start -> answer) and submit -> final from the database
    (processed_at - created_at) of the open model's orders."""
    answered = [s for s in samples if s.answered is not None]
    finals = [t for oid, (status, t) in times.items() if t is not None and status in SETTLED_STATUSES]
    start = samples[0].intended if samples else 0.0
    seconds: dict[int, list[float]] = {}
    for s in answered:
        seconds.setdefault(int(s.intended - start), []).append(s.answered - s.intended)  # type: ignore[operator]
    return {
        "rate": rate,
        "duration_s": duration,
        "scheduled": len(samples),
        "dispatch_seconds": round(dispatch, 3),
        "http": count_by(str(s.status) if s.status is not None else f"error:{s.error}" for s in samples),
        "submit_latency": ms_summary([s.answered - s.intended for s in answered if s.answered is not None]),
        "send_lag": ms_summary([s.sent - s.intended for s in samples if s.sent]),
        "submit_to_final_db": ms_summary(finals),
        "final_statuses": count_by(status for status, _ in times.values()),
        "submit_p99_ms_by_second": [ms_summary(seconds[k])["p99_ms"] for k in sorted(seconds)],
    }


# --- helpers -----------------------------------------------------------------------------------


def closed_figures(
    result: WrkResult, window: Mapping[str, Any], start: float, cpu: dict[str, Any], settled: bool
) -> dict[str, Any]:
    """The figures of one measured closed-loop window. CPU per order divides by the orders the
    database stored in the window (wrk's 202s plus the few requests wrk cut off at the end whose
    orders were still created), since that is the work the CPU was spent on."""
    orders = int(window["orders"])
    cpu_ms = cpu_ms_of(cpu)
    last = window["last_processed"]
    return {
        "wrk": result.as_dict(),
        "accepted": result.accepted,
        "accepted_per_s": result.accepted_per_s,
        "other_statuses": {str(s): n for s, n in result.other_statuses.items()},
        "orders_in_window": orders,
        "processed": window["processed"],
        "confirmed": window["confirmed"],
        "statuses": window["statuses"],
        "settled": settled,
        "confirm_seconds": None if last is None else round(last - start, 3),
        "confirmed_per_s": confirmed_rate(window["processed"], start, last),
        "cpu": cpu,
        "cpu_ms_per_order": per_unit_ms(cpu_ms, orders),
        "cores_busy": {k: round(v / 1000 / cpu["window_s"], 3) for k, v in cpu_ms.items()}
        if cpu["window_s"]
        else {},
    }


def ping_worker(redis_url: str, prefix: str, node: str, within: float, worker: Managed) -> float:
    """`control.ping` the Celery node through the broker (with the key prefix) until it answers;
    returns the seconds it took."""
    from celery import Celery

    control = Celery("bench_control", broker=redis_url, set_as_current=False)
    control.conf.update(
        broker_transport_options={"global_keyprefix": prefix},
        broker_connection_retry_on_startup=True,
        accept_content=["json"],
    )
    started = time.monotonic()
    deadline = started + within
    try:
        while time.monotonic() < deadline:
            if not worker.alive():
                raise BenchError(f"{worker.name} exited: {worker.log_tail()}")
            with contextlib.suppress(Exception):
                if control.control.ping(destination=[node], timeout=1.0):
                    return time.monotonic() - started
            time.sleep(0.3)
    finally:
        with contextlib.suppress(Exception):
            control.close()
    raise BenchError(f"{worker.name} did not answer a ping within {within:g} s (log: {worker.log_path})")


async def _login(url: str, user: str, password: str) -> str:
    target = Target(url=url, timeout=30)
    async with target.session(1) as session:
        return await login(session, user, password)


async def _products(target: Target, console: Console, count: int, seed: int) -> list[Product]:
    run = Run(target=target, console=console, seed=seed)
    await setup_products(run, count, STOCK, 16)
    return run.products


def project_info(project: Path, python: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(project), *args], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    status = git("status", "--porcelain")
    return {
        "dir": str(project),
        "commit": git("rev-parse", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "dirty_files": None
        if status is None
        else len([line for line in status.splitlines() if line.strip()]),
        "python": str(python),
    }


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def new_stack_results(parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": "stack",
        "timestamp": timestamp(),
        "finished": None,
        "parameters": parameters,
        "machine": machine_info(),
        "project": None,
        "stack": {},
        "anchors": {},
        "closed": None,
        "ratios": None,
        "profile": None,
        "hot": None,
        "open": None,
        "open_prefer": None,
        "sweep": None,
        "plot": None,
        "invariants": None,
        "notes": [],
        "error": None,
    }


def run_stack(args: argparse.Namespace, sweep: list[int], console: Console, results: dict[str, Any]) -> None:
    """Every phase, in order, filling in `results` as it goes; stops everything in the end."""
    run = StackRun(args, console, results)
    with _sigterm_as_interrupt():
        try:
            _phases(run, sweep)
        finally:
            console.print("stopping the processes and dropping the database")
            run.close()
            results["finished"] = timestamp()


def _phases(run: StackRun, sweep: list[int]) -> None:
    args, results = run.args, run.results
    run.prepare()
    results["stack"].update({"api_processes": args.api_processes, "worker_processes": args.worker_processes})

    if args.anchors:
        results["anchors"]["http"] = run.anchor_http()
        results["anchors"]["celery"] = run.anchor_celery()

    run.console.print(f"[bold]starting the stack[/] from {run.project}")
    run.start_api()
    ready = run.start_worker(args.worker_processes)
    results["stack"]["worker_ready_seconds"] = round(ready, 2)
    token = run.token()
    target = run.target(token)
    run.products = asyncio.run(_products(target, run.console, args.products, run.seed))
    probe_run = Run(target=target, console=run.console, seed=run.seed)
    probe_run.products = run.products
    asyncio.run(probe_order(probe_run, args.ready_timeout))

    closed = run.closed("main", args.duration, args.warmup)
    results["closed"] = closed
    results["ratios"] = ratios(results["anchors"], closed)

    if args.profile:
        profiled = run.closed("profile", args.profile + 3, 0, profile=args.profile)
        results["profile"] = {**(profiled.pop("profile", None) or {}), "closed": profiled}

    if args.hot:
        results["hot"] = run.hot()

    if args.open:
        rate = args.rate or (round(closed["accepted_per_s"] / 2, 1) if closed.get("accepted_per_s") else None)
        if rate is None:
            run.note("open model skipped: no closed-loop accepted rate")
        else:
            if closed.get("confirmed_per_s") and rate > closed["confirmed_per_s"]:
                run.note(
                    f"open-model rate {rate:g}/s exceeds the confirmed rate {closed['confirmed_per_s']:g}/s: "
                    "the queue grows during the run (pass --rate for a sustainable one)"
                )
            results["open"] = run.open_model(rate, None)
            if args.prefer_wait:
                results["open_prefer"] = run.open_model(rate, args.prefer_wait)

    if sweep:
        results["sweep"] = []
        for count in sweep:
            ready = run.start_worker(count)
            figures = run.closed(f"sweep-w{count}", args.sweep_duration, min(args.warmup, 2))
            results["sweep"].append({"workers": count, "ready_seconds": round(ready, 2), "closed": figures})
        plot = run.out.parent / f"{run.out.stem}-sweep.png"
        results["plot"] = str(plot_sweep(plot, results["sweep"]))

    results["invariants"] = final_checks(run)


def ratios(anchor_results: Mapping[str, Any], closed: Mapping[str, Any]) -> dict[str, Any]:
    http = anchor_results.get("http") or {}
    celery = anchor_results.get("celery") or {}
    return {
        "accepted_over_bare": ratio(closed.get("accepted_per_s"), http.get("requests_per_s")),
        "confirmed_over_celery_noop": ratio(closed.get("confirmed_per_s"), celery.get("tasks_per_s")),
    }


def final_checks(run: StackRun) -> dict[str, Any]:
    _, pending = run.db.wait_settled(run.args.settle_timeout)
    initial = {p.id: p.initial_stock for p in run.products}
    hot_id = run.hot_product.id if run.hot_product else None
    if run.hot_product:
        initial[run.hot_product.id] = run.hot_product.initial_stock
    rows = [
        {**row, "initial": initial[row["id"]], "hot": row["id"] == hot_id}
        for row in run.db.products()
        if row["id"] in initial
    ]
    regular_confirmed = run.db.confirmed_between(run.hot_ranges, inside=False)
    hot = None
    if run.hot_product is not None:
        hot = {"product_id": hot_id, "confirmed": run.db.confirmed_between(run.hot_ranges, inside=True)}
    checks = stock_checks(rows, regular_confirmed, hot, pending)
    closed_runs = [run.results.get("closed")] + [e["closed"] for e in run.results.get("sweep") or []]
    unsettled = [i for i, c in enumerate(closed_runs) if c is not None and not c.get("settled")]
    checks.append(
        {
            "name": "closed_loops_settled",
            "passed": not unsettled,
            "detail": "every order of each measured window final within --settle-timeout"
            + (f"; not: {unsettled}" if unsettled else ""),
        }
    )
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
