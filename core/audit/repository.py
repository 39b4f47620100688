"""SQL for the audit log (STYLE.md rule 6). Rows are only inserted and read here, never updated or
deleted; functions execute on the caller's session and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, insert, select
from sqlalchemy.orm import Session

from core.audit.models import AuditEntry
from core.audit.schemas import AuditFilter

#: Rows per INSERT: 8 bound parameters each keeps a statement far below PostgreSQL's 65,535 and
#: SQLite's 32,766 parameter limits.
INSERT_CHUNK = 500


def insert_rows(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` (dicts with every `AuditEntry` column but `id`) as one multi-row
    `INSERT ... VALUES (...), (...)` per `INSERT_CHUNK` rows. Core statements: no ORM flush."""
    for start in range(0, len(rows), INSERT_CHUNK):
        session.execute(insert(AuditEntry).values(list(rows[start : start + INSERT_CHUNK])))


def _filtered(flt: AuditFilter) -> Select[AuditEntry]:
    stmt = select(AuditEntry)
    for column, value in (
        (AuditEntry.actor, flt.actor),
        (AuditEntry.action, flt.action),
        (AuditEntry.entity, flt.entity),
        (AuditEntry.entity_id, flt.entity_id),
        (AuditEntry.request_id, flt.request_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if flt.since is not None:
        stmt = stmt.where(AuditEntry.at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(AuditEntry.at < flt.until)
    return stmt


def list_page(session: Session, flt: AuditFilter, limit: int, offset: int) -> tuple[list[AuditEntry], int]:
    """One page of rows matching `flt`, newest first (by id, the insertion order), and how many
    rows match in all."""
    stmt = _filtered(flt)
    total = session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
    items = session.execute(stmt.order_by(AuditEntry.id.desc()).limit(limit).offset(offset)).scalars()
    return list(items), total
