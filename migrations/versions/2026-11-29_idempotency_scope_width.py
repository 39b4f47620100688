"""Widen `idempotency_keys.scope` to 70 characters: it holds `store:<manager_id>`, and the store API
accepts manager ids of up to 64 characters (CONTRACT.md, "Store API"), so the longest scope is 6 + 64.
Widening a varchar is a catalogue change on PostgreSQL (no table rewrite); SQLite does not enforce
varchar lengths, so there is nothing to do there.

Revision ID: 0004_scope_width
Revises: 0003_audit
Create Date: 2026-11-29 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_scope_width"
down_revision: str | None = "0003_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: `core.orders.models.IDEMPOTENCY_SCOPE_MAX_LENGTH` when this revision was written (migrations do
#: not import the models: they are history).
SCOPE_LENGTH = 70


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.alter_column(
        "idempotency_keys",
        "scope",
        type_=sa.String(length=SCOPE_LENGTH),
        existing_type=sa.String(length=64),
        existing_nullable=False,
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.alter_column(
        "idempotency_keys",
        "scope",
        type_=sa.String(length=64),
        existing_type=sa.String(length=SCOPE_LENGTH),
        existing_nullable=False,
    )
