"""The benchmark's HTTP side: httpx clients, and the few core API calls the benchmark makes.

Only the URL given on the command line is contacted; proxies from the environment are ignored
(`trust_env=False`) so loopback traffic never leaves the machine.

Load phases use a `ClientPool`: `size` single-connection AsyncClients handed out first come, first
served. It is a connection pool of `size` connections like one AsyncClient with
`max_connections=size`, without httpcore's pool bookkeeping, whose cost grows with the square of
the pool size and makes one large AsyncClient the bottleneck of a load test
(https://github.com/encode/httpx/issues/3215).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from types import TracebackType
from typing import Any, Self

import httpx

from bench.stats import FINAL_STATUSES, parse_timestamp

MOVEMENTS_PAGE = 500
"""The API's maximum `limit` (CONTRACT.md, "Products")."""

MAX_LONG_POLL_SECONDS = 30.0


class BenchError(Exception):
    """A failure that ends the benchmark with a message (API unreachable, setup refused, ...)."""


@dataclass(frozen=True)
class Target:
    """Where and how to talk to the API."""

    url: str
    timeout: float
    token: str | None = None
    basic: tuple[str, str] | None = None

    def client(self, connections: int, *, extra_read: float = 0.0) -> httpx.AsyncClient:
        """An AsyncClient whose pool holds at most `connections` connections.

        `extra_read` is added to the read timeout (for long polls, which the server may hold).
        """
        headers = {"Accept": "application/json", "User-Agent": "orderflow-bench"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        auth = httpx.BasicAuth(*self.basic) if self.basic else None
        return httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            auth=auth,
            timeout=httpx.Timeout(self.timeout, read=self.timeout + extra_read),
            limits=httpx.Limits(
                max_connections=connections,
                max_keepalive_connections=connections,
                keepalive_expiry=30.0,
            ),
            trust_env=False,
            follow_redirects=False,
            verify=self._ssl_context,
        )

    def pool(self, size: int, *, extra_read: float = 0.0) -> ClientPool:
        """A ClientPool of `size` connections (see the module docstring)."""
        return ClientPool([self.client(1, extra_read=extra_read) for _ in range(max(1, size))])

    @cached_property
    def _ssl_context(self) -> ssl.SSLContext:
        # one context for every client: building one per client costs ~20 ms each
        return ssl.create_default_context()


class ClientPool:
    """Single-connection clients leased first come, first served; an async context manager that
    closes them all on exit."""

    def __init__(self, clients: list[httpx.AsyncClient]) -> None:
        self.clients = clients
        self._idle: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for client in clients:
            self._idle.put_nowait(client)

    @property
    def size(self) -> int:
        return len(self.clients)

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client (one connection) for the duration of one request; waits while all are busy."""
        client = await self._idle.get()
        try:
            yield client
        finally:
            self._idle.put_nowait(client)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients), return_exceptions=True)


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
        return self.status in FINAL_STATUSES


def describe_response(response: httpx.Response) -> str:
    """A short, single-line description of an error response for messages."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]!r}"
    if isinstance(body, dict):
        parts = [str(body.get(k)) for k in ("error", "message") if body.get(k)]
        if parts:
            return f"HTTP {response.status_code}: {' - '.join(parts)}"
    return f"HTTP {response.status_code}: {str(body)[:200]}"


async def check_reachable(client: httpx.AsyncClient) -> None:
    """GET /healthz; raises BenchError when the API does not answer 200."""
    try:
        response = await client.get("/healthz")
    except httpx.HTTPError as exc:
        raise BenchError(f"the API at {client.base_url} is not reachable: {exc!r}") from exc
    if response.status_code != 200:
        raise BenchError(f"/healthz answered {describe_response(response)}")


async def create_product(client: httpx.AsyncClient, name: str, price: float, stock: int) -> dict:
    """POST /products -> the created product; raises BenchError unless 201."""
    response = await client.post("/products", json={"name": name, "price": price, "stock": stock})
    if response.status_code != 201:
        raise BenchError(f"creating a product failed: {describe_response(response)}")
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("id"), int):
        raise BenchError(f"unexpected product body: {str(body)[:200]}")
    return body


async def get_product(client: httpx.AsyncClient, product_id: int) -> dict:
    response = await client.get(f"/products/{product_id}")
    if response.status_code != 200:
        raise BenchError(f"reading product {product_id} failed: {describe_response(response)}")
    return response.json()


async def list_movements(client: httpx.AsyncClient, product_id: int) -> list[dict]:
    """Every stock movement of a product, paging with limit/offset by `X-Total-Count`."""
    movements: list[dict] = []
    total: int | None = None
    offset = 0
    max_pages = 10_000  # a bound, whatever the server says
    for _ in range(max_pages):
        response = await client.get(
            f"/products/{product_id}/movements",
            params={"limit": MOVEMENTS_PAGE, "offset": offset},
        )
        if response.status_code != 200:
            raise BenchError(
                f"reading movements of product {product_id} failed: {describe_response(response)}"
            )
        page = response.json()
        if not isinstance(page, list):
            raise BenchError(f"unexpected movements body: {str(page)[:200]}")
        header = response.headers.get("X-Total-Count")
        if header is not None and header.isdigit():
            total = int(header)
        movements.extend(page)
        offset += len(page)
        if not page or (total is not None and offset >= total):
            break
        if total is None and len(page) < MOVEMENTS_PAGE:
            break
    return movements


async def submit_order(client: httpx.AsyncClient, record: OrderRecord) -> None:
    """POST /orders for `record` (one line); fills in the outcome of the request, never raises
    for HTTP errors or transport failures (they are counted)."""
    body = {"products": [{"product_id": record.product_id, "quantity": record.quantity}]}
    record.sent_at = time.perf_counter()
    try:
        response = await client.post("/orders", json=body)
    except httpx.HTTPError as exc:
        record.answered_at = None
        record.error = type(exc).__name__
        return
    record.answered_at = time.perf_counter()
    record.http_status = response.status_code
    payload = _json_or_none(response)
    if response.status_code == 202 and isinstance(payload, dict):
        order_id = payload.get("id")
        if isinstance(order_id, int):
            record.order_id = order_id
            _apply_order(record, payload, record.answered_at)
            return
        record.error = "bad_body"
        return
    code = payload.get("code") if isinstance(payload, dict) else None
    record.error = str(code) if code else f"http_{response.status_code}"


async def follow_order(pool: ClientPool, record: OrderRecord, deadline: float, wait: float = 10.0) -> None:
    """Long-poll GET /orders/{id}?wait=N until the order is final or `deadline` (perf_counter
    seconds) passes; each poll leases a client from `pool`. Transport errors are retried after a
    short pause until the deadline."""
    if record.order_id is None:
        return
    while not record.is_final:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        hold = max(0.0, min(wait, MAX_LONG_POLL_SECONDS, remaining))
        try:
            async with pool.lease() as client:
                response = await client.get(f"/orders/{record.order_id}", params={"wait": round(hold, 3)})
        except httpx.HTTPError as exc:
            record.extra["poll_errors"] = record.extra.get("poll_errors", 0) + 1
            record.extra["last_poll_error"] = type(exc).__name__
            await _pause(0.2, deadline)
            continue
        seen = time.perf_counter()
        payload = _json_or_none(response)
        if response.status_code == 200 and isinstance(payload, dict):
            _apply_order(record, payload, seen)
            if not record.is_final and hold < 0.05:
                return  # the deadline is here
        else:
            record.extra["poll_errors"] = record.extra.get("poll_errors", 0) + 1
            record.extra["last_poll_error"] = f"http_{response.status_code}"
            await _pause(0.2, deadline)


def _apply_order(record: OrderRecord, payload: dict, seen_at: float) -> None:
    status = payload.get("status")
    if isinstance(status, str):
        record.status = status.lower()
    if record.is_final and record.final_observed_at is None:
        record.final_observed_at = seen_at
        record.server_final_at = parse_timestamp(payload.get("updated_at"))


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


async def _pause(seconds: float, deadline: float) -> None:
    await asyncio.sleep(max(0.0, min(seconds, deadline - time.perf_counter())))
