"""The benchmark's HTTP side: aiohttp sessions, and the few core API calls the benchmark makes.

Only the URL given on the command line is contacted; proxies from the environment are ignored
(`trust_env=False`) so loopback traffic never leaves the machine.

The client is aiohttp rather than httpx because the load generator shares the machine with the
service: on a 2-core host httpx spends far more CPU per request than the API it measures (its
connection pool bookkeeping grows with the pool size, https://github.com/encode/httpx/issues/3215,
on top of a high per-request cost), so an httpx generator takes a core from the API, the workers and
the database and ends up measuring itself. One `aiohttp.ClientSession` per phase (per pool of
connections) is enough: its `TCPConnector` keeps at most `connections` keep-alive connections.

Every request goes through `fetch`, which reads the whole body inside the response's context, so
each connection goes back to the pool (an unread body would make aiohttp close it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

try:
    import aiohttp
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "the benchmark needs aiohttp, which is in the dev dependency group: run `uv sync` (without --no-dev)",
        name="aiohttp",
    ) from exc
from bench.stats import parse_timestamp
from core.orders.states import SETTLED_STATUSES

MOVEMENTS_PAGE = 500
"""The API's maximum `limit` (CONTRACT.md, "Products")."""

MAX_LONG_POLL_SECONDS = 30.0

KEEPALIVE_SECONDS = 30.0
"""How long an idle connection stays in the pool."""

TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)
"""What a request raises when it gets no HTTP answer (connection refused or reset, timeout)."""


class BenchError(Exception):
    """A failure that ends the benchmark with a message (API unreachable, setup refused, ...)."""


@dataclass(frozen=True)
class Target:
    """Where and how to talk to the API."""

    url: str
    timeout: float
    token: str | None = None
    basic: tuple[str, str] | None = None
    login: bool = False
    """Exchange `basic` for a token at `POST /login` before the run (then `token` is sent)."""

    def session(self, connections: int) -> aiohttp.ClientSession:
        """A ClientSession holding at most `connections` keep-alive connections; an async context
        manager. Paths given to it are relative to `url` (no leading slash), and each request
        times out after `timeout` seconds in all (long polls add the time they ask the server to
        hold, see `follow_order`). Must be called with an event loop running."""
        connections = max(1, connections)
        headers = {"Accept": "application/json", "User-Agent": "orderflow-bench"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.basic:
            headers["Authorization"] = aiohttp.encode_basic_auth(*self.basic)  # UTF-8
        connector = aiohttp.TCPConnector(
            limit=connections,
            limit_per_host=connections,
            ttl_dns_cache=300,
            keepalive_timeout=KEEPALIVE_SECONDS,
        )
        return aiohttp.ClientSession(
            base_url=self.url.rstrip("/") + "/",
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            trust_env=False,
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer, body read and connection released."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    payload: Any
    """The body as JSON; None when it is empty or not JSON (see `is_json`)."""
    is_json: bool


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: dict[str, Any] | None = None,
    client_timeout: aiohttp.ClientTimeout | None = None,
) -> Reply:
    """One request; the body is always read (and parsed as JSON when it is JSON) before the
    response is released. Raises TRANSPORT_ERRORS when there is no HTTP answer."""
    options: dict[str, Any] = {"allow_redirects": False}
    if json is not None:
        options["json"] = json
    if params is not None:
        options["params"] = params
    if client_timeout is not None:  # timeout=None would mean "no timeout at all" to aiohttp
        options["timeout"] = client_timeout
    async with session.request(method, path, **options) as response:
        body = await response.read()
        payload, is_json = None, False
        if body.strip():
            try:
                payload = await response.json(content_type=None)
            except ValueError:  # not JSON, or not text in its charset
                payload = None
            else:
                is_json = True
        return Reply(response.status, response.headers, body, payload, is_json)


@dataclass(slots=True)
class OrderRecord:
    """One order submitted by the benchmark, and what became of it."""

    product_id: int
    quantity: int
    phase: str
    order_id: int | None = None
    http_status: int | None = None
    """The POST's status code; None when the request itself failed (see `error`)."""
    error: str | None = None
    """Refusal code (INSUFFICIENT_STOCK), `http_<status>`, or the exception class name."""
    status: str | None = None
    """The order's last seen status (None when the order was never created)."""
    intended_at: float = 0.0
    """perf_counter seconds when the order should have been sent (open model) or was sent."""
    sent_at: float = 0.0
    answered_at: float | None = None
    final_observed_at: float | None = None
    """perf_counter seconds when the client saw a final status."""
    server_final_at: float | None = None
    """The order's `updated_at` as POSIX seconds, when it was seen final."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.http_status == 202 and self.order_id is not None

    @property
    def refused(self) -> bool:
        return self.error == "INSUFFICIENT_STOCK"

    @property
    def is_final(self) -> bool:
        return self.status in SETTLED_STATUSES


def describe_response(reply: Reply) -> str:
    """A short, single-line description of an error response for messages."""
    if not reply.is_json:
        return f"HTTP {reply.status}: {reply.body.decode(errors='replace')[:200]!r}"
    body = reply.payload
    if isinstance(body, dict):
        parts = [str(body.get(k)) for k in ("error", "message") if body.get(k)]
        if parts:
            return f"HTTP {reply.status}: {' - '.join(parts)}"
    return f"HTTP {reply.status}: {str(body)[:200]}"


async def check_reachable(session: aiohttp.ClientSession, url: str) -> None:
    """GET /healthz; raises BenchError when the API at `url` does not answer 200."""
    try:
        reply = await fetch(session, "GET", "healthz")
    except TRANSPORT_ERRORS as exc:
        raise BenchError(f"the API at {url} is not reachable: {exc!r}") from exc
    if reply.status != 200:
        raise BenchError(f"/healthz answered {describe_response(reply)}")


async def login(session: aiohttp.ClientSession, user: str, password: str) -> str:
    """POST /login with Basic credentials -> the bearer token; raises BenchError unless 200."""
    headers = {"Authorization": aiohttp.encode_basic_auth(user, password)}
    async with session.post("login", headers=headers, allow_redirects=False) as response:
        body = await response.read()
        if response.status != 200:
            raise BenchError(f"POST /login answered HTTP {response.status}: {body[:200]!r}")
        payload = await response.json(content_type=None)
    token = payload.get("access_token") if isinstance(payload, dict) else None
    if not isinstance(token, str):
        raise BenchError(f"unexpected /login body: {body[:200]!r}")
    return token


async def check_credentials(session: aiohttp.ClientSession) -> None:
    """GET /metrics (managers and admins only, like creating products) with the run's credentials;
    BenchError with a hint on 401/403."""
    reply = await fetch(session, "GET", "metrics")
    if reply.status in (401, 403):
        raise BenchError(
            f"the API refused the credentials ({describe_response(reply)}); the run creates products, "
            "so pass a manager's or an admin's: --login USER:PASS, --token TOKEN or --basic USER:PASS"
        )
    if reply.status != 200:
        raise BenchError(f"GET /metrics answered {describe_response(reply)}")


async def create_product(session: aiohttp.ClientSession, name: str, price: float, stock: int) -> dict:
    """POST /products -> the created product; raises BenchError unless 201."""
    reply = await fetch(session, "POST", "products", json={"name": name, "price": price, "stock": stock})
    if reply.status != 201:
        raise BenchError(f"creating a product failed: {describe_response(reply)}")
    body = reply.payload
    if not isinstance(body, dict) or not isinstance(body.get("id"), int):
        raise BenchError(f"unexpected product body: {str(body)[:200]}")
    return body


async def get_product(session: aiohttp.ClientSession, product_id: int) -> dict:
    reply = await fetch(session, "GET", f"products/{product_id}")
    if reply.status != 200:
        raise BenchError(f"reading product {product_id} failed: {describe_response(reply)}")
    if not isinstance(reply.payload, dict):
        raise BenchError(f"unexpected product body: {describe_response(reply)}")
    return reply.payload


async def list_movements(session: aiohttp.ClientSession, product_id: int) -> list[dict]:
    """Every stock movement of a product, paging with limit/offset by `X-Total-Count`."""
    movements: list[dict] = []
    total: int | None = None
    offset = 0
    max_pages = 10_000  # a bound, whatever the server says
    for _ in range(max_pages):
        reply = await fetch(
            session,
            "GET",
            f"products/{product_id}/movements",
            params={"limit": MOVEMENTS_PAGE, "offset": offset},
        )
        if reply.status != 200:
            raise BenchError(f"reading movements of product {product_id} failed: {describe_response(reply)}")
        page = reply.payload
        if not isinstance(page, list):
            raise BenchError(f"unexpected movements body: {str(page)[:200]}")
        header = reply.headers.get("X-Total-Count")
        if header is not None and header.isdigit():
            total = int(header)
        movements.extend(page)
        offset += len(page)
        if not page or (total is not None and offset >= total):
            break
        if total is None and len(page) < MOVEMENTS_PAGE:
            break
    return movements


async def submit_order(session: aiohttp.ClientSession, record: OrderRecord) -> None:
    """POST /orders for `record` (one line); fills in the outcome of the request, never raises
    for HTTP errors or transport failures (they are counted)."""
    body = {"products": [{"product_id": record.product_id, "quantity": record.quantity}]}
    record.sent_at = time.perf_counter()
    try:
        reply = await fetch(session, "POST", "orders", json=body)
    except TRANSPORT_ERRORS as exc:
        record.answered_at = None
        record.error = type(exc).__name__
        return
    record.answered_at = time.perf_counter()
    record.http_status = reply.status
    payload = reply.payload
    if reply.status == 202 and isinstance(payload, dict):
        order_id = payload.get("id")
        if isinstance(order_id, int):
            record.order_id = order_id
            _apply_order(record, payload, record.answered_at)
            return
        record.error = "bad_body"
        return
    code = payload.get("code") if isinstance(payload, dict) else None
    record.error = str(code) if code else f"http_{reply.status}"


async def follow_order(
    session: aiohttp.ClientSession,
    record: OrderRecord,
    deadline: float,
    wait: float = 10.0,
    slots: asyncio.Semaphore | None = None,
) -> None:
    """Long-poll GET /orders/{id}?wait=N until the order is final or `deadline` (perf_counter
    seconds) passes. Each poll may take the session's timeout plus the time it asks the server to
    hold. With `slots`, each poll holds one while it runs (see `phases.open_model`). Transport
    errors are retried after a short pause until the deadline."""
    if record.order_id is None:
        return
    path = f"orders/{record.order_id}"
    base_timeout = session.timeout.total
    while not record.is_final:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        hold = max(0.0, min(wait, MAX_LONG_POLL_SECONDS, remaining))
        timeout = None if base_timeout is None else aiohttp.ClientTimeout(total=base_timeout + hold)
        try:
            async with slots or nullcontext():
                reply = await fetch(
                    session, "GET", path, params={"wait": round(hold, 3)}, client_timeout=timeout
                )
        except TRANSPORT_ERRORS as exc:
            record.extra["poll_errors"] = record.extra.get("poll_errors", 0) + 1
            record.extra["last_poll_error"] = type(exc).__name__
            await _pause(0.2, deadline)
            continue
        seen = time.perf_counter()
        payload = reply.payload
        if reply.status == 200 and isinstance(payload, dict):
            _apply_order(record, payload, seen)
            if not record.is_final and hold < 0.05:
                return  # the deadline is here
        else:
            record.extra["poll_errors"] = record.extra.get("poll_errors", 0) + 1
            record.extra["last_poll_error"] = f"http_{reply.status}"
            await _pause(0.2, deadline)


def _apply_order(record: OrderRecord, payload: dict, seen_at: float) -> None:
    status = payload.get("status")
    if isinstance(status, str):
        record.status = status.lower()
    if record.is_final and record.final_observed_at is None:
        record.final_observed_at = seen_at
        record.server_final_at = parse_timestamp(payload.get("updated_at"))


async def _pause(seconds: float, deadline: float) -> None:
    await asyncio.sleep(max(0.0, min(seconds, deadline - time.perf_counter())))
