"""The open model's lean HTTP client (`bench.openloop`) against a small stand-in server on a
loopback port."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from bench.openloop import TRANSPORT_ERRORS, OpenLoopClient, request_bytes
from tests.bench.stub_server import serving


@dataclass
class Server:
    base: str = ""
    peers: list[tuple] = field(default_factory=list)
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()

    async def orders(request: web.Request) -> web.Response:
        state.peers.append(request.transport.get_extra_info("peername"))
        state.seen.append((request.path, dict(request.headers), await request.read()))
        return web.json_response({"id": len(state.seen), "status": "pending"}, status=202)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6)  # past the client's timeout (0.2 s); the server's clean-up waits for it
        return web.json_response({})

    async def closing(request: web.Request) -> web.Response:
        return web.Response(status=201, text="bye", headers={"Connection": "close"})

    app = web.Application()
    app.router.add_post("/base/orders", orders)
    app.router.add_post("/base/slow", slow)
    app.router.add_post("/base/closing", closing)
    async with serving(app) as base:
        state.base = f"{base}/base/"
        yield state


def test_request_bytes_is_one_http_request() -> None:
    raw = request_bytes("POST", "/orders", "h:1", {"Prefer": "wait=5"}, b'{"a":1}')
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /orders HTTP/1.1",
        b"Host: h:1",
        b"Content-Length: 7",
        b"Prefer: wait=5",
    ]
    assert body == b'{"a":1}'


async def test_requests_reuse_at_most_the_given_connections(server: Server) -> None:
    async with OpenLoopClient(server.base, connections=3, timeout=5) as client:
        path = client.path("orders")
        assert path == "/base/orders"
        request = request_bytes(
            "POST", path, client.netloc, {"Content-Type": "application/json"}, b'{"product_id": 4}'
        )
        answers = await asyncio.gather(*(client.send(request) for _ in range(30)))
    assert sorted(json.loads(body)["id"] for _, body in answers) == list(range(1, 31))
    assert {status for status, _ in answers} == {202}
    assert 1 <= len(set(server.peers)) <= 3  # keep-alive: 30 requests over at most 3 connections
    path, headers, body = server.seen[0]
    assert path == "/base/orders" and body == b'{"product_id": 4}'
    assert headers["Content-Type"] == "application/json"


async def test_a_connection_the_server_closes_is_replaced(server: Server) -> None:
    async with OpenLoopClient(server.base, connections=1, timeout=5) as client:
        closing = request_bytes("POST", client.path("closing"), client.netloc, {}, b"")
        assert await client.send(closing) == (201, b"bye")
        assert await client.send(closing) == (201, b"bye")  # on a new connection
        order = request_bytes("POST", client.path("orders"), client.netloc, {}, b"")
        assert (await client.send(order))[0] == 202


async def test_a_late_answer_times_out_and_frees_its_connection(server: Server) -> None:
    async with OpenLoopClient(server.base, connections=1, timeout=0.2) as client:
        with pytest.raises(TimeoutError):
            await client.send(request_bytes("POST", client.path("slow"), client.netloc, {}, b""))
        status, _ = await client.send(request_bytes("POST", client.path("orders"), client.netloc, {}, b""))
        assert status == 202


async def test_nobody_listening_is_a_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with OpenLoopClient(f"http://127.0.0.1:{port}/", connections=1, timeout=1) as client:
        with pytest.raises(TRANSPORT_ERRORS):
            await client.send(request_bytes("POST", client.path("orders"), client.netloc, {}, b""))


async def test_on_write_marks_the_write_after_the_wait_for_a_connection(server: Server) -> None:
    loop = asyncio.get_running_loop()
    written: list[float] = []
    async with OpenLoopClient(server.base, connections=1, timeout=5) as client:
        slow = request_bytes("POST", client.path("slow"), client.netloc, {}, b"")
        order = request_bytes("POST", client.path("orders"), client.netloc, {}, b"")
        first = asyncio.ensure_future(client.send(slow, on_write=lambda: written.append(loop.time())))
        await asyncio.sleep(0)  # the first takes the only connection
        second = await client.send(order, on_write=lambda: written.append(loop.time()))
        await first
    assert second[0] == 202
    assert len(written) == 2
    assert written[1] - written[0] >= 0.5  # written once the slow answer (0.6 s) freed the connection
