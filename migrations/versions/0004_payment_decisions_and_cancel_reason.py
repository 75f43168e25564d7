"""payment decisions recorded by compare-and-set; why an order was cancelled

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 17:00:00.000000

``payment_decisions``: one row per order, opened when the order is accepted (no foreign key:
the saga writes the order and payment rows after it), its ``decision`` set once. Orders
accepted before this revision get their row the first time a decision is taken.
``orders.cancel_reason``: the saga's failure type, written with the cancellation.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_decisions",
        sa.Column("payment_id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("payment_id"),
        sa.UniqueConstraint("order_id"),
    )
    op.create_index(op.f("ix_payment_decisions_customer_id"), "payment_decisions", ["customer_id"])
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancel_reason", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("cancel_reason")
    op.drop_index(op.f("ix_payment_decisions_customer_id"), table_name="payment_decisions")
    op.drop_table("payment_decisions")
