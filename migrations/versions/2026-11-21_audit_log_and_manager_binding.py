"""The audit log, and the store manager id bound to a manager's account.

`audit_log` holds one row per write (who, what, which entity, which request); it is only ever
inserted into. `users.manager_id` binds a `manager` account to the store API's `manager_id`
(`mgr_123`) it may act for when `STORE_REQUIRE_AUTH=true`; unique, null when unbound.

Revision ID: 0003_audit
Revises: 0002_users
Create Date: 2026-11-21 23:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_audit"
down_revision: str | None = "0002_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(
        "ix_audit_log_entity_entity_id_id", "audit_log", ["entity", "entity_id", "id"], unique=False
    )
    op.create_index("ix_audit_log_actor_id", "audit_log", ["actor", "id"], unique=False)
    op.create_index("ix_audit_log_at", "audit_log", ["at"], unique=False)
    # Batch mode, as every schema change of an existing table here; adding a nullable column needs
    # no table copy on SQLite either. The binding is unique through a unique index (several nulls
    # are allowed: unbound accounts), which both databases create in place.
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("manager_id", sa.String(length=64), nullable=True))
    op.create_index("uq_users_manager_id", "users", ["manager_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_manager_id", table_name="users")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("manager_id")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite drops a column by copying the table, and the copy loses the expression index on
        # lower(username) (SQLAlchemy cannot reflect it): make it again. PostgreSQL altered in place.
        op.create_index(
            "uq_users_username_lower", "users", [sa.literal_column("lower(username)")], unique=True
        )
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_index("ix_audit_log_actor_id", table_name="audit_log")
    op.drop_index("ix_audit_log_entity_entity_id_id", table_name="audit_log")
    op.drop_table("audit_log")
