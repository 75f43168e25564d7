"""Where ``GET /orders/{id}`` says a saga is, read from the rows its steps wrote (``views``).

The saga's last two steps close the order and its delivery in two transactions (side by
side in the orchestrated saga, the delivery first in the choreographed one): until both
have committed, the order is still in transit, whichever committed first.
"""

import pytest

from activities.deliveries import DeliveryActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from domain import names
from domain.payloads import CreateDeliveryInput, DeliveryRef, OrderRef, PaymentRef
from domain.status import DeliveryStatus, OrderStatus, SagaPhase
from sagas import views
from settings import Settings
from store.models import DeliveryRow, OrderRow
from tests.activities.support import get_row, open_payment
from tests.saga_harness import add_dealer

pytestmark = pytest.mark.db


def past_the_pivot(engine, deliveries: DeliveryActivities) -> tuple[OrderRef, DeliveryRef]:
    """An order as its saga leaves it at the pivot: payment completed, order confirmed, its
    delivery with a dealer (each through the real step)."""
    order_id, payment_id = open_payment(engine)
    PaymentActivities(engine).complete_payment(PaymentRef(payment_id=payment_id))
    OrderActivities(engine).confirm_order(OrderRef(order_id=order_id))
    add_dealer(engine, capacity=1)
    ref = DeliveryRef(delivery_id=names.delivery_id_for(order_id))
    deliveries.create_delivery(
        CreateDeliveryInput(
            delivery_id=ref.delivery_id, order_id=order_id, province="Tehran", city="Tehran"
        )
    )
    assert deliveries.assign_dealer(ref).dealer_id is not None
    return OrderRef(order_id=order_id), ref


def phase_of(engine, order: OrderRef) -> SagaPhase:
    view = views.order_view(engine, Settings(), order.order_id)
    assert view is not None
    return view.phase


def test_the_order_closed_first_is_still_in_transit_until_its_delivery_is(
    engine, orders, deliveries
):
    order, delivery = past_the_pivot(engine, deliveries)
    assert phase_of(engine, order) == SagaPhase.IN_TRANSIT

    orders.mark_order_delivered(order)
    assert get_row(engine, OrderRow, order.order_id).status == OrderStatus.DELIVERED
    assert phase_of(engine, order) == SagaPhase.IN_TRANSIT  # its parcel is not delivered yet

    deliveries.complete_delivery(delivery)
    assert phase_of(engine, order) == SagaPhase.DELIVERED


def test_the_delivery_closed_first_is_still_in_transit_until_its_order_is(
    engine, orders, deliveries
):
    order, delivery = past_the_pivot(engine, deliveries)

    deliveries.complete_delivery(delivery)
    assert get_row(engine, DeliveryRow, delivery.delivery_id).status == DeliveryStatus.DELIVERED
    assert phase_of(engine, order) == SagaPhase.IN_TRANSIT  # not back to ASSIGNING_DEALER

    orders.mark_order_delivered(order)
    assert phase_of(engine, order) == SagaPhase.DELIVERED
