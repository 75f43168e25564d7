"""a choreographed order keeps its saga's windows

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 16:00:00.000000

``orders.saga_timeouts``: the saga's windows (a ``SagaTimeouts`` as JSON), terms of a
choreographed order fixed when it is placed, as an orchestrated saga keeps them in its input;
PaymentService and DeliveryService read them with the order's total and address. Until now
the payment window travelled in ``order_created`` and the dealer's windows were the worker's
settings: choreographed orders still under way get the windows the environment sets now
(``PAYMENT_WINDOW_SECONDS``, ``DEALER_ASSIGNMENT_WINDOW_SECONDS``,
``DEALER_RETRY_INITIAL_SECONDS``), those their services were using.
"""

import json
import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each window: its setting and its default in seconds (frozen here, as of this revision).
WINDOWS = {
    "payment_window": ("PAYMENT_WINDOW_SECONDS", 1800.0),
    "dealer_assignment_window": ("DEALER_ASSIGNMENT_WINDOW_SECONDS", 20.0),
    "dealer_retry_initial_interval": ("DEALER_RETRY_INITIAL_SECONDS", 2.0),
}


def _iso(seconds: float) -> str:
    """A duration as an ISO 8601 string, which pydantic reads as a timedelta."""
    return f"PT{seconds:g}S"


def _windows_now() -> str:
    return json.dumps(
        {
            field: _iso(float(os.environ.get(variable, default)))
            for field, (variable, default) in WINDOWS.items()
        }
    )


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("saga_timeouts", sa.Text(), nullable=True))
    op.execute(
        sa.text(
            "UPDATE orders SET saga_timeouts = :timeouts WHERE saga_style = 'choreography' "
            "AND status IN ('PENDING', 'CONFIRMED')"
        ).bindparams(timeouts=_windows_now())
    )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("saga_timeouts")
