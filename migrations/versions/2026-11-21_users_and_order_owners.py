"""Users (unique username in any case, bcrypt hash, role) and the owner of each order.

Revision ID: 0002_users
Revises: 0001_initial
Create Date: 2026-11-21 21:34:10.294284
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_users"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=50), nullable=False),
        sa.Column("password_hash", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'manager', 'customer')", name=op.f("ck_users_role_valid")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_index("uq_users_username_lower", "users", [sa.literal_column("lower(username)")], unique=True)
    # Batch mode: SQLite cannot add a foreign key in place (the table is copied); on PostgreSQL this
    # is one ALTER TABLE. Orders placed before users existed have a null user_id and stay valid.
    with op.batch_alter_table("orders") as batch_op:
        batch_op.create_foreign_key(
            op.f("fk_orders_user_id_users"), "users", ["user_id"], ["id"], ondelete="RESTRICT"
        )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch_op:
        batch_op.drop_constraint(op.f("fk_orders_user_id_users"), type_="foreignkey")
    op.drop_index("uq_users_username_lower", table_name="users")
    op.drop_table("users")
