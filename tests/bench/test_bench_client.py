"""The benchmark's HTTP client (aiohttp) against a small stand-in server on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from bench.client import (
    BenchError,
    OrderRecord,
    Target,
    check_reachable,
    describe_response,
    fetch,
    follow_order,
    list_movements,
    submit_order,
)
from tests.bench.stub_server import serving

pytestmark = pytest.mark.pure


@dataclass
class Stub:
    """What the stand-in server saw, and how it answers."""

    base: str = ""
    peers: set[tuple] = field(default_factory=set)
    requests: list[web.Request] = field(default_factory=list)
    movements: int = 1234
    order_status: str = "confirmed"
    hold: float = 0.0


def _app(stub: Stub) -> web.Application:
    async def record(request: web.Request) -> None:
        stub.requests.append(request)
        stub.peers.add(request.transport.get_extra_info("peername"))

    async def healthz(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"status": "ok"})

    async def teapot(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=503, text="<html>down</html>", content_type="text/html")

    async def empty(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=500)

    async def orders(request: web.Request) -> web.Response:
        await record(request)
        body = await request.json()
        line = body["products"][0]
        if line["product_id"] == 404:
            return web.json_response({"error": "Bad Request", "code": "INSUFFICIENT_STOCK"}, status=400)
        return web.json_response({"id": 7, "status": "pending"}, status=202)

    async def order(request: web.Request) -> web.Response:
        await record(request)
        wait = float(request.query.get("wait", "0"))
        await asyncio.sleep(min(wait, stub.hold))
        return web.json_response(
            {"id": int(request.match_info["id"]), "status": stub.order_status, "updated_at": None}
        )

    async def movements(request: web.Request) -> web.Response:
        await record(request)
        limit, offset = int(request.query["limit"]), int(request.query["offset"])
        page = [{"delta": -1, "order_id": i} for i in range(offset, min(offset + limit, stub.movements))]
        return web.json_response(page, headers={"X-Total-Count": str(stub.movements)})

    app = web.Application()
    for prefix in ("", "/api"):
        app.router.add_get(f"{prefix}/healthz", healthz)
        app.router.add_get(f"{prefix}/down", teapot)
        app.router.add_get(f"{prefix}/empty", empty)
        app.router.add_post(f"{prefix}/orders", orders)
        app.router.add_get(prefix + "/orders/{id}", order)
        app.router.add_get(prefix + "/products/{id}/movements", movements)
    return app


def _nobody_listening() -> str:
    """The URL of a loopback port nothing listens on (one the kernel just handed out)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    state = Stub()
    async with serving(_app(state)) as base:
        state.base = base
        yield state


async def test_session_settings() -> None:
    target = Target(url="http://127.0.0.1:1", timeout=12.5, token="t0k")
    async with target.session(32) as session:
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector.limit == 32
        assert connector.limit_per_host == 32
        assert not connector.force_close
        assert session.timeout.total == 12.5
        assert session.trust_env is False
        assert session.headers["Authorization"] == "Bearer t0k"
        assert session.headers["User-Agent"] == "orderflow-bench"


async def test_requests_share_keepalive_connections(stub: Stub) -> None:
    async with Target(url=stub.base, timeout=5).session(2) as session:
        for _ in range(20):
            reply = await fetch(session, "GET", "healthz")
            assert reply.status == 200
            assert reply.payload == {"status": "ok"}
    assert len(stub.peers) == 1


async def test_error_bodies_are_read_and_described(stub: Stub) -> None:
    async with Target(url=stub.base, timeout=5).session(1) as session:
        down = await fetch(session, "GET", "down")
        assert not down.is_json
        assert describe_response(down) == "HTTP 503: '<html>down</html>'"
        empty = await fetch(session, "GET", "empty")
        assert (empty.status, empty.is_json) == (500, False)
        assert describe_response(empty) == "HTTP 500: ''"
    assert len(stub.peers) == 1  # both error answers left the connection reusable


async def test_check_reachable(stub: Stub) -> None:
    async with Target(url=stub.base, timeout=5).session(1) as session:
        await check_reachable(session, stub.base)
    nobody = _nobody_listening()
    async with Target(url=nobody, timeout=2).session(1) as session:
        with pytest.raises(BenchError, match="not reachable"):
            await check_reachable(session, nobody)


async def test_a_path_in_the_url_is_kept(stub: Stub) -> None:
    async with Target(url=stub.base + "/api", timeout=5).session(1) as session:
        record = OrderRecord(product_id=1, quantity=1, phase="t")
        await submit_order(session, record)
    assert record.accepted
    assert stub.requests[-1].path == "/api/orders"


async def test_basic_credentials_are_sent(stub: Stub) -> None:
    async with Target(url=stub.base, timeout=5, basic=("bob", "pässword")).session(1) as session:
        await fetch(session, "GET", "healthz")
    sent = stub.requests[-1].headers["Authorization"]
    assert sent == "Basic " + base64.b64encode("bob:pässword".encode()).decode()


async def test_submit_order_outcomes(stub: Stub) -> None:
    async with Target(url=stub.base, timeout=5).session(1) as session:
        accepted = OrderRecord(product_id=1, quantity=1, phase="t")
        await submit_order(session, accepted)
        refused = OrderRecord(product_id=404, quantity=1, phase="t")
        await submit_order(session, refused)
    assert (accepted.http_status, accepted.order_id, accepted.status) == (202, 7, "pending")
    assert accepted.answered_at is not None and accepted.answered_at >= accepted.sent_at
    assert refused.refused and refused.http_status == 400 and not refused.accepted

    async with Target(url=_nobody_listening(), timeout=2).session(1) as session:
        failed = OrderRecord(product_id=1, quantity=1, phase="t")
        await submit_order(session, failed)
    assert failed.http_status is None and failed.answered_at is None
    assert failed.error  # the exception class name


async def test_long_polls_get_the_hold_on_top_of_the_timeout(stub: Stub) -> None:
    stub.hold = 0.6  # longer than the session's timeout: the poll must still succeed
    record = OrderRecord(product_id=1, quantity=1, phase="t", order_id=7, http_status=202)
    slots = asyncio.Semaphore(1)
    async with Target(url=stub.base, timeout=0.4).session(1) as session:
        await follow_order(session, record, time.perf_counter() + 5, wait=1.0, slots=slots)
    assert record.is_final and record.status == "confirmed"
    assert "poll_errors" not in record.extra
    assert stub.requests[-1].query["wait"] == "1.0"


async def test_follow_order_stops_at_the_deadline(stub: Stub) -> None:
    stub.order_status = "pending"
    stub.hold = 10.0
    record = OrderRecord(product_id=1, quantity=1, phase="t", order_id=7, http_status=202)
    started = time.perf_counter()
    async with Target(url=stub.base, timeout=5).session(1) as session:
        await follow_order(session, record, started + 0.5, wait=10.0)
    assert not record.is_final
    assert time.perf_counter() - started < 3


async def test_list_movements_pages_by_total_count(stub: Stub) -> None:
    async with Target(url=stub.base, timeout=5).session(1) as session:
        movements = await list_movements(session, 3)
    assert len(movements) == stub.movements
    assert [r.query["offset"] for r in stub.requests] == ["0", "500", "1000"]
