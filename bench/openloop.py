"""The open model's HTTP client: keep-alive HTTP/1.1 connections, requests written as prepared bytes
and answers parsed by httptools (the C parser uvicorn uses).

The open model's client shares the machine with the stack it measures. aiohttp cost about 0.2 ms of
CPU per request here, more than an order's share of PostgreSQL, so at half the peak the client took
about a tenth of the two cores from the processes under test. A request here is one `write` of bytes
built once per product and one parse of the answer, a fraction of that (the figure is in the open
model's `cpu_ms_per_order.loadgen`).

One request at a time per connection (no pipelining), at most `connections` connections, opened
when no idle one is free; a request that finds them all busy waits for one (the open model counts
that wait as send lag).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

import httptools

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, httptools.HttpParserError)
"""What `OpenLoopClient.send` raises when it gets no HTTP answer (refused, reset, timed out, garbled)."""


def request_bytes(method: str, target: str, host: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """One HTTP/1.1 request, header block and body, ready to write."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection: `send` writes a request and resolves with `(status, body)`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._body = []

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), b"".join(self._body)))
        if not self._parser.should_keep_alive():
            self.close()

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class OpenLoopClient:
    """At most `connections` keep-alive connections to the host and port of `url`; an async context
    manager. `send(request)` takes an idle connection (or opens one, or waits for one), writes the
    prepared request (`request_bytes`) and returns `(status, body)`; it raises `TRANSPORT_ERRORS`,
    `TimeoutError` after `timeout` seconds (the connection is then closed). `on_write`, when given,
    is called just before the request is written, once it has its connection (the open model's
    send time: a wait for a connection is send lag)."""

    def __init__(self, url: str, connections: int, timeout: float) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.netloc = parts.netloc
        self.base_path = parts.path.rstrip("/") + "/"
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max(1, connections))
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    async def __aenter__(self) -> OpenLoopClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for connection in self._all:
            connection.close()
        self._all.clear()
        self._idle.clear()

    def path(self, relative: str) -> str:
        """`relative` (no leading slash) under the URL's path."""
        return self.base_path + relative

    async def send(self, request: bytes, on_write: Callable[[], None] | None = None) -> tuple[int, bytes]:
        async with self._slots:
            connection = await self._take()
            if on_write is not None:
                on_write()
            try:
                answer = await asyncio.wait_for(connection.send(request), self.timeout)
            except BaseException:
                connection.close()
                self._all.discard(connection)
                raise
            if connection.closed:
                self._all.discard(connection)
            else:
                self._idle.append(connection)
            return answer

    async def _take(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
            self._all.discard(connection)
        _, connection = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        self._all.add(connection)
        return connection
