"""outbox rows keep their trace context

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 16:15:14.227026

``outbox.traceparent``: the W3C trace context of the transaction that wrote the row (null
with tracing off), which the publisher sends as the message's ``traceparent`` header so the
consumers continue the order's trace. Rows written before stay null and publish as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("traceparent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("traceparent")
