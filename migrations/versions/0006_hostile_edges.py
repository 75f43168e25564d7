"""decisions and reports sent once; dead-letter replays and failing rows in the outbox

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 13:00:00.000000

``payment_decisions.signalled_at`` and ``deliveries.report_signalled_at``: when the decision
or the dealer's report reached the orchestrated saga, so a repeat sends no second signal.
``outbox.message_id`` (unique; the event id for every existing row): the broker's message id,
which a dead letter's replay sets apart from its event id; ``event_id`` is then indexed, not
unique. ``outbox.attempts``, ``next_attempt_at``, ``last_error``: a row that fails to publish
waits its turn without holding back the others.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Revision 0005 left outbox.event_id's unique constraint unnamed: PostgreSQL named it, and
# SQLite's batch mode names what it reflects by this convention.
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _event_id_unique() -> str:
    if op.get_bind().dialect.name == "postgresql":
        return "outbox_event_id_key"
    return "uq_outbox_event_id"


def upgrade() -> None:
    with op.batch_alter_table("payment_decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signalled_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("report_signalled_at", sa.DateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_id", sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
    op.execute("UPDATE outbox SET message_id = event_id")
    with op.batch_alter_table("outbox", schema=None, naming_convention=SQLITE_NAMES) as batch_op:
        batch_op.alter_column("message_id", existing_type=sa.String(length=80), nullable=False)
        batch_op.drop_constraint(_event_id_unique(), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_outbox_message_id"), ["message_id"])
        batch_op.create_index(batch_op.f("ix_outbox_event_id"), ["event_id"], unique=False)


def downgrade() -> None:
    # A replay's row shares its event id with the original: only the original stays.
    op.execute("DELETE FROM outbox WHERE message_id <> event_id")
    with op.batch_alter_table("outbox", schema=None, naming_convention=SQLITE_NAMES) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_event_id"))
        batch_op.drop_constraint(batch_op.f("uq_outbox_message_id"), type_="unique")
        batch_op.create_unique_constraint(_event_id_unique(), ["event_id"])
        batch_op.drop_column("last_error")
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("attempts")
        batch_op.drop_column("message_id")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("report_signalled_at")
    with op.batch_alter_table("payment_decisions", schema=None) as batch_op:
        batch_op.drop_column("signalled_at")
