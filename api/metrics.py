"""Prometheus metrics of the API process (CONTRACT.md, "Operations").

Request counts and latencies are recorded by `api.middleware`. Order counts by status and the queue
depth are read from the database and the broker when `/metrics` is scraped, so every API process
reports the same cluster-wide figures. Per-task runtimes come from Flower's own `/metrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry(auto_describe=True)

http_requests = Counter(
    "orderflow_http_requests_total",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
    registry=registry,
)
http_latency = Histogram(
    "orderflow_http_request_duration_seconds",
    "HTTP request latency in seconds, by method and route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=registry,
)
orders_submitted = Counter(
    "orderflow_orders_submitted_total",
    "Orders accepted by this API process (202), by how they were enqueued.",
    ["enqueued"],
    registry=registry,
)
orders_by_status = Gauge(
    "orderflow_orders",
    "Orders in the database by status (confirmed/rejected/failed are processing outcomes).",
    ["status"],
    registry=registry,
)
order_time_to_outcome = Histogram(
    "orderflow_order_wait_seconds",
    "Seconds a long-polling client waited for an order to leave pending.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=registry,
)
store_listing_cache = Counter(
    "orderflow_store_listing_cache_total",
    "Store listings (GET /api/inventory/products) answered from the cache (hit) or the database (miss).",
    ["result"],
    registry=registry,
)
queue_depth = Gauge(
    "orderflow_queue_depth",
    "Messages waiting in the orders queue of the broker (-1 when it cannot be read).",
    registry=registry,
)
store_rate_limit_unavailable = Counter(
    "orderflow_store_rate_limit_unavailable_total",
    "Store API requests served without a rate-limit check because its storage (Redis) was unreachable"
    " (fail open; see api/ratelimit.py).",
    registry=registry,
)
