"""A saga acts only on the rows it created: another saga for the same order moves no money.

The scenario behind it: a customer's order was delivered, Temporal dropped the closed saga
(namespace retention), and a second saga starts for the same order id (a replayed request,
or an operator starting one by hand). Each of its steps and compensations must refuse or
leave alone every row the first saga created, so nothing is refunded and nothing moves.
"""

import uuid
from decimal import Decimal

import pytest
from temporalio.exceptions import ApplicationError

from activities.deliveries import DeliveryActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from domain import names
from domain.payloads import (
    CreateDeliveryInput,
    CreateOrderInput,
    CreatePaymentInput,
    DeliveryRef,
    OrderRef,
    PaymentRef,
)
from domain.status import DeliveryStatus, OrderStatus, PaymentStatus
from store.db import session
from store.models import DealerRow, DeliveryRow, OrderRow, PaymentRow, RefundRow
from tests.activities.support import accept_order, all_rows, assert_business_error, get_row
from tests.saga_harness import add_dealer, order_request

pytestmark = pytest.mark.db

FIRST, SECOND = "first-saga-run-id", "second-saga-run-id"


def run_saga_to(engine, order_id: str, saga_id: str, *, delivered: bool) -> None:
    """The real activities of one saga, in order, up to IN_TRANSIT or DELIVERED."""
    orders, payments, deliveries = (
        OrderActivities(engine),
        PaymentActivities(engine),
        DeliveryActivities(engine),
    )
    accept_order(engine, order_id, order_request().customer_id)
    orders.create_order(
        CreateOrderInput(order_id=order_id, request=order_request(), saga_id=saga_id)
    )
    payment_id, delivery_id = names.payment_id_for(order_id), names.delivery_id_for(order_id)
    payments.create_payment(
        CreatePaymentInput(
            payment_id=payment_id, order_id=order_id, amount=Decimal("28.10"), saga_id=saga_id
        )
    )
    payments.complete_payment(PaymentRef(payment_id=payment_id, saga_id=saga_id))
    orders.confirm_order(OrderRef(order_id=order_id, saga_id=saga_id))
    deliveries.create_delivery(
        CreateDeliveryInput(
            delivery_id=delivery_id,
            order_id=order_id,
            province="Tehran",
            city="Tehran",
            saga_id=saga_id,
        )
    )
    assigned = deliveries.assign_dealer(DeliveryRef(delivery_id=delivery_id, saga_id=saga_id))
    assert assigned.dealer_id is not None
    if delivered:
        deliveries.complete_delivery(DeliveryRef(delivery_id=delivery_id, saga_id=saga_id))
        orders.mark_order_delivered(OrderRef(order_id=order_id, saga_id=saga_id))


def snapshot_of(engine, order_id: str) -> dict[str, object]:
    """The order's rows, every dealer's load and the refunds: what another saga must not move."""
    with session(engine) as db:
        rows: dict[str, object] = {
            "order": db.get(OrderRow, order_id),
            "payment": db.get(PaymentRow, names.payment_id_for(order_id)),
            "delivery": db.get(DeliveryRow, names.delivery_id_for(order_id)),
        }
    rows["dealers"] = sorted((d.id, d.active_deliveries) for d in all_rows(engine, DealerRow))
    rows["refunds"] = len(all_rows(engine, RefundRow))
    return rows


@pytest.fixture
def delivered_order(engine) -> str:
    add_dealer(engine, capacity=1)
    order_id = str(uuid.uuid4())
    run_saga_to(engine, order_id, FIRST, delivered=True)
    return order_id


def test_every_row_records_the_saga_that_created_it(engine, delivered_order):
    rows = snapshot_of(engine, delivered_order)
    for kind in ("order", "payment", "delivery"):
        assert rows[kind].saga_id == FIRST, kind  # type: ignore[attr-defined]


def forward_steps(order_id: str) -> dict[str, tuple[str, object]]:
    """Every forward step of a second saga for ``order_id``: (activity name, its input)."""
    payment_id, delivery_id = names.payment_id_for(order_id), names.delivery_id_for(order_id)
    return {
        "create_order": (
            "create_order",
            CreateOrderInput(order_id=order_id, request=order_request(), saga_id=SECOND),
        ),
        "create_payment": (
            "create_payment",
            CreatePaymentInput(
                payment_id=payment_id, order_id=order_id, amount=Decimal("1.00"), saga_id=SECOND
            ),
        ),
        "complete_payment": (
            "complete_payment",
            PaymentRef(payment_id=payment_id, saga_id=SECOND),
        ),
        "confirm_order": ("confirm_order", OrderRef(order_id=order_id, saga_id=SECOND)),
        "create_delivery": (
            "create_delivery",
            CreateDeliveryInput(
                delivery_id=delivery_id,
                order_id=order_id,
                province="Tehran",
                city="Tehran",
                saga_id=SECOND,
            ),
        ),
        "assign_dealer": ("assign_dealer", DeliveryRef(delivery_id=delivery_id, saga_id=SECOND)),
        "complete_delivery": (
            "complete_delivery",
            DeliveryRef(delivery_id=delivery_id, saga_id=SECOND),
        ),
        "mark_order_delivered": (
            "mark_order_delivered",
            OrderRef(order_id=order_id, saga_id=SECOND),
        ),
    }


STEPS = list(forward_steps(str(uuid.uuid4())))


@pytest.mark.parametrize("step", STEPS)
def test_another_sagas_forward_step_is_refused_and_changes_nothing(engine, delivered_order, step):
    before = snapshot_of(engine, delivered_order)
    activities = {
        **{n: OrderActivities(engine) for n in ("create_order", "confirm_order")},
        "mark_order_delivered": OrderActivities(engine),
        **{n: PaymentActivities(engine) for n in ("create_payment", "complete_payment")},
        **{
            n: DeliveryActivities(engine)
            for n in ("create_delivery", "assign_dealer", "complete_delivery")
        },
    }
    name, params = forward_steps(delivered_order)[step]

    with pytest.raises(ApplicationError) as raised:
        getattr(activities[step], name)(params)

    assert_business_error(raised.value, names.OWNED_BY_ANOTHER_SAGA)
    assert snapshot_of(engine, delivered_order) == before


@pytest.mark.parametrize("delivered", [True, False], ids=["delivered", "in transit"])
def test_another_sagas_compensations_refund_and_cancel_nothing(engine, delivered):
    add_dealer(engine, capacity=1)
    order_id = str(uuid.uuid4())
    run_saga_to(engine, order_id, FIRST, delivered=delivered)
    before = snapshot_of(engine, order_id)
    ref = OrderRef(order_id=order_id, saga_id=SECOND)

    # The second saga unwinds in reverse, as its own failure would make it.
    outcomes = [
        DeliveryActivities(engine).cancel_delivery(ref),
        PaymentActivities(engine).cancel_or_refund_payment(ref),
        OrderActivities(engine).cancel_order(ref),
    ]

    assert [o.status for o in outcomes] == [None, None, None]  # nothing of its own was there
    assert all("another saga" in o.action for o in outcomes), outcomes
    after = snapshot_of(engine, order_id)
    assert after == before
    assert after["refunds"] == 0
    assert after["payment"].status == PaymentStatus.COMPLETED  # type: ignore[attr-defined]


def test_the_saga_that_created_the_rows_still_compensates_them(engine):
    # The same checks never stand in the way of the rows' own saga.
    add_dealer(engine, capacity=1)
    order_id = str(uuid.uuid4())
    run_saga_to(engine, order_id, FIRST, delivered=False)
    ref = OrderRef(order_id=order_id, saga_id=FIRST)

    DeliveryActivities(engine).cancel_delivery(ref)
    refund = PaymentActivities(engine).cancel_or_refund_payment(ref)
    OrderActivities(engine).cancel_order(ref)

    assert (refund.action, refund.status) == ("refunded", PaymentStatus.REFUNDED)
    rows = snapshot_of(engine, order_id)
    assert rows["order"].status == OrderStatus.CANCELLED  # type: ignore[attr-defined]
    assert rows["delivery"].status == DeliveryStatus.CANCELLED  # type: ignore[attr-defined]
    assert rows["refunds"] == 1
    assert rows["dealers"] == [(rows["delivery"].dealer_id, 0)]  # type: ignore[attr-defined]


def test_rows_written_before_ownership_are_claimed_by_the_first_saga_that_moves_them(engine):
    # A saga in flight across the upgrade (migration 0003) finishes: its rows have no saga
    # recorded, its next step claims them, and from then on they are that saga's alone.
    order_id = str(uuid.uuid4())
    OrderActivities(engine).create_order(
        CreateOrderInput(order_id=order_id, request=order_request())
    )
    assert get_row(engine, OrderRow, order_id).saga_id is None

    confirmed = OrderActivities(engine).confirm_order(OrderRef(order_id=order_id, saga_id=FIRST))

    assert confirmed.status == OrderStatus.CONFIRMED
    assert get_row(engine, OrderRow, order_id).saga_id == FIRST
    with pytest.raises(ApplicationError) as raised:
        OrderActivities(engine).mark_order_delivered(OrderRef(order_id=order_id, saga_id=SECOND))
    assert_business_error(raised.value, names.OWNED_BY_ANOTHER_SAGA)
    assert get_row(engine, OrderRow, order_id).status == OrderStatus.CONFIRMED
