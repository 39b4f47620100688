"""The fault suite: a private stack (its own PostgreSQL cluster, Redis server, API, Celery worker and
beat; see stack.py) under a steady stream of orders from a few well-behaved clients (load.py), one
fault at a time. After each fault every order is final within DRAIN_BOUND_SECONDS, none is reserved
twice, stock is never negative, the ledger equals the stock and initial - confirmed + released, and
every order a client was told about (202/201) exists with its lines (CONTRACT.md, "Processing
guarantees"). Client-visible errors are counted and reported, and bounded only where the contract
promises a bound.

The faults are in three files, by the part of the stack they hit: test_worker_faults.py,
test_redis_faults.py and test_postgres_faults.py. Each file builds a stack of its own (the `run`
fixture is per module), so in a parallel run (`-n`) the three run at the same time and their
outages overlap; within a file the faults run one after another.

Run it alone with `uv run pytest tests/faults -s --no-cov` (docs/operations.md, "Fault suite").
"""
