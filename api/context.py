"""Per-request context (the request id), readable from anywhere in the request's task."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
