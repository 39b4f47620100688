"""`python -m bench` / `orderflow bench`: the load benchmark of a running orderflow API.

`python -m bench store [options]` benchmarks the store API instead (bench/store.py): listing latency
with the cache hit and missed, and `POST /api/orders/process` end to end.

`python -m bench stack [options]` starts the whole stack itself from a project directory and measures
it with wrk beside its anchors, a bare endpoint and a Celery no-op (bench/stack.py).

Exit codes: 0 every invariant holds; 1 an invariant failed; 2 bad options, the API unreachable or a
phase could not run; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console

from bench.client import BenchError, Target, check_credentials, check_reachable, login
from bench.phases import (
    Run,
    check_stock,
    closed_loop,
    follow_all,
    open_model,
    probe_order,
    setup_products,
)
from bench.report import machine_info, plot_sweep, render, render_stack, render_store, timestamp, write_json
from bench.stack import PROJECT_ROOT, new_stack_results, parse_counts, run_stack
from bench.stats import arrival_schedule
from bench.store import run_store_benchmark
from bench.workers import CeleryWorker, stop_all_now

DEFAULT_OUT = Path("bench/results/latest.json")
DEFAULT_STORE_OUT = Path("bench/results/store-latest.json")
DEFAULT_STACK_OUT = Path("bench/results/stack-latest.json")
STORE_STATUSES = ("in_stock", "out_of_stock", "discontinued")
MAX_OPEN_ORDERS = 500_000
SECRET_OPTIONS = ("token", "basic", "login")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Load benchmark of a running orderflow API: closed-loop peak throughput, open-model "
            "latency without coordinated omission, stock invariants, and an optional sweep over "
            "Celery worker counts. Exit code 0: invariants hold; 1: an invariant failed; "
            "2: error; 130: interrupted."
        ),
        epilog=(
            "The store API (/api/...) has its own benchmark: python -m bench store --help. "
            "The whole stack, started by the benchmark itself: python -m bench stack --help"
        ),
    )
    add = parser.add_argument
    add("--url", default="http://127.0.0.1:8000", help="base URL of the API (%(default)s)")
    add("--orders", type=int, default=2000, help="closed loop: orders (%(default)s)")
    add(
        "--concurrency",
        type=int,
        default=64,
        help="closed loop: clients and pool connections (%(default)s)",
    )
    add("--products", type=int, default=20, help="products created for the run (%(default)s)")
    add(
        "--stock",
        type=int,
        default=10**6,
        help="initial stock of each product; small values oversell (%(default)s)",
    )
    add("--rate", type=float, help="open model: orders/s (half the closed-loop accepted rate)")
    add("--duration", type=float, default=10.0, help="open model: seconds (%(default)s)")
    add("--workers", metavar="K,K,...", help="Celery worker counts to sweep, e.g. 1,2,4")
    add(
        "--no-spawn-workers",
        action="store_true",
        help="start no workers, use those running (--workers is then a label)",
    )
    add(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON results; plot and worker logs go beside it (%(default)s)",
    )
    add("--login", metavar="USER:PASS", help="get a token from POST /login and send it as Bearer")
    add("--token", help="send Authorization: Bearer TOKEN")
    add("--basic", metavar="USER:PASS", help="send HTTP Basic credentials on every request")
    add("--timeout", type=float, default=30.0, help="seconds per HTTP request (%(default)s)")
    add(
        "--settle-timeout",
        type=float,
        default=120.0,
        help="seconds per phase to wait for orders to be final (%(default)s)",
    )
    add(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for a worker: ping and probe order (%(default)s)",
    )
    add(
        "--open-connections",
        type=int,
        help="open model: connections per pool (max(concurrency, 256))",
    )
    add("--seed", type=int, help="random seed of the product choice")
    add("--skip-open", action="store_true", help="skip the open-model phase")
    add("--skip-closed", action="store_true", help="skip the closed loop (needs --rate)")
    add("--allow-remote", action="store_true", help="allow a URL that is not loopback")
    return parser


def build_store_parser() -> argparse.ArgumentParser:
    """Options of `python -m bench store` (docs/benchmark.md, "Store API")."""
    parser = argparse.ArgumentParser(
        prog="python -m bench store",
        description=(
            "Benchmark of the store API (/api/...) of a running orderflow: latency of "
            "GET /api/inventory/products with the Redis cache missed (a write before each read) and "
            "hit, then POST /api/orders/process end to end in a closed loop, then a stock check. "
            "The store API allows 100 requests/hour per manager_id by default: start the API with "
            "STORE_RATE_LIMIT=1000000/hour (the run checks RateLimit-Remaining first and stops if it "
            "is too low). Exit code 0: checks pass; 1: a check failed; 2: error; 130: interrupted."
        ),
    )
    add = parser.add_argument
    add("--url", default="http://127.0.0.1:8000", help="base URL of the API (%(default)s)")
    add("--products", type=int, default=50, help="products per manager (%(default)s)")
    add("--stock", type=int, default=10**6, help="initial quantity of each product (%(default)s)")
    add(
        "--gets",
        type=int,
        default=200,
        help="listing: timed reads per phase, hit and miss each (%(default)s)",
    )
    add(
        "--listing-concurrency",
        metavar="K,K,...",
        default="1",
        help="listing: client counts to measure, one manager per client, e.g. 1,32 (%(default)s)",
    )
    add("--status", choices=STORE_STATUSES, help="listing: the status filter to read (default: none, all)")
    add(
        "--orders",
        type=int,
        default=1000,
        help="orders: POST /api/orders/process count; 0 skips (%(default)s)",
    )
    add("--concurrency", type=int, default=32, help="orders: closed-loop clients (%(default)s)")
    add("--managers", type=int, default=1, help="orders: managers the orders are spread over (%(default)s)")
    add("--lines", type=int, default=2, help="orders: at most this many products per order (%(default)s)")
    add("--max-quantity", type=int, default=1, help="orders: quantity per line, 1..this (%(default)s)")
    add(
        "--settle-timeout",
        type=float,
        default=60.0,
        help="orders: seconds to follow a 202's Location before giving up on it (%(default)s)",
    )
    add(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds per HTTP request; keep it above the API's ORDER_WAIT_SECONDS (%(default)s)",
    )
    add("--out", type=Path, default=DEFAULT_STORE_OUT, help="JSON results (%(default)s)")
    add("--login", metavar="USER:PASS", help="get a token from POST /login and send it as Bearer")
    add("--token", help="send Authorization: Bearer TOKEN")
    add("--basic", metavar="USER:PASS", help="send HTTP Basic credentials on every request")
    add("--seed", type=int, help="random seed of the orders' products and quantities")
    add("--allow-remote", action="store_true", help="allow a URL that is not loopback")
    return parser


def build_stack_parser() -> argparse.ArgumentParser:
    """Options of `python -m bench stack` (docs/benchmark.md, "Whole stack")."""
    parser = argparse.ArgumentParser(
        prog="python -m bench stack",
        description=(
            "Start the whole stack (PostgreSQL database, migrations, uvicorn API processes, one "
            "Celery worker) from a project directory, load it with wrk, and measure accepted and "
            "confirmed orders/s, CPU ms per order of every process kind (from /proc), a hot-product "
            "run, an open model and an optional worker sweep, beside two anchors measured in the same "
            "run: a bare FastAPI endpoint and a Celery no-op task. Exit code 0: the stock checks "
            "pass; 1: a check failed; 2: error; 130: interrupted."
        ),
    )
    add = parser.add_argument
    add(
        "--project",
        type=Path,
        default=PROJECT_ROOT,
        help="checkout to start (its .venv/bin/python, cwd there) (%(default)s)",
    )
    add("--api-processes", type=int, default=2, help="uvicorn --workers of the API (%(default)s)")
    add("--worker-processes", type=int, default=2, help="Celery worker --concurrency (%(default)s)")
    add("--concurrency", type=int, default=64, help="wrk connections, hot-run clients (%(default)s)")
    add("--threads", type=int, default=2, help="wrk threads (%(default)s)")
    add("--duration", type=int, default=20, help="seconds of the measured closed loop (%(default)s)")
    add(
        "--warmup",
        type=int,
        default=3,
        help="seconds of wrk before each closed loop, not counted (%(default)s)",
    )
    add("--products", type=int, default=20, help="products the orders go to, stock 10**7 each (%(default)s)")
    add("--hot", action=argparse.BooleanOptionalAction, default=True, help="run the hot-product phase")
    add("--hot-orders", type=int, default=2000, help="hot run: orders of quantity 1 (%(default)s)")
    add("--hot-stock", type=int, default=500, help="hot run: stock of the one product (%(default)s)")
    add("--sweep", metavar="K,K,...", help="worker process counts to sweep after the rest, e.g. 1,2,4")
    add("--sweep-duration", type=int, default=10, help="seconds of each sweep closed loop (%(default)s)")
    add("--open", action=argparse.BooleanOptionalAction, default=True, help="run the open model")
    add("--rate", type=float, help="open model: orders/s (half the closed-loop accepted rate)")
    add("--open-duration", type=float, default=10.0, help="open model: seconds of arrivals (%(default)s)")
    add("--open-connections", type=int, default=256, help="open model: connections (%(default)s)")
    add(
        "--prefer-wait",
        type=int,
        default=5,
        help="open model again with 'Prefer: wait=N'; 0 skips it (%(default)s)",
    )
    add("--anchors", action=argparse.BooleanOptionalAction, default=True, help="measure the anchors")
    add("--anchor-tasks", type=int, default=3000, help="Celery no-op: tasks published (%(default)s)")
    add(
        "--anchor-worker-processes",
        type=int,
        default=2,
        help="Celery no-op: prefork processes (%(default)s)",
    )
    add("--profile", type=int, default=0, metavar="SECONDS", help="py-spy an API and a worker process")
    add("--redis-db", type=int, default=14, help="Redis database of the run (%(default)s)")
    add(
        "--settle-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for orders to be final (%(default)s)",
    )
    add(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for a process to be ready (%(default)s)",
    )
    add(
        "--out",
        type=Path,
        default=DEFAULT_STACK_OUT,
        help="JSON results; logs, plot and profiles go beside it (%(default)s)",
    )
    add("--seed", type=int, help="random seed of the product choice and the arrivals")
    return parser


class UsageError(Exception):
    pass


def need(condition: bool, message: str) -> None:
    """UsageError(message) unless `condition`."""
    if not condition:
        raise UsageError(message)


def validate(args: argparse.Namespace) -> tuple[Target, list[int]]:
    """Check option ranges and combinations; returns the target and the worker counts."""
    need(1 <= args.orders <= 1_000_000, "--orders must be within 1..1000000")
    need(1 <= args.concurrency <= 2000, "--concurrency must be within 1..2000")
    need(1 <= args.products <= 10_000, "--products must be within 1..10000")
    need(0 <= args.stock <= 2**31 - 1, "--stock must be within 0..2147483647")
    need(args.rate is None or (math.isfinite(args.rate) and args.rate > 0), "--rate must be > 0")
    need(math.isfinite(args.duration) and 0 < args.duration <= 3600, "--duration: 0 < s <= 3600")
    need(0 < args.timeout <= 600, "--timeout must be within (0, 600]")
    need(0 < args.settle_timeout <= 3600, "--settle-timeout must be within (0, 3600]")
    need(0 < args.ready_timeout <= 600, "--ready-timeout must be within (0, 600]")
    need(
        args.open_connections is None or 1 <= args.open_connections <= 4000,
        "--open-connections must be within 1..4000",
    )
    need(
        not (args.skip_closed and args.rate is None and not args.skip_open),
        "--skip-closed needs --rate (the default rate comes from the closed loop)",
    )
    if args.rate is not None and not args.skip_open:
        need(
            args.rate * args.duration <= MAX_OPEN_ORDERS,
            f"--rate x --duration must be <= {MAX_OPEN_ORDERS} orders",
        )

    target = _target(args)

    workers: list[int] = []
    if args.workers:
        try:
            workers = [int(w) for w in args.workers.split(",") if w.strip()]
        except ValueError as exc:
            raise UsageError("--workers must be comma-separated integers, e.g. 1,2,4") from exc
        need(bool(workers) and all(1 <= w <= 128 for w in workers), "--workers: counts 1..128")
        need(len(workers) == len(set(workers)), "--workers: counts must be distinct")
        need(not args.skip_closed, "--workers sweeps the closed loop; drop --skip-closed")
        need(
            not (args.no_spawn_workers and len(workers) > 1),
            "--no-spawn-workers cannot sweep; give at most one --workers value (a label)",
        )

    return target, workers


def validate_store(args: argparse.Namespace) -> tuple[Target, list[int]]:
    """Check the options of `python -m bench store`; returns the target and the listing client
    counts."""
    need(1 <= args.products <= 1000, "--products must be within 1..1000")
    need(0 <= args.stock <= 10**9, "--stock must be within 0..1000000000")
    need(0 <= args.gets <= 1_000_000, "--gets must be within 0..1000000")
    need(0 <= args.orders <= 1_000_000, "--orders must be within 0..1000000")
    need(1 <= args.concurrency <= 2000, "--concurrency must be within 1..2000")
    need(1 <= args.managers <= 1000, "--managers must be within 1..1000")
    need(args.managers <= max(args.orders, 1), "--managers must not exceed --orders")
    need(1 <= args.lines <= 20, "--lines must be within 1..20")
    need(1 <= args.max_quantity <= 1000, "--max-quantity must be within 1..1000")
    need(
        math.isfinite(args.settle_timeout) and 0 < args.settle_timeout <= 3600, "--settle-timeout: (0, 3600]"
    )
    need(math.isfinite(args.timeout) and 0 < args.timeout <= 600, "--timeout must be within (0, 600]")
    try:
        listing = [int(k) for k in args.listing_concurrency.split(",") if k.strip()]
    except ValueError as exc:
        raise UsageError("--listing-concurrency must be comma-separated integers, e.g. 1,32") from exc
    need(bool(listing) and all(1 <= k <= 256 for k in listing), "--listing-concurrency: counts 1..256")
    need(len(listing) == len(set(listing)), "--listing-concurrency: counts must be distinct")
    need(args.gets >= max(listing) or args.gets == 0, "--gets must be >= the largest --listing-concurrency")
    need(args.orders == 0 or args.stock > 0, "--stock 0 rejects every order; give a stock")
    return _target(args), listing


def validate_stack(args: argparse.Namespace) -> tuple[list[int], None]:
    """Check the options of `python -m bench stack`; returns the sweep's worker counts."""
    need(1 <= args.api_processes <= 32, "--api-processes must be within 1..32")
    need(1 <= args.worker_processes <= 64, "--worker-processes must be within 1..64")
    need(1 <= args.concurrency <= 2000, "--concurrency must be within 1..2000")
    need(1 <= args.threads <= 64, "--threads must be within 1..64")
    need(
        args.threads <= args.concurrency,
        "--threads must not exceed --concurrency (wrk needs a connection each)",
    )
    need(1 <= args.duration <= 3600, "--duration must be within 1..3600 seconds")
    need(0 <= args.warmup <= 600, "--warmup must be within 0..600 seconds")
    need(1 <= args.products <= 10_000, "--products must be within 1..10000")
    need(1 <= args.hot_orders <= 1_000_000, "--hot-orders must be within 1..1000000")
    need(0 <= args.hot_stock <= 10**9, "--hot-stock must be within 0..1000000000")
    need(1 <= args.sweep_duration <= 3600, "--sweep-duration must be within 1..3600 seconds")
    need(args.rate is None or (math.isfinite(args.rate) and args.rate > 0), "--rate must be > 0")
    need(
        math.isfinite(args.open_duration) and 0 < args.open_duration <= 3600,
        "--open-duration must be within (0, 3600]",
    )
    need(1 <= args.open_connections <= 4000, "--open-connections must be within 1..4000")
    if args.rate is not None:
        need(
            args.rate * args.open_duration <= MAX_OPEN_ORDERS,
            f"--rate x --open-duration must be <= {MAX_OPEN_ORDERS} orders",
        )
    need(0 <= args.prefer_wait <= 60, "--prefer-wait must be within 0..60")
    need(1 <= args.anchor_tasks <= 1_000_000, "--anchor-tasks must be within 1..1000000")
    need(1 <= args.anchor_worker_processes <= 64, "--anchor-worker-processes must be within 1..64")
    need(0 <= args.profile <= 600, "--profile must be within 0..600 seconds")
    need(0 <= args.redis_db <= 15, "--redis-db must be within 0..15")
    need(
        math.isfinite(args.settle_timeout) and 0 < args.settle_timeout <= 3600, "--settle-timeout: (0, 3600]"
    )
    need(math.isfinite(args.ready_timeout) and 0 < args.ready_timeout <= 600, "--ready-timeout: (0, 600]")
    sweep: list[int] = []
    if args.sweep:
        try:
            sweep = parse_counts(args.sweep, "--sweep", 1, 64)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    return sweep, None


def _target(args: argparse.Namespace) -> Target:
    """The URL (loopback unless --allow-remote) and the credentials (one of --login, --token,
    --basic) of either benchmark, as a Target."""
    need(
        sum(bool(x) for x in (args.token, args.basic, args.login)) <= 1,
        "give one of --login, --token and --basic",
    )
    parts = urlsplit(args.url)
    need(parts.scheme in ("http", "https") and bool(parts.hostname), f"bad --url {args.url!r}")
    if not args.allow_remote:
        need(
            _is_loopback(parts.hostname or ""),
            f"{parts.hostname} is not a loopback address; pass --allow-remote if you mean it",
        )

    basic: tuple[str, str] | None = None
    for option in ("basic", "login"):
        if getattr(args, option):
            user, sep, password = getattr(args, option).partition(":")
            need(bool(sep) and bool(user), f"--{option} must be USER:PASS")
            basic = (user, password)
    return Target(
        url=args.url.rstrip("/"), timeout=args.timeout, token=args.token, basic=basic, login=bool(args.login)
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The options of the run as JSON, credentials redacted."""
    values: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in SECRET_OPTIONS:
            values[key] = "***" if value else None
        elif isinstance(value, Path):
            values[key] = str(value)
        else:
            values[key] = value
    return values


def new_results(args: argparse.Namespace) -> dict[str, Any]:
    """The results document, before any phase has run."""
    return {
        "timestamp": timestamp(),
        "parameters": parameters(args),
        "machine": machine_info(),
        "setup": None,
        "closed": None,
        "open": None,
        "sweep": None,
        "invariants": None,
        "orders": None,
        "notes": [],
        "error": None,
    }


async def connect(target: Target) -> Target:
    """Check that the API answers /healthz; with --login, exchange the credentials for a token.
    Returns the target to use (BenchError when the API is unreachable or the login fails)."""
    async with target.session(2) as session:
        await check_reachable(session, target.url)
        if target.login and target.basic:
            token = await login(session, *target.basic)
            target = replace(target, token=token, basic=None, login=False)
    return target


async def run_benchmark(
    args: argparse.Namespace,
    target: Target,
    worker_counts: list[int],
    console: Console,
    results: dict[str, Any],
) -> None:
    """All phases, in order, filling in `results` as they finish (so a failed run keeps what it
    measured)."""
    started = time.perf_counter()
    spawn = bool(worker_counts) and not args.no_spawn_workers
    if spawn:
        _require_shared_broker()

    target = await connect(target)
    async with target.session(2) as session:
        await check_credentials(session)
    run = Run(target=target, console=console, seed=args.seed)
    results["auth"] = "bearer" if target.token else ("basic" if target.basic else "none")
    results["setup"] = await setup_products(run, args.products, args.stock, args.concurrency)

    if spawn:
        results["sweep"] = []
        for index, count in enumerate(worker_counts):
            last = index == len(worker_counts) - 1
            worker = CeleryWorker(count, args.out.parent / f"worker-{count}.log")
            console.print(f"[bold]starting a Celery worker with --concurrency {count}[/]")
            try:
                worker.start()
                ready = await worker.wait_ready(args.ready_timeout)
                await probe_order(run, args.ready_timeout, phase=f"probe-{count}")
                closed = await closed_loop(
                    run, args.orders, args.concurrency, args.settle_timeout, f"closed-w{count}"
                )
                results["sweep"].append(
                    {"workers": count, "ready_seconds": round(ready, 3), "closed": closed}
                )
                if last:  # the open model and the checks need a worker, so they run on the last
                    results["closed"] = closed
                    await _open_and_settle(run, args, results)
                    await _invariants(run, results)
            finally:
                code = await worker.stop()
                console.print(f"worker --concurrency {count} stopped (exit code {code})")
        results["plot"] = str(plot_sweep(args.out.parent / "workers.png", results["sweep"]))
    else:
        if not (args.skip_closed and args.skip_open):
            await probe_order(run, args.ready_timeout)
        if not args.skip_closed:
            results["closed"] = await closed_loop(run, args.orders, args.concurrency, args.settle_timeout)
            if worker_counts:
                results["closed"]["workers_label"] = worker_counts[0]
        await _open_and_settle(run, args, results)
        await _invariants(run, results)

    results["seconds"] = round(time.perf_counter() - started, 3)


async def _open_and_settle(run: Run, args: argparse.Namespace, results: dict[str, Any]) -> None:
    closed = results.get("closed")
    if closed and not closed.get("all_final"):
        results["notes"].append(
            "the closed loop left orders pending (see --settle-timeout): later phases start with "
            "a backlog in the queue"
        )
    if not args.skip_open:
        rate = args.rate
        if rate is None:
            accepted_rate = closed.get("accepted_per_s") if closed else None
            if not accepted_rate:
                results["notes"].append("open model skipped: no closed-loop accepted rate")
                rate = None
            else:
                rate = round(accepted_rate / 2, 2)
        if rate is not None:
            schedule = arrival_schedule(rate, args.duration)
            if len(schedule) > MAX_OPEN_ORDERS:
                raise BenchError(f"the open model would send {len(schedule)} orders; use --rate")
            confirmed_rate = closed.get("confirmed_per_s") if closed else None
            if confirmed_rate and rate > confirmed_rate:
                results["notes"].append(
                    f"open-model rate {rate:g}/s exceeds the measured confirmed rate "
                    f"{confirmed_rate:g}/s: the queue grows during the run, so submit->confirmed "
                    "latency grows with it (pass --rate to choose a sustainable rate)"
                )
            connections = args.open_connections or max(args.concurrency, 256)
            results["open"] = await open_model(run, rate, schedule, connections, args.settle_timeout)
    # whatever is still pending gets one more bounded chance before the checks
    await follow_all(run, run.records, args.concurrency, args.settle_timeout)


async def _invariants(run: Run, results: dict[str, Any]) -> None:
    checks, per_product = await check_stock(run)
    results["invariants"] = {
        "passed": all(c.passed for c in checks),
        "checks": [c.as_dict() for c in checks],
        "products": per_product,
    }
    statuses: dict[str, int] = {}
    for r in run.records:
        key = r.status if r.accepted and r.status else ("refused" if r.refused else "not_created")
        statuses[key] = statuses.get(key, 0) + 1
    results["orders"] = {"total": len(run.records), "by_status": dict(sorted(statuses.items()))}


def _require_shared_broker() -> None:
    """A spawned worker must reach the API's broker: with no REDIS_URL the API runs its own
    in-process worker on an in-memory broker that no other process can reach."""
    from core.config import settings

    if settings.redis_url is None:
        raise BenchError(
            "spawning workers needs REDIS_URL (and the API's DATABASE_URL, if it has one) in the "
            "environment; the API must run with the same settings, which also keeps it from "
            "starting an in-process worker. Or pass --no-spawn-workers"
        )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the run like Ctrl-C, so spawned workers are stopped on the way out."""
    raise KeyboardInterrupt


def new_store_results(args: argparse.Namespace) -> dict[str, Any]:
    """The results document of the store benchmark, before any phase has run."""
    return {
        "benchmark": "store",
        "timestamp": timestamp(),
        "parameters": parameters(args),
        "machine": machine_info(),
        "auth": None,
        "setup": None,
        "listing": None,
        "orders": None,
        "invariants": None,
        "notes": [],
        "error": None,
    }


async def run_store(
    args: argparse.Namespace,
    target: Target,
    listing: list[int],
    console: Console,
    results: dict[str, Any],
) -> None:
    target = await connect(target)
    results["auth"] = "bearer" if target.token else ("basic" if target.basic else "none")
    await run_store_benchmark(
        target,
        console,
        results,
        products=args.products,
        stock=args.stock,
        gets=args.gets,
        listing_concurrency=listing,
        status=args.status,
        orders=args.orders,
        concurrency=args.concurrency,
        managers=args.managers,
        max_lines=args.lines,
        max_quantity=args.max_quantity,
        settle_timeout=args.settle_timeout,
        seed=args.seed,
    )


def store_main(argv: list[str]) -> int:
    """`python -m bench store ARGV`: the store API benchmark; returns the exit code (0 ok, 1 a
    check failed, 2 error, 130 interrupted)."""
    parser = build_store_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    checked = _checked(parser, err, validate_store, args)
    if checked is None:
        return 2
    target, listing = checked

    results = new_store_results(args)
    code = _execute(lambda: run_store(args, target, listing, err, results), err, results)
    if code == 0:
        render_store(Console(), results)
        code = _verdict(results)
    write_json(args.out, results)
    err.print(f"results written to {args.out}")
    return code


def stack_main(argv: list[str]) -> int:
    """`python -m bench stack ARGV`: start the stack and measure it beside its anchors; returns the
    exit code (0 the checks pass, 1 a check failed, 2 error, 130 interrupted)."""
    parser = build_stack_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    checked = _checked(parser, err, validate_stack, args)
    if checked is None:
        return 2
    sweep, _ = checked

    results = new_stack_results(parameters(args))
    code = 0
    try:
        run_stack(args, sweep, err, results)
    except BenchError as exc:
        err.print(f"[red]benchmark failed:[/] {exc}")
        results["error"] = str(exc)
        code = 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        results["error"] = "interrupted"
        code = 130
    except Exception as exc:  # noqa: BLE001 - a failed run still writes what it measured
        err.print_exception()
        results["error"] = f"{type(exc).__name__}: {exc}"
        code = 2
    render_stack(Console(), results)
    if code == 0:
        code = _verdict(results)
    write_json(args.out, results)
    err.print(f"results written to {args.out}")
    return code


def _execute(make: Callable[[], Coroutine[Any, Any, None]], err: Console, results: dict[str, Any]) -> int:
    """Run the coroutine `make()` returns with SIGTERM as an interrupt; 0 when it finished, 2 on a
    `BenchError`, 130 when interrupted (the reason goes to `results["error"]`). Any worker a run
    started and could not stop itself is stopped."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        asyncio.run(make())
        return 0
    except BenchError as exc:
        err.print(f"[red]benchmark failed:[/] {exc}")
        results["error"] = str(exc)
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        results["error"] = "interrupted"
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_all_now()


def _checked(
    parser: argparse.ArgumentParser,
    err: Console,
    check: Callable[[argparse.Namespace], tuple[Any, Any]],
    args: argparse.Namespace,
) -> tuple[Any, Any] | None:
    """`check(args)`, or None after printing the usage and the reason when the options are wrong."""
    try:
        return check(args)
    except UsageError as exc:
        parser.print_usage()
        err.print(f"[red]error:[/] {exc}")
        return None


def _verdict(results: dict[str, Any]) -> int:
    invariants = results.get("invariants")
    return 0 if invariants is None or invariants["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with command-line arguments `argv` (default sys.argv[1:]); returns the
    exit code (0 ok, 1 an invariant failed, 2 error, 130 interrupted). `store` as the first
    argument runs the store API benchmark (`store_main`) instead, `stack` the whole-stack benchmark
    (`stack_main`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["store"]:
        return store_main(argv[1:])
    if argv[:1] == ["stack"]:
        return stack_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    checked = _checked(parser, err, validate, args)
    if checked is None:
        return 2
    target, worker_counts = checked

    results = new_results(args)
    code = _execute(lambda: run_benchmark(args, target, worker_counts, err, results), err, results)
    if code == 0:
        render(Console(), results)
        code = _verdict(results)
    write_json(args.out, results)
    err.print(f"results written to {args.out}")
    if results.get("plot"):
        err.print(f"plot written to {results['plot']}")
    return code
