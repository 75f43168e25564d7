"""saga ownership of orders, payments and deliveries; Idempotency-Keys kept in the database

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 15:30:00.000000

``saga_id`` (nullable): the saga that created the row. Rows written before this revision have
none; the first saga that moves one claims it, so sagas in flight across the upgrade finish.
``idempotency_keys``: one row per (customer, key), kept as long as the order, so a replayed
``POST /orders`` answers its order from the database after Temporal dropped the saga.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNED_TABLES = ("orders", "payments", "deliveries")


def upgrade() -> None:
    for table in OWNED_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("saga_id", sa.String(length=64), nullable=True))
    op.create_table(
        "idempotency_keys",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("saga_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("customer_id", "key"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    for table in OWNED_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("saga_id")
