"""What the focused drivers (`bench.inprocess`, `bench.worker_batches`) and the whole-stack run share:
the command line of a real Celery worker, and a scratch database plus Redis key prefix of their own,
named after the process (`orderflow_<kind>_<pid>`, `<kind><pid>:`), dropped and deleted at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def celery_worker_command(python: str | Path, processes: int, loglevel: str, node: str) -> list[str]:
    """`python -m celery ... worker` as the stack runs it: the project's app, the prefork pool with
    `processes` processes, node name `node` (`name@host`), no mingle and no gossip (nothing for a
    single worker to agree with)."""
    return [
        str(python),
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(processes),
        "--loglevel",
        loglevel,
        "-n",
        node,
        "--without-mingle",
        "--without-gossip",
    ]


@dataclass(frozen=True)
class Scratch:
    """The scratch back-ends of one driver run: the database's name and libpq DSN, the key prefix."""

    db: str
    dsn: str
    prefix: str


@contextmanager
def scratch_backends(
    kind: str, admin_dsn: str, redis_url: str, settings: Mapping[str, str]
) -> Iterator[Scratch]:
    """Create the database `orderflow_<kind>_<pid>` on the server of `admin_dsn`, point this
    process's environment at it and at `redis_url` under the key prefix `<kind><pid>:` (plus
    `settings`), migrate it with Alembic, and yield them as a `Scratch`. At the end the database is
    dropped and the prefix's keys deleted."""
    import psycopg
    import redis

    db = f"orderflow_{kind}_{os.getpid()}"
    prefix = f"{kind}{os.getpid()}:"
    host_part = admin_dsn.split("://", 1)[1].rsplit("/", 1)[0]
    os.environ.update(
        {
            "DATABASE_URL": f"postgresql+psycopg://{host_part}/{db}",
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": prefix,
            **settings,
        }
    )
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    client = redis.Redis.from_url(redis_url)
    try:
        from core.migrate import upgrade

        upgrade()
        yield Scratch(db, f"postgresql://{host_part}/{db}", prefix)
    finally:
        from core.db import dispose_sync_engine

        dispose_sync_engine()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
