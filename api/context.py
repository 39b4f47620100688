"""Per-request context (the request id): re-exported from `core.context`, where the variable lives
so that domain code can read it too. Import from either module; it is one variable."""

from __future__ import annotations

from core.context import request_id_var  # noqa: F401
