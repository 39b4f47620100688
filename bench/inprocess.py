"""The API's CPU per request, measured in one process without HTTP: the ASGI app (`api.main.create_app`)
called in a loop with the scope uvicorn would build, on a real PostgreSQL and Redis, and the process's
CPU (`time.process_time`, every thread) and the event loop thread's (`time.thread_time`) divided by
the number of requests. No socket, no uvicorn, no load generator: what is left is the app's own work
(middleware, dependencies, validation, the intake statement's client side, the dispatcher's publish,
rendering).

    uv run --no-sync python -m bench.inprocess [--requests 3000] [--concurrency 8] [--rounds 3]
        [--path orders|healthz|both] [--prefer-wait 5] [--log-level WARNING]

It makes (and drops at the end) its own database `orderflow_inproc_<pid>` on the PostgreSQL of
`--admin-dsn`, migrated by Alembic, and uses Redis db 14 with a key prefix of its own (deleted at the
end). The orders are one-line orders of 20 products from an admin's bearer token, as `bench stack`
sends them. Prints one line per round: requests, CPU ms per request (process and loop thread), wall
ms per request, the CPU every PostgreSQL and Redis process on the machine used meanwhile (own ticks
from /proc: run it on a quiet machine), and the statuses seen. Run it under `py-spy record` to see
where the CPU goes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import sys
import time
from collections import Counter
from typing import Any

from bench import procstat
from bench.scratch import scratch_backends


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round (default 3000)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300, help="requests before the first round")
    parser.add_argument("--path", choices=("orders", "healthz", "both"), default="both")
    parser.add_argument("--prefer-wait", type=int, default=0, help="send Prefer: wait=N (needs a worker)")
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the app (bench stack: WARNING)")
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    return parser.parse_args(argv)


class Driver:
    """Calls the ASGI app with a uvicorn-like scope and collects the response."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.statuses: Counter[int] = Counter()

    async def request(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8000"), *headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        status = 0
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        self.statuses[status] += 1
        return status, b"".join(chunks)


#: The process names whose CPU a round also reports (the servers' own ticks, from /proc).
SERVERS = ("postgres", "redis-server")


def _server_ticks() -> dict[str, dict[procstat.ProcessKey, int]]:
    """Own CPU ticks of every PostgreSQL and Redis process on the machine, by process name."""
    stats = procstat.read_all()
    return {
        name: procstat.pid_totals([pid for pid, stat in stats.items() if stat.comm == name], stats)
        for name in SERVERS
    }


async def _run_round(
    driver: Driver, make: Any, count: int, concurrency: int
) -> tuple[float, float, float, dict[str, float]]:
    """(process CPU s, loop thread CPU s, wall s, {server: CPU s}) of `count` requests, `concurrency`
    at a time. The servers' CPU counts everything they did meanwhile, so run it on a quiet machine."""
    remaining = count

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await make()

    servers0 = _server_ticks()
    cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    cpu, thread, wall = time.process_time() - cpu0, time.thread_time() - thread0, time.perf_counter() - wall0
    servers1 = _server_ticks()
    server_cpu = {
        name: procstat.ticks_to_ms(procstat.own_delta(servers0[name], servers1[name]).ticks) / 1000
        for name in SERVERS
    }
    return cpu, thread, wall, server_cpu


async def _measure(args: argparse.Namespace) -> None:
    from api.main import create_app
    from core.config import Settings

    cfg = Settings()
    app = create_app(cfg, start_embedded_worker=False)
    driver = Driver(app)
    json_headers = [(b"content-type", b"application/json")]
    async with app.router.lifespan_context(app):
        basic = base64.b64encode(
            f"{os.environ['FIRST_ADMIN_USERNAME']}:{os.environ['FIRST_ADMIN_PASSWORD']}".encode()
        )
        status, raw = await driver.request("POST", "/login", [(b"authorization", b"Basic " + basic)])
        assert status == 200, (status, raw)
        token = json.loads(raw)["access_token"]
        auth = [(b"authorization", f"Bearer {token}".encode())]
        product_ids = []
        for n in range(20):
            body = json.dumps({"name": f"bench product {n}", "price": "9.99", "stock": 1_000_000_000})
            status, raw = await driver.request("POST", "/products", [*json_headers, *auth], body.encode())
            assert status == 201, (status, raw)
            product_ids.append(json.loads(raw)["id"])
        order_headers = [*json_headers, *auth]
        if args.prefer_wait:
            order_headers.append((b"prefer", f"wait={args.prefer_wait}".encode()))
        rng = random.Random(1)

        async def order() -> None:
            body = b'{"product_id":%d,"quantity":1}' % rng.choice(product_ids)
            await driver.request("POST", "/orders", order_headers, body)

        async def healthz() -> None:
            await driver.request("GET", "/healthz", [])

        paths = {"orders": [order], "healthz": [healthz], "both": [order, healthz]}[args.path]
        for make in paths:
            name = make.__name__
            await _run_round(driver, make, args.warmup, args.concurrency)
            for index in range(args.rounds):
                driver.statuses.clear()
                cpu, thread, wall, servers = await _run_round(driver, make, args.requests, args.concurrency)
                n = args.requests
                print(
                    f"{name:8} round {index + 1}: {n} requests, CPU {cpu / n * 1000:.3f} ms/req "
                    f"(loop thread {thread / n * 1000:.3f}), wall {wall / n * 1000:.3f} ms/req, "
                    f"PostgreSQL {servers['postgres'] / n * 1000:.3f} ms/req, "
                    f"Redis {servers['redis-server'] / n * 1000:.3f} ms/req, "
                    f"statuses {dict(driver.statuses)}",
                    flush=True,
                )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    settings = {
        "JWT_SECRET_KEY": "inprocess-bench-secret-key-of-at-least-32-bytes",
        "FIRST_ADMIN_USERNAME": "benchadmin",
        "FIRST_ADMIN_PASSWORD": "bench-admin-password",
        "STORE_RATE_LIMIT": "1000000/hour",
        "LOG_LEVEL": args.log_level,
        "BCRYPT_ROUNDS": "4",
    }
    with scratch_backends("inproc", args.admin_dsn, args.redis_url, settings):
        asyncio.run(_measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
