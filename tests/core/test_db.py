"""The intake's connection pool (`core.db.StatementPool`) on the real PostgreSQL: a request that waits
for a connection and is cancelled leaves the pool whole; a server that refuses connections is each
request's error at once, not after the pool timeout; after an outage, requests use connections of
their own until the pool has reconnected (docs/operations.md, "Limits")."""

from __future__ import annotations

import asyncio
import socket
import time

import psycopg
import pytest

from core.config import settings
from core.db import StatementPool, libpq_dsn
from tests.private_services import private_postgres, spare_port


async def test_a_request_cancelled_while_it_waits_leaves_the_pool_whole():
    pool = StatementPool(libpq_dsn(settings.database_url), min_size=1, max_size=1, timeout=5, open=False)
    await pool.open(wait=True)
    try:
        held = await pool.getconn()
        waiter = asyncio.create_task(pool.getconn())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # no idle connection: it waits
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await pool.putconn(held)

        started = time.monotonic()
        async with pool.connection() as conn:
            assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
        assert time.monotonic() - started < 1
        assert pool.get_stats().get("requests_waiting", 0) == 0
    finally:
        await pool.close()


async def test_a_server_that_refuses_connections_is_each_requests_error_at_once():
    pool = StatementPool(f"postgresql://postgres@127.0.0.1:{spare_port()}/nothing", min_size=0, max_size=2,
                         timeout=10, reconnect_timeout=10, open=False)  # fmt: skip
    await pool.open(wait=False)
    try:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError, match="refused"):
                await pool.getconn()
            assert time.monotonic() - started < 1  # not the 10 s pool timeout
        assert pool.outage is not None
    finally:
        await pool.close()


class CountingPool(StatementPool):
    """Counts the failed connection attempts, the pool's own and the requests'."""

    failures = 0

    def _connect_failed(self, exc: psycopg.OperationalError) -> None:
        self.failures += 1
        super()._connect_failed(exc)


async def test_requests_that_arrive_together_during_an_outage_share_one_connection_attempt():
    """Ten requests at once while the server's address takes connections and never answers (the
    kernel completes the handshake; nothing speaks): they fail together on the pool's own attempt and
    one attempt of theirs, each held for the connect timeout (2 s), not on one attempt each."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        pool = CountingPool(f"postgresql://postgres@127.0.0.1:{port}/nothing", min_size=0, max_size=2,
                            timeout=10, reconnect_timeout=10, kwargs={"connect_timeout": 2},
                            open=False)  # fmt: skip
        await pool.open(wait=False)
        try:
            results = await asyncio.gather(*(pool.getconn() for _ in range(10)), return_exceptions=True)
            assert all(isinstance(r, psycopg.OperationalError) for r in results), results
            assert pool.failures <= 3, pool.failures
        finally:
            await pool.close()


async def test_after_an_outage_requests_use_connections_of_their_own_until_the_pool_has_reconnected():
    """A private cluster stops and starts again: while it is down each request's error comes at once;
    once it is back the first requests get connections of their own (closed when given back) until
    the pool's own reconnection, after its backoff, ends the outage."""
    with private_postgres() as pg:
        pool = StatementPool(libpq_dsn(pg.url), min_size=1, max_size=2, timeout=10, reconnect_timeout=10,
                             kwargs={"autocommit": True}, open=False)  # fmt: skip
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
            pg.stop()
            with pytest.raises(psycopg.OperationalError):
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
            assert pool.outage is not None
            pg.start()

            async with pool.connection() as own:
                await own.execute("SELECT 1")
            assert own.closed  # it was the request's own, not the pool's
            deadline = time.monotonic() + 15
            while pool.outage is not None:
                assert time.monotonic() < deadline, "the pool did not reconnect within 15 s"
                await asyncio.sleep(0.1)
            async with pool.connection() as pooled:
                await pooled.execute("SELECT 1")
            assert not pooled.closed  # back in the pool
        finally:
            await pool.close()
