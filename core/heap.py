"""The garbage collector of the long-running processes (the API's, the worker's).

A process's start-up leaves some 160,000 objects that live as long as it does: modules, classes,
FastAPI's routes and pydantic's validators, SQLAlchemy's metadata, Celery's app. CPython's cyclic
collector walks all of them in each of its full (generation 2) collections, which it runs whenever
the survivors of younger collections grew by a quarter of that; on the benchmark machine each such
walk held an API process's event loop for 140-200 ms, several times every ten seconds under load, and
those pauses were the slowest orders' latency (docs/performance.md, "Garbage collector pauses").
`freeze_startup_heap` moves what start-up left into the permanent generation, which collections do
not visit (the Python documentation, `gc.freeze`): a full collection then walks only what was made
since (2-5 ms there). Objects made later are collected as before.
"""

from __future__ import annotations

import gc
import os

_frozen_in: int | None = None


def freeze_startup_heap() -> None:
    """Collect once, then exempt every object alive now from later collections (`gc.freeze`), once
    per process (a forked child does it again for itself). Call at the end of a process's start-up:
    the API's lifespan, before it serves; a Celery worker's main process when it is ready, and each
    pool process after its fork."""
    global _frozen_in
    if _frozen_in == os.getpid():
        return
    _frozen_in = os.getpid()
    gc.collect()
    gc.freeze()
