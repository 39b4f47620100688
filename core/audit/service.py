"""The audit log (CONTRACT.md, "Store API": "every write is also stored in an `audit_log` table").
See docs/audit.md for what is recorded.

A write records its row on the session of the write itself, before the edge commits, so the row and
the change it describes commit or roll back together: a failed write (a 404, a 400, a rollback)
leaves no row. The request id comes from `core.context.request_id_var`, which the API's middleware
sets per request. Functions take a synchronous `Session` and never commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from core.audit import repository as repo
from core.audit.models import SYSTEM_ACTOR, AuditEntry
from core.audit.schemas import AuditFilter
from core.context import request_id_var
from core.db import utcnow

_ACTOR_MAX = 100
_ENTITY_ID_MAX = 64


def current_request_id() -> str | None:
    """The id of the request being served (its `X-Request-ID`), or None outside a request."""
    value = request_id_var.get()
    return None if value == "-" else value


def actor_name(actor: str | None) -> str:
    """How an audit row names `actor`: the name cut to 100 characters, `system` for None."""
    return (actor or SYSTEM_ACTOR)[:_ACTOR_MAX]


def _row(
    actor: str | None,
    action: str,
    entity: str,
    entity_id: int | str,
    details: Mapping[str, Any] | None,
    **shared: Any,
) -> dict[str, Any]:
    return {
        "actor": actor_name(actor),
        "action": action,
        "entity": entity,
        "entity_id": str(entity_id)[:_ENTITY_ID_MAX],
        "details": dict(details) if details is not None else None,
        **shared,
    }


def record(
    session: Session,
    *,
    actor: str | None,
    action: str,
    entity: str,
    entity_id: int | str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Insert one audit row in the session's transaction (a Core INSERT; nothing is flushed).

    * `actor`: a username, `manager:<manager_id>` for a store call without credentials; None means
      `system`. Cut to 100 characters;
    * `action`: a dotted verb from `core.audit.models.AuditAction`, e.g. `product.update`;
    * `entity`: `product`, `order` or `user` (`AuditEntity`); `entity_id`: its id, stored as text
      (cut to 64 characters);
    * `details`: a small JSON-serialisable object, e.g. `{"fields": ["name", "price"]}`; never a
      password or a hash.

    `at` is now (UTC); `request_id` is the current request's id, or None outside a request.
    """
    record_many(
        session,
        [{"actor": actor, "action": action, "entity": entity, "entity_id": entity_id, "details": details}],
    )


def record_many(session: Session, rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert several audit rows with one multi-row INSERT (a batch write, e.g. a store upsert of
    many products). Each row is a mapping with the keyword arguments of `record`: `actor`,
    `action`, `entity`, `entity_id` and optionally `details`. All rows get the same `at` and
    request id. An empty `rows` does nothing. Raises KeyError when a row lacks a required key."""
    shared = {"at": utcnow(), "request_id": current_request_id()}
    values = [
        _row(r["actor"], r["action"], r["entity"], r["entity_id"], r.get("details"), **shared) for r in rows
    ]
    repo.insert_rows(session, values)


def list_entries(
    session: Session, filters: AuditFilter, limit: int, offset: int
) -> tuple[list[AuditEntry], int]:
    """A page of audit rows matching `filters`, newest first, and how many match in all.
    `limit` rows at most (the API allows 1-500), skipping `offset`."""
    return repo.list_page(session, filters, limit, offset)
