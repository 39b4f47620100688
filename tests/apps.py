"""Apps of their own, for tests that run the API with some settings changed.

Building an app makes FastAPI build every route's dependency graph and validation models (about
150 ms of CPU without coverage), and that was about 30% of the CPU of `tests/api/test_auth.py`, where
most tests start an app of their own. `running_app(cfg)` hands out an idle app built from equal
settings when this process has one, else builds one:

- every use runs a new lifespan, so the authenticator and its caches, the engines and pools, the
  dispatcher and the Redis clients are new, as in a newly started process;
- every use rebuilds the middleware, so no rate-limit window carries over from an earlier test;
- apps in use at the same time are different apps, as two API processes are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import SecretStr

from core.config import Settings

_idle: defaultdict[str, list[FastAPI]] = defaultdict(list)


def _key(cfg: Settings) -> str:
    """Equal for equal settings, secrets included."""
    revealed = [(name, v.get_secret_value() if isinstance(v, SecretStr) else v) for name, v in cfg]
    return repr(sorted(revealed))


@asynccontextmanager
async def running_app(cfg: Settings) -> AsyncIterator[FastAPI]:
    """An app built from `cfg` (no in-process worker), its lifespan running. The app goes back to
    the idle apps only when its lifespan started and ended and the test raised nothing: an app whose
    start-up or shutdown failed half way is not handed to the next test."""
    from api.main import create_app

    idle = _idle[_key(cfg)]
    application = idle.pop() if idle else create_app(cfg, start_embedded_worker=False)
    application.middleware_stack = None  # built again on the first request
    async with application.router.lifespan_context(application):
        yield application
    idle.append(application)
