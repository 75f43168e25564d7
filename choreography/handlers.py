"""What each service does with each event it consumes: the choreographed saga, step by step.

Read top to bottom, as the events flow (``domain/events.py``). Each handler runs in the
consumer's transaction, calls ``services/`` as the activities do, and returns the events it
emits. An event that no longer applies changes nothing and says so; the money rules hold:

- a payment is refunded only when it was COMPLETED, once (a guarded transition);
- an order is cancelled only by PaymentService's word (its payment cancelled, expired or
  refunded), so no order is ever cancelled with its money kept;
- after the pivot (a dealer assigned) nothing is cancelled: a cancel then is refused.

A cancel racing the dealer assignment is DeliveryService's to decide, as it owns the pivot:
before it, the delivery is cancelled, then the payment undone; after it, refused.
"""

from sqlmodel import Session

from choreography.consumer import Handler, Outcome
from domain import names
from domain.errors import BusinessError
from domain.events import Event, EventType, Service
from domain.payloads import from_cents
from domain.status import Decision, DeliveryStatus, PaymentStatus
from services import deliveries, orders, payments
from store.models import DeliveryRow, OrderRow, PaymentRow, utcnow


def event(order_id: str, type: EventType, source: Service, **values: object) -> Event:
    return Event(order_id=order_id, type=type, source=source, **values)


# --- PaymentService -----------------------------------------------------------------


def open_payment(db: Session, created: Event) -> Outcome:
    """order_created: the order's PENDING payment, its window's deadline in its row (the
    sweeper closes it); a decision taken before the payment existed is applied now."""
    order_id = created.order_id
    payment_id = names.payment_id_for(order_id)
    # A confirm committing now either sees this payment or is seen here: never neither.
    decision = payments.hold_decision(db, payment_id)
    payment, inserted = _create_payment(db, order_id, window=True)
    if not inserted:
        return Outcome(note=f"payment already {payment.status}")
    if decision is None:
        return Outcome(note="payment opened, waiting for the customer's decision")
    return apply_decision(db, order_id, payment_id, decision)


def refund_payment(db: Session, failed: Event) -> Outcome:
    """delivery_failed: no dealer within the window: refund the payment."""
    return _undo_payment(db, failed.order_id, failed.reason or names.NO_DEALER_AVAILABLE)


def undo_payment(db: Session, stopped: Event) -> Outcome:
    """delivery_cancelled: cancel the payment, or refund it if completed; one not written yet
    is written cancelled, so nothing can confirm it. No decision is recorded: the customer
    cancelled the order, not the payment, and a payment no longer PENDING refuses them all."""
    order_id = stopped.order_id
    if db.get(PaymentRow, names.payment_id_for(order_id)) is None:
        _create_payment(db, order_id, window=False)
    return _undo_payment(db, order_id, stopped.reason or names.CANCELLED_ON_REQUEST)


# --- OrderService -------------------------------------------------------------------


def confirm_order(db: Session, confirmed: Event) -> Outcome:
    """payment_confirmed: the order is CONFIRMED, and delivered next."""
    order_id = confirmed.order_id
    try:
        orders.confirm_order(db, order_id, names.choreographed_saga_id(order_id))
    except BusinessError as refused:  # cancelled meanwhile: its refund is under way
        return Outcome(note=f"not confirmed: {refused.message}")
    return Outcome((event(order_id, EventType.ORDER_CONFIRMED, Service.ORDERS),), "order confirmed")


def cancel_order(db: Session, undone: Event) -> Outcome:
    """payment_cancelled, payment_expired, payment_refunded: the money is back (or was
    never taken): the order is CANCELLED, with why. The saga's end."""
    order_id = undone.order_id
    reason = undone.reason or FAILURES.get(undone.type)
    outcome, changed = orders.cancel_order(
        db, order_id, names.choreographed_saga_id(order_id), reason
    )
    if not changed:
        return Outcome(note=f"order not cancelled: {outcome.action}")
    return Outcome(
        (event(order_id, EventType.ORDER_CANCELLED, Service.ORDERS, reason=reason),),
        f"order cancelled: {reason}",
    )


def deliver_order(db: Session, completed: Event) -> Outcome:
    """delivery_completed: the order is DELIVERED. The saga's other end."""
    order_id = completed.order_id
    orders.mark_order_delivered(db, order_id, names.choreographed_saga_id(order_id))
    return Outcome((event(order_id, EventType.ORDER_DELIVERED, Service.ORDERS),), "order delivered")


def go_on(db: Session, refused: Event) -> Outcome:
    """order_cancel_refused: the parcel was already on its way: the order goes on."""
    orders.withdraw_cancel_request(db, refused.order_id)
    return Outcome(note="cancel refused after the pivot; the order goes on")


# --- DeliveryService ----------------------------------------------------------------


def create_delivery(db: Session, confirmed: Event) -> Outcome:
    """order_confirmed: the order's PENDING delivery and a first dealer assignment; the
    sweeper keeps trying until the dealer window in the delivery's row closes."""
    order_id = confirmed.order_id
    delivery, inserted = _create_delivery(db, order_id)
    if not inserted:
        return Outcome(note=f"delivery already {delivery.status}")
    now = utcnow()
    timeouts = orders.timeouts_of(db, order_id)
    deliveries.wait_for_dealer(
        db,
        delivery.id,
        assign_by=now + timeouts.dealer_assignment_window,
        next_attempt_at=now + timeouts.dealer_retry.delay(1),
    )
    return try_assignment(db, delivery.id, order_id)


def stop_delivery(db: Session, requested: Event) -> Outcome:
    """order_cancel_requested: before the pivot the delivery is cancelled (or written
    cancelled, so none is created later) and the payment undone next; after it, refused."""
    order_id = requested.order_id
    reason = requested.reason or names.CANCELLED_ON_REQUEST
    delivery = deliveries.delivery_of(db, order_id)
    inserted = False
    if delivery is None:
        delivery, inserted = _create_delivery(db, order_id)
    # One guarded update decides: a dealer assigned first is the pivot.
    _, cancelled = deliveries.cancel_delivery(
        db, order_id, names.choreographed_saga_id(order_id), only_before_pivot=True
    )
    if not cancelled:
        db.refresh(delivery)
        if delivery.status in (DeliveryStatus.IN_TRANSIT, DeliveryStatus.DELIVERED):
            return Outcome(
                (event(order_id, EventType.ORDER_CANCEL_REFUSED, Service.DELIVERIES),),
                f"cancel refused: the delivery is {delivery.status}",
            )
        if delivery.status == DeliveryStatus.CANCELLED and not inserted:
            # The dealer window closed first: its refund and cancel are under way.
            return Outcome(note="delivery already cancelled: no dealer in the window")
    deliveries.stop_waiting(db, delivery.id)
    return Outcome(
        (event(order_id, EventType.DELIVERY_CANCELLED, Service.DELIVERIES, reason=reason),),
        "delivery cancelled before the pivot",
    )


# The failure each ending event stands for, when it carries no reason of its own.
FAILURES = {
    EventType.PAYMENT_CANCELLED: names.PAYMENT_CANCELLED,
    EventType.PAYMENT_EXPIRED: names.PAYMENT_TIMED_OUT,
    EventType.PAYMENT_REFUNDED: names.NO_DEALER_AVAILABLE,
}


def apply_decision(db: Session, order_id: str, payment_id: str, decision: Decision) -> Outcome:
    """The recorded decision, applied to the PENDING payment: COMPLETED and confirmed, or
    CANCELLED (by the customer, or the window closing). Does not commit."""
    if decision == Decision.CONFIRM:
        payments.complete_payment(db, payment_id, names.choreographed_saga_id(order_id))
        confirmed = event(order_id, EventType.PAYMENT_CONFIRMED, Service.PAYMENTS)
        return Outcome((confirmed,), "payment confirmed")
    outcome, changed = payments.cancel_or_refund_payment(
        db, order_id, names.choreographed_saga_id(order_id)
    )
    if not changed:
        return Outcome(note=f"payment {outcome.action}")
    type = (
        EventType.PAYMENT_EXPIRED if decision == Decision.TIMEOUT else EventType.PAYMENT_CANCELLED
    )
    return Outcome((event(order_id, type, Service.PAYMENTS),), f"payment {outcome.action}")


def try_assignment(db: Session, delivery_id: str, order_id: str) -> Outcome:
    """One dealer assignment: the pivot when a dealer is free."""
    delivery, assigned = deliveries.assign_dealer(
        db, delivery_id, names.choreographed_saga_id(order_id)
    )
    if not assigned:
        return Outcome(note="no dealer free yet")
    deliveries.stop_waiting(db, delivery_id)
    return Outcome(
        (
            event(
                order_id,
                EventType.DELIVERY_ASSIGNED,
                Service.DELIVERIES,
                dealer_id=delivery.dealer_id,
            ),
        ),
        f"dealer {delivery.dealer_id} assigned: the pivot",
    )


def _undo_payment(db: Session, order_id: str, reason: str) -> Outcome:
    outcome, changed = payments.cancel_or_refund_payment(
        db, order_id, names.choreographed_saga_id(order_id)
    )
    if not changed:
        return Outcome(note=f"payment {outcome.action}")
    type = (
        EventType.PAYMENT_REFUNDED
        if outcome.status == PaymentStatus.REFUNDED
        else EventType.PAYMENT_CANCELLED
    )
    return Outcome(
        (event(order_id, type, Service.PAYMENTS, reason=reason),), f"payment {outcome.action}"
    )


def _order(db: Session, order_id: str) -> OrderRow:
    order = db.get(OrderRow, order_id)
    if order is None:  # every event follows the order's creation: a missing row is a fault
        raise LookupError(f"order {order_id} does not exist")
    return order


def _create_payment(db: Session, order_id: str, *, window: bool) -> tuple[PaymentRow, bool]:
    """The order's payment, PENDING, of the order's total, with the order's payment window
    from now (``window``) or none (or the existing one); True if written now."""
    order = _order(db, order_id)
    expires_at = utcnow() + orders.timeouts_of(db, order_id).payment_window if window else None
    return payments.create_payment(
        db,
        names.payment_id_for(order_id),
        order_id,
        from_cents(order.total_cents),
        expires_at,
        names.choreographed_saga_id(order_id),
    )


def _create_delivery(db: Session, order_id: str) -> tuple[DeliveryRow, bool]:
    """The order's delivery, PENDING, to its address (or the existing one); True if new."""
    order = _order(db, order_id)
    return deliveries.create_delivery(
        db,
        names.delivery_id_for(order_id),
        order_id,
        order.province,
        order.city,
        names.choreographed_saga_id(order_id),
    )


# The choreography in one table; each pair is one durable consumer (:data:`CONSUMERS`).
ROUTES: dict[tuple[Service, EventType], Handler] = {
    (Service.PAYMENTS, EventType.ORDER_CREATED): open_payment,
    (Service.ORDERS, EventType.PAYMENT_CONFIRMED): confirm_order,
    (Service.DELIVERIES, EventType.ORDER_CONFIRMED): create_delivery,
    (Service.PAYMENTS, EventType.DELIVERY_FAILED): refund_payment,
    (Service.ORDERS, EventType.PAYMENT_REFUNDED): cancel_order,
    (Service.ORDERS, EventType.PAYMENT_CANCELLED): cancel_order,
    (Service.ORDERS, EventType.PAYMENT_EXPIRED): cancel_order,
    (Service.ORDERS, EventType.DELIVERY_COMPLETED): deliver_order,
    (Service.DELIVERIES, EventType.ORDER_CANCEL_REQUESTED): stop_delivery,
    (Service.PAYMENTS, EventType.DELIVERY_CANCELLED): undo_payment,
    (Service.ORDERS, EventType.ORDER_CANCEL_REFUSED): go_on,
}
CONSUMERS: dict[tuple[Service, EventType], str] = {
    (service, type): f"{service}-{type}" for service, type in ROUTES
}
