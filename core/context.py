"""Per-request context, readable from anywhere in the request's task (and in the greenlet that
`AsyncSession.run_sync` runs a service in: SQLAlchemy hands it the caller's context).

`request_id_var` holds the request id the API's middleware chose (the `X-Request-ID` header), or `-`
outside a request (a worker task, the CLI). It lives in `core` so that domain code (the audit log)
can read it without importing `api`.
"""

from __future__ import annotations

from contextvars import ContextVar

#: The current request's id (`[A-Za-z0-9._:-]{1,128}`), or "-" outside a request.
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
