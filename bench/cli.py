"""`python -m bench` / `orderflow bench`: the load benchmark of a running orderflow API.

Exit codes: 0 every invariant holds; 1 an invariant failed; 2 bad options, the API unreachable or a
phase could not run; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import signal
import time
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
from bench.report import machine_info, plot_sweep, render, timestamp, write_json
from bench.stats import arrival_schedule
from bench.workers import CeleryWorker, stop_all_now

DEFAULT_OUT = Path("bench/results/latest.json")
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


class UsageError(Exception):
    pass


def validate(args: argparse.Namespace) -> tuple[Target, list[int]]:
    """Check option ranges and combinations; returns the target and the worker counts."""

    def need(condition: bool, message: str) -> None:
        if not condition:
            raise UsageError(message)

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
    need(
        sum(bool(x) for x in (args.token, args.basic, args.login)) <= 1,
        "give one of --login, --token and --basic",
    )
    if args.rate is not None and not args.skip_open:
        need(
            args.rate * args.duration <= MAX_OPEN_ORDERS,
            f"--rate x --duration must be <= {MAX_OPEN_ORDERS} orders",
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

    target = Target(
        url=args.url.rstrip("/"), timeout=args.timeout, token=args.token, basic=basic, login=bool(args.login)
    )
    return target, workers


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

    async with target.session(2) as session:
        await check_reachable(session, target.url)
        if target.login and target.basic:
            token = await login(session, *target.basic)
            target = replace(target, token=token, basic=None, login=False)
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with command-line arguments `argv` (default sys.argv[1:]); returns the
    exit code (0 ok, 1 an invariant failed, 2 error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        target, worker_counts = validate(args)
    except UsageError as exc:
        parser.print_usage()
        err.print(f"[red]error:[/] {exc}")
        return 2

    results = new_results(args)
    code = 0
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        asyncio.run(run_benchmark(args, target, worker_counts, err, results))
    except BenchError as exc:
        err.print(f"[red]benchmark failed:[/] {exc}")
        results["error"] = str(exc)
        code = 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        results["error"] = "interrupted"
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_all_now()  # workers an interrupted run could not stop itself

    if code == 0:
        render(Console(), results)
        invariants = results.get("invariants")
        code = 0 if invariants is None or invariants["passed"] else 1
    write_json(args.out, results)
    err.print(f"results written to {args.out}")
    if results.get("plot"):
        err.print(f"plot written to {results['plot']}")
    return code
