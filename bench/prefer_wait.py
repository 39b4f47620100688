"""The `Prefer: wait` tail, measured on the real stack: where a waiting `POST /orders` spends its time.

    uv run --no-sync python -m bench.prefer_wait [--project DIR ...] [--rate 250] [--duration 10]
        [--rounds 6] [--plain] [--dump] [--connections 256] [--out /tmp/prefer-wait.json]

Starts the stack as `python -m bench stack` does (`bench.stack.StackRun`: a fresh database, uvicorn
with `--api-processes`, one Celery worker with `--worker-processes`, 20 products), then sends
one-line orders with `Prefer: wait=5` as Poisson arrivals at `--rate`/s for `--duration` seconds
(`bench.stack.open_loop`, at most `--connections` in flight), `--rounds` times after a short
warm-up; `--plain` adds a round without `Prefer` before each. Each request's latency is split with
the order's own timestamps (one clock: everything runs on this machine):

* `pre`: the request sent -> `created_at` (the API's clock when the intake statement was built:
  HTTP, authentication, validation);
* `settle`: `created_at` -> `processed_at` (the worker's clock when its reservation began: the
  dispatch window, the broker, the worker's queue);
* `post`: `processed_at` -> the answer read by the client (the worker's writes and commit, the event
  publish, the API's relay and wake-up, rendering, the response on the socket, the client's read);
* `latency`: the intended start -> the answer (what `bench stack` reports as the submit latency).

With several `--project` directories each gets a stack of its own, all running side by side, and the
rounds are interleaved (A B, B A, A B, ...), so that the noise of a shared machine falls on each
alike: for before/after comparisons. Prints one line per round and a summary of medians over
rounds; the JSON holds every round's figures (with `--dump`, every request's timestamps too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.cli import build_stack_parser
from bench.phases import Run, probe_order
from bench.stack import PROJECT_ROOT, StackRun, _products, new_stack_results, open_loop
from bench.stats import percentile

SPLITS = ("latency", "pre", "settle", "post")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.prefer_wait", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, action="append", help="checkout(s) to start (repeatable)")
    parser.add_argument("--rate", type=float, default=250.0, help="orders/s (Poisson)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals per round")
    parser.add_argument("--rounds", type=int, default=6, help="measured rounds per stack (interleaved)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the rounds")
    parser.add_argument("--wait", type=int, default=5, help="the N of Prefer: wait=N")
    parser.add_argument("--plain", action="store_true", help="also a round without Prefer before each")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/prefer-wait.json"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dump", action="store_true", help="keep every request's timestamps in the JSON")
    return parser.parse_args(argv)


def _ms(values: Sequence[float]) -> dict[str, Any]:
    def q(p: float) -> float | None:
        v = percentile(values, p)
        return None if v is None else round(v * 1000, 1)

    return {
        "count": len(values),
        "p50": q(50),
        "p90": q(90),
        "p99": q(99),
        "max": round(max(values) * 1000, 1) if values else None,
    }


def _round(
    stack: StackRun, token: str, rate: float, duration: float, wait: int | None, seed: int, dump: bool = False
) -> dict[str, Any]:
    """One open-model round; figures of every split, and the mean split of the slowest 1%."""
    marker = stack.db.max_order_id()
    clock = time.time() - time.perf_counter()  # perf_counter -> POSIX seconds
    samples, _ = asyncio.run(
        open_loop(
            stack.target(token),
            [p.id for p in stack.products],
            rate,
            duration,
            stack.args.open_connections,
            wait,
            random.Random(seed),
        )
    )
    stack.db.wait_settled(stack.args.settle_timeout)
    rows = stack.db.conn.execute(
        "SELECT id, extract(epoch FROM created_at), extract(epoch FROM processed_at)"
        " FROM orders WHERE id > %s",
        [marker],
    ).fetchall()
    times = {int(r[0]): (float(r[1]), None if r[2] is None else float(r[2])) for r in rows}
    split: dict[str, list[float]] = {k: [] for k in SPLITS}
    rows_out = []
    for s in samples:
        if s.answered is None or s.order_id not in times:
            continue
        created, processed = times[s.order_id]
        if processed is None:
            continue
        sent, answered = s.sent + clock, s.answered + clock
        row = {
            "order_id": s.order_id,
            "sent_at": sent,
            "answered_at": answered,
            "created_at": created,
            "processed_at": processed,
            "latency": s.answered - s.intended,
            "pre": created - sent,
            "settle": processed - created,
            "post": answered - processed,
        }
        rows_out.append(row)
        for k in SPLITS:
            split[k].append(row[k])
    statuses: dict[str, int] = {}
    for s in samples:
        key = str(s.status) if s.status is not None else f"error:{s.error}"
        statuses[key] = statuses.get(key, 0) + 1
    slowest = sorted(rows_out, key=lambda r: r["latency"])[-max(1, len(rows_out) // 100) :]
    return {
        "prefer": None if wait is None else f"wait={wait}",
        "statuses": statuses,
        **{k: _ms(v) for k, v in split.items()},
        "requests": rows_out if dump else None,
        "slowest_1pct_mean_ms": {k: round(statistics.fmean(r[k] for r in slowest) * 1000, 1) for k in SPLITS}
        if slowest
        else {},
    }


def _line(label: str, fig: dict[str, Any]) -> str:
    parts = [f"{label:<28}"]
    for k in SPLITS:
        f = fig[k]
        parts.append(f"{k} p50/p99 {f['p50']}/{f['p99']}")
    parts.append(f"slowest1% {fig['slowest_1pct_mean_ms']}")
    parts.append(str(fig["statuses"]))
    return "  ".join(parts)


def start_stack(project: Path, args: argparse.Namespace, console: Console, n: int) -> tuple[StackRun, str]:
    """A running stack of `project` (the `n`th: its database and Redis key prefix are its own) with
    its products, proved to process an order; (stack, token). The caller closes the stack."""
    stack_args = build_stack_parser().parse_args(
        [
            "--project",
            str(project),
            "--api-processes",
            str(args.api_processes),
            "--worker-processes",
            str(args.worker_processes),
            "--open-connections",
            str(args.connections),
            "--out",
            str(args.out.with_name(f"{args.out.stem}-p{n}.json")),
            "--settle-timeout",
            "60",
        ]
    )
    stack = StackRun(stack_args, console, new_stack_results({}), pid=os.getpid() * 10 + n)
    try:
        stack.prepare()
        stack.start_api()
        stack.start_worker(args.worker_processes)
        token = stack.token()
        target = stack.target(token)
        stack.products = asyncio.run(_products(target, console, 20, args.seed))
        probe = Run(target=target, console=console, seed=args.seed)
        probe.products = stack.products
        asyncio.run(probe_order(probe, 60))
    except BaseException:
        stack.close()
        raise
    return stack, token


def _summary(console: Console, projects: Sequence[Path], every: Sequence[dict[str, Any]], wait: int) -> None:
    console.print("[bold]medians over rounds[/] (spread min-max), ms")
    for n, project in enumerate(projects):
        for prefer in (None, f"wait={wait}"):
            mine = [f for f in every if f["project"] == str(project) and f["prefer"] == prefer]
            if not mine:
                continue
            cells = []
            for k in SPLITS:
                for q in ("p50", "p99"):
                    values = [f[k][q] for f in mine if f[k][q] is not None]
                    if values:
                        spread = f"{min(values):.0f}-{max(values):.0f}"
                        cells.append(f"{k} {q} {statistics.median(values):.1f} ({spread})")
            console.print(f"p{n} {project.name} {prefer or 'plain'} x{len(mine)}: " + "; ".join(cells))


def main(argv: Sequence[str] | None = None) -> int:
    """Start one stack per `--project`, side by side, warm each up, then run the rounds interleaved
    (A B, B A, A B, ...: the machine's noise falls on every project alike); print and save."""
    args = _parse_args(argv)
    console = Console(highlight=False, width=250)
    projects = [p.resolve() for p in (args.project or [PROJECT_ROOT])]
    every: list[dict[str, Any]] = []
    stacks: list[tuple[StackRun, str]] = []
    try:
        for n, project in enumerate(projects):
            stacks.append(start_stack(project, args, console, n))
        for stack, token in stacks:
            _round(stack, token, args.rate, args.warmup, args.wait, args.seed)
        for i in range(args.rounds):
            order = list(enumerate(stacks))
            if i % 2:
                order.reverse()
            for n, (stack, token) in order:
                seed = args.seed + 100 * i
                kinds: list[int | None] = [None, args.wait] if args.plain else [args.wait]
                for wait in kinds:
                    fig = _round(stack, token, args.rate, args.duration, wait, seed + (wait or 0), args.dump)
                    fig["project"], fig["round"] = str(projects[n]), i
                    console.print(_line(f"p{n} r{i} {'plain' if wait is None else 'prefer'}", fig))
                    every.append(fig)
            args.out.write_text(
                json.dumps(
                    {
                        "args": vars(args) | {"project": [str(p) for p in projects], "out": str(args.out)},
                        "rounds": every,
                    },
                    indent=1,
                )
            )
    finally:
        for stack, _ in stacks:
            stack.close()
    _summary(console, projects, every, args.wait)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
