"""CPU per order of the worker's batch reservation: a real Celery worker draining `reserve_orders`
batches, with the CPU of the worker's processes and of its PostgreSQL backends read from /proc.

    uv run --no-sync python -m bench.worker_batches [--orders 20000] [--batch 80] [--pairs 3]
        [--root PATH ...]

The driver creates a scratch database (Alembic), 20 products with ample stock, and then, per run:
starts `celery worker --pool prefork --concurrency 1` from a source tree (`--root`, default this
checkout; give two to compare two versions, e.g. one extracted with `git archive`), inserts a warm-up
round of pending orders straight into the database and sends them, then inserts `--orders` more
one-line pending orders, snapshots /proc, sends them in `reserve_orders` batches of `--batch` ids
(the API's dispatcher sends batches the same way), waits until none is pending, and snapshots again.

Reported per run, per order: the worker's CPU (main process and pool children, `utime + stime`,
children reaped during the run included) and the CPU of the worker's PostgreSQL backends (the
backends of the scratch database other than the driver's own connection). With two roots the runs
alternate A B A B ... (`--pairs` pairs) and the medians are printed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.scratch import celery_worker_command, scratch_backends

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRODUCTS = 20
STOCK = 1_000_000_000


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_batches", description=__doc__)
    parser.add_argument("--orders", type=int, default=20000, help="orders measured per run")
    parser.add_argument("--warmup", type=int, default=1000, help="orders sent before measuring")
    parser.add_argument("--batch", type=int, default=80, help="order ids per reserve_orders task")
    parser.add_argument("--lines", type=int, default=1, help="lines per order (distinct products)")
    parser.add_argument("--pairs", type=int, default=3, help="runs per root")
    parser.add_argument("--concurrency", type=int, default=1, help="pool processes of the worker")
    parser.add_argument("--root", action="append", default=[], help="source tree the worker runs from")
    parser.add_argument(
        "--profile", help="py-spy the pool process of each measured run into PROFILE-N.folded"
    )
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    return parser.parse_args(argv)


class Worker:
    """`celery worker` from `root`, in its own process group, ready when its log says so."""

    def __init__(self, root: Path, concurrency: int, log_path: Path) -> None:
        self.root = root
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            celery_worker_command(sys.executable, concurrency, "info", f"wb-{os.getpid()}@localhost"),
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            if b"ready." in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready within {within} s (log: {self.log_path})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()


def _insert_orders(conn: Any, count: int, lines: int, rng: random.Random) -> list[int]:
    """`count` pending orders of `lines` one-unit-to-three-unit lines on distinct products."""
    ids = [
        row[0]
        for row in conn.execute(
            "INSERT INTO orders (status, total_price, attempts, created_at, updated_at) "
            "SELECT 'pending', 1.00, 0, now(), now() FROM generate_series(1, %s) RETURNING id",
            (count,),
        )
    ]
    order_ids, product_ids, quantities = [], [], []
    for order_id in ids:
        for product_id in sorted(rng.sample(range(1, PRODUCTS + 1), lines)):
            order_ids.append(order_id)
            product_ids.append(product_id)
            quantities.append(rng.randint(1, 3))
    conn.execute(
        "INSERT INTO order_lines (order_id, product_id, position, name, quantity, unit_price) "
        "SELECT o, p, row_number() OVER (PARTITION BY o ORDER BY p) - 1, 'P' || p, q, 1.00 "
        "FROM unnest(%s::int[], %s::int[], %s::int[]) AS t(o, p, q)",
        (order_ids, product_ids, quantities),
    )
    conn.commit()
    # Planner statistics as a long-running database has them (a plan cached while the tables were
    # nearly empty would scan them whole on every batch).
    conn.execute("ANALYZE orders, order_lines, stock_movements")
    conn.commit()
    return ids


def _send_and_wait(conn: Any, ids: list[int], batch: int, timeout: float = 600.0) -> float:
    from workers.celery_app import RESERVE_ORDERS, app

    started = time.monotonic()
    for start in range(0, len(ids), batch):
        app.send_task(RESERVE_ORDERS, args=(ids[start : start + batch],))
    while True:
        (pending,) = conn.execute("SELECT count(*) FROM orders WHERE status = 'pending'").fetchone()
        conn.commit()
        if pending == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{pending} orders still pending after {timeout} s")
        time.sleep(0.1)


def _backends(conn: Any, db: str) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (db,)
    ).fetchall()
    conn.commit()
    return [pid for (pid,) in rows]


def _start_profile(worker: Worker, out: str) -> subprocess.Popen[bytes]:
    children = procstat.children_of(worker.process.pid, procstat.read_all())
    py_spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(py_spy), "record", "-p", str(children[0]), "-r", "200", "-f", "raw", "-o", out, "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _run(
    args: argparse.Namespace, conn: Any, db: str, root: Path, rng: random.Random, index: int
) -> dict[str, float]:
    log_path = Path("/tmp") / f"worker_batches_{os.getpid()}.log"
    worker = Worker(root, args.concurrency, log_path)
    try:
        worker.wait_ready()
        _send_and_wait(conn, _insert_orders(conn, args.warmup, args.lines, rng), args.batch)
        ids = _insert_orders(conn, args.orders, args.lines, rng)
        backends = _backends(conn, db)
        log_offset = log_path.stat().st_size
        profiler = _start_profile(worker, f"{args.profile}-{index}.folded") if args.profile else None
        stats = procstat.read_all()
        worker_start = procstat.tree_totals([worker.process.pid], stats)
        pg_start = procstat.pid_totals(backends, stats)
        wall = _send_and_wait(conn, ids, args.batch)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        backends = sorted(set(backends) | set(_backends(conn, db)))
        stats = procstat.read_all()
        worker_ticks = procstat.tree_delta(worker_start, procstat.tree_totals([worker.process.pid], stats))
        pg_ticks = procstat.own_delta(pg_start, procstat.pid_totals(backends, stats))
    finally:
        worker.stop()
    with log_path.open("rb") as log:
        log.seek(log_offset)
        faults = log.read().count(b"processing them one by one")
    n = len(ids)
    return {
        "faults": faults,
        "worker": procstat.ticks_to_ms(worker_ticks.ticks) / n,
        "postgres": procstat.ticks_to_ms(pg_ticks.ticks) / n,
        "wall": wall * 1000 / n,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    import psycopg

    settings = {
        "JWT_SECRET_KEY": "worker-batches-bench-secret-of-at-least-32-bytes",
        "LOG_LEVEL": "WARNING",
        "ORDER_SWEEP_INTERVAL_SECONDS": "3600",
        "ORDER_SWEEP_AFTER_SECONDS": "3600",
    }
    roots = [Path(r).resolve() for r in args.root] or [PROJECT_ROOT]
    results: dict[Path, list[dict[str, float]]] = {root: [] for root in roots}
    with scratch_backends("wb", args.admin_dsn, args.redis_url, settings) as scratch:
        with psycopg.connect(scratch.dsn) as conn:
            conn.execute(
                "INSERT INTO products (name, description, price, stock, low_stock_threshold, discontinued,"
                " created_at, updated_at) SELECT 'P' || i, '', 1.00, %s, 10, false, now(), now()"
                " FROM generate_series(1, %s) AS i",
                (STOCK, PRODUCTS),
            )
            conn.commit()
            rng = random.Random(1)
            for pair in range(args.pairs):
                for root in roots:
                    result = _run(args, conn, scratch.db, root, rng, pair)
                    if not result["faults"]:
                        results[root].append(result)
                    print(
                        f"pair {pair + 1} {root}: {result['faults']} failed batches"
                        f"{' (run left out)' if result['faults'] else ''}, "
                        f"worker {result['worker']:.3f} ms/order, "
                        f"postgres {result['postgres']:.3f} ms/order, wall {result['wall']:.3f} ms/order",
                        flush=True,
                    )
        for root, runs in results.items():
            if not runs:
                print(f"median {root}: no valid run")
                continue
            print(
                f"median {root}: worker {statistics.median(r['worker'] for r in runs):.3f}, "
                f"postgres {statistics.median(r['postgres'] for r in runs):.3f}, "
                f"wall {statistics.median(r['wall'] for r in runs):.3f} ms/order ({len(runs)} runs)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
