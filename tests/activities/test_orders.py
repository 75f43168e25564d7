"""OrderService activities against a real database (SQLite, or PostgreSQL via DATABASE_URL)."""

from decimal import Decimal

import pytest
from sqlalchemy import text
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.orders import OrderActivities
from domain import names
from domain.payloads import OrderItem, OrderSnapshot
from domain.status import OrderStatus
from store.db import session
from store.models import OrderItemRow, OrderRow
from tests.activities.support import (
    all_rows,
    assert_business_error,
    create_order_input,
    get_row,
    new_order_id,
    order_ref,
    place_order,
    run_concurrently,
)
from tests.saga_harness import db_statuses, order_request

pytestmark = pytest.mark.db


# --- create_order ---------------------------------------------------------------------


def test_create_order_twice_stores_one_order_with_its_items_and_exact_total(engine, orders):
    params = create_order_input()

    first = ActivityEnvironment().run(orders.create_order, params)
    second = ActivityEnvironment().run(orders.create_order, params)

    assert first == second
    assert first == OrderSnapshot(
        order_id=params.order_id, status=OrderStatus.PENDING, total_amount=Decimal("28.10")
    )
    assert str(first.total_amount) == "28.10"
    assert len(all_rows(engine, OrderRow)) == 1
    order = get_row(engine, OrderRow, params.order_id)
    # 2 x 12.50 + 1 x 3.10, computed by the service in integer cents.
    assert order.total_cents == 2810
    assert (order.status, order.customer_id, order.province, order.city) == (
        "PENDING",
        "customer-1",
        "Tehran",
        "Tehran",
    )
    items = all_rows(engine, OrderItemRow, order_id=params.order_id)
    assert sorted((i.product_id, i.quantity, i.unit_price_cents) for i in items) == [
        ("book-1", 2, 1250),
        ("pen-7", 1, 310),
    ]


def test_create_order_replay_returns_the_stored_order_unchanged(engine, orders):
    order_id = new_order_id()
    orders.create_order(create_order_input(order_id))
    stored = get_row(engine, OrderRow, order_id)
    other_items = [OrderItem(product_id="lamp-3", quantity=3, unit_price=Decimal("99.99"))]

    replay = orders.create_order(
        create_order_input(order_id, order_request(city="Shiraz", items=other_items))
    )

    assert replay.total_amount == Decimal("28.10")
    assert get_row(engine, OrderRow, order_id) == stored
    assert len(all_rows(engine, OrderItemRow)) == 2


def test_concurrent_create_order_for_one_order_stores_it_once(engine, orders):
    params = create_order_input()

    results = run_concurrently(orders.create_order, [params] * 16)

    assert {r.model_dump_json() for r in results} == {results[0].model_dump_json()}
    assert results[0].total_amount == Decimal("28.10")
    assert [o.id for o in all_rows(engine, OrderRow)] == [params.order_id]
    assert len(all_rows(engine, OrderItemRow, order_id=params.order_id)) == 2


def test_concurrent_create_order_of_many_orders_stores_each_once(engine, orders):
    params = [create_order_input() for _ in range(10)]

    run_concurrently(orders.create_order, params * 3)

    assert sorted(o.id for o in all_rows(engine, OrderRow)) == sorted(p.order_id for p in params)
    assert len(all_rows(engine, OrderItemRow)) == 2 * len(params)


# --- confirm_order / mark_order_delivered ------------------------------------------------


def test_confirm_order_twice_confirms_once(engine, orders):
    order_id = place_order(engine)

    first = orders.confirm_order(order_ref(order_id))
    confirmed = get_row(engine, OrderRow, order_id)
    second = orders.confirm_order(order_ref(order_id))

    assert first == second
    assert first.status == OrderStatus.CONFIRMED
    assert get_row(engine, OrderRow, order_id) == confirmed  # updated_at untouched too
    assert confirmed.status == "CONFIRMED"
    assert confirmed.total_cents == 2810


def test_mark_order_delivered_twice_delivers_once(engine, orders):
    order_id = place_order(engine)
    orders.confirm_order(order_ref(order_id))

    first = orders.mark_order_delivered(order_ref(order_id))
    delivered = get_row(engine, OrderRow, order_id)
    second = orders.mark_order_delivered(order_ref(order_id))

    assert first == second
    assert first.status == OrderStatus.DELIVERED
    assert get_row(engine, OrderRow, order_id) == delivered
    assert delivered.status == "DELIVERED"


def test_confirm_order_replayed_after_delivery_is_a_no_op(engine, orders):
    order_id = place_order(engine)
    orders.confirm_order(order_ref(order_id))
    orders.mark_order_delivered(order_ref(order_id))
    delivered = get_row(engine, OrderRow, order_id)

    assert orders.confirm_order(order_ref(order_id)).status == OrderStatus.DELIVERED
    assert get_row(engine, OrderRow, order_id) == delivered


def test_concurrent_confirm_order_confirms_once(engine, orders):
    order_id = place_order(engine)

    results = run_concurrently(orders.confirm_order, [order_ref(order_id)] * 16)

    assert {r.status for r in results} == {OrderStatus.CONFIRMED}
    assert db_statuses(engine, order_id)["order"] == "CONFIRMED"


def test_confirm_racing_cancel_always_ends_cancelled(engine, orders: OrderActivities):
    order_ids = [place_order(engine) for _ in range(12)]

    def confirm(order_id: str) -> str:
        try:
            return orders.confirm_order(order_ref(order_id)).status
        except ApplicationError as error:  # the cancellation got there first
            assert_business_error(error, names.INVALID_TRANSITION)
            return "rejected"

    def race(task: tuple[str, str]) -> str:
        kind, order_id = task
        if kind == "confirm":
            return confirm(order_id)
        outcome = orders.cancel_order(order_ref(order_id))
        assert outcome.status == OrderStatus.CANCELLED
        return outcome.action

    run_concurrently(race, [(kind, o) for o in order_ids for kind in ("confirm", "cancel")])

    assert {o.id: o.status for o in all_rows(engine, OrderRow)} == dict.fromkeys(
        order_ids, "CANCELLED"
    )


# --- cancel_order ------------------------------------------------------------------------


@pytest.mark.parametrize("confirmed", [False, True], ids=["pending", "confirmed"])
def test_cancel_order_twice_cancels_once(engine, orders, confirmed):
    order_id = place_order(engine)
    if confirmed:
        orders.confirm_order(order_ref(order_id))

    first = orders.cancel_order(order_ref(order_id))
    cancelled = get_row(engine, OrderRow, order_id)
    second = orders.cancel_order(order_ref(order_id))

    assert (first.action, first.status) == ("cancelled", "CANCELLED")
    assert (second.action, second.status) == ("already cancelled", "CANCELLED")
    assert cancelled.status == "CANCELLED"
    assert get_row(engine, OrderRow, order_id) == cancelled


def test_cancel_order_with_no_order_has_nothing_to_undo(engine, orders):
    other = place_order(engine)
    before = get_row(engine, OrderRow, other)

    outcome = orders.cancel_order(order_ref(new_order_id()))

    assert (outcome.action, outcome.status) == ("nothing to undo", None)
    assert all_rows(engine, OrderRow) == [before]


def test_cancel_order_leaves_a_delivered_order_alone(engine, orders):
    order_id = place_order(engine)
    orders.confirm_order(order_ref(order_id))
    orders.mark_order_delivered(order_ref(order_id))
    delivered = get_row(engine, OrderRow, order_id)

    outcome = orders.cancel_order(order_ref(order_id))

    assert outcome.status == "DELIVERED"
    assert "cancelled" not in outcome.action
    assert get_row(engine, OrderRow, order_id) == delivered


# --- invalid transitions ---------------------------------------------------------------


def test_confirm_unknown_order_is_entity_not_found(engine, orders):
    with pytest.raises(ApplicationError) as excinfo:
        orders.confirm_order(order_ref(new_order_id()))

    assert_business_error(excinfo.value, names.ENTITY_NOT_FOUND)
    assert all_rows(engine, OrderRow) == []


def test_mark_unknown_order_delivered_is_entity_not_found(engine, orders):
    with pytest.raises(ApplicationError) as excinfo:
        orders.mark_order_delivered(order_ref(new_order_id()))

    assert_business_error(excinfo.value, names.ENTITY_NOT_FOUND)


def test_mark_pending_order_delivered_is_invalid_transition(engine, orders):
    order_id = place_order(engine)
    pending = get_row(engine, OrderRow, order_id)

    with pytest.raises(ApplicationError) as excinfo:
        orders.mark_order_delivered(order_ref(order_id))

    assert_business_error(excinfo.value, names.INVALID_TRANSITION)
    assert get_row(engine, OrderRow, order_id) == pending


@pytest.mark.parametrize("activity", ["confirm_order", "mark_order_delivered"])
def test_moving_a_cancelled_order_is_invalid_transition(engine, orders, activity):
    order_id = place_order(engine)
    orders.cancel_order(order_ref(order_id))
    cancelled = get_row(engine, OrderRow, order_id)

    with pytest.raises(ApplicationError) as excinfo:
        getattr(orders, activity)(order_ref(order_id))

    assert_business_error(excinfo.value, names.INVALID_TRANSITION)
    assert get_row(engine, OrderRow, order_id) == cancelled


# --- money ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prices", "total"),
    [
        ([("0.10", 3), ("0.20", 7)], "1.70"),  # 0.1 * 3 + 0.2 * 7 is 1.7000000000000002 in floats
        ([("9999999.99", 1), ("0.01", 1)], "10000000.00"),
        ([("0.01", 1)], "0.01"),
        ([("9999999999.99", 10)], "99999999999.90"),  # the largest order the contract allows
    ],
)
def test_order_total_is_exact_in_cents(engine, orders, prices, total):
    items = [
        OrderItem(product_id=f"p{n}", quantity=quantity, unit_price=Decimal(price))
        for n, (price, quantity) in enumerate(prices)
    ]
    params = create_order_input(request=order_request(items=items))

    created = orders.create_order(params)
    replayed = orders.create_order(params)  # read back from the database

    for snapshot in (created, replayed):
        assert isinstance(snapshot.total_amount, Decimal)
        assert str(snapshot.total_amount) == total
    row = get_row(engine, OrderRow, params.order_id)
    assert type(row.total_cents) is int
    assert row.total_cents == int(Decimal(total) * 100)
    stored_prices = sorted(i.unit_price_cents for i in all_rows(engine, OrderItemRow))
    assert stored_prices == sorted(int(Decimal(p) * 100) for p, _ in prices)
    with session(engine) as db:
        raw = db.connection().execute(
            text("SELECT total_cents FROM orders WHERE id = :id"), {"id": params.order_id}
        )
        assert type(raw.scalar_one()) is int  # stored as an integer, never a float
