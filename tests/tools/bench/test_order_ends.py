"""The bench's poll for ended orders asks only for the orders it awaits, on a real database:
what earlier phases left in the table is neither returned nor read row by row."""

from sqlalchemy import Engine

from domain.status import OrderStatus
from store.db import session
from store.models import OrderRow
from tools.bench.api import ended_among
from tools.bench.environment import read_rows


def _order(order_id: str, status: OrderStatus) -> OrderRow:
    return OrderRow(
        id=order_id,
        customer_id="bench",
        status=status.value,
        total_cents=100,
        province="Tehran",
        city="Tehran",
    )


def test_a_poll_returns_the_awaited_orders_that_ended_and_nothing_else(engine: Engine):
    with session(engine) as db:
        db.add(_order("earlier-delivered", OrderStatus.DELIVERED))  # an earlier phase's
        db.add(_order("awaited-delivered", OrderStatus.DELIVERED))
        db.add(_order("awaited-cancelled", OrderStatus.CANCELLED))
        db.add(_order("awaited-confirmed", OrderStatus.CONFIRMED))  # still on its way
        db.commit()
    awaited = {"awaited-delivered", "awaited-cancelled", "awaited-confirmed", "awaited-unwritten"}

    rows = read_rows(engine, ended_among(engine, awaited))

    assert sorted(rows) == [
        ("awaited-cancelled", OrderStatus.CANCELLED.value),
        ("awaited-delivered", OrderStatus.DELIVERED.value),
    ]
