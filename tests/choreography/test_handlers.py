"""Each service's reaction to each event it consumes: every (service, event) pair of
``domain.events.CONSUMERS``, through the real ``Choreography`` (its consumers, handlers and
``services/``) on FastStream's in-memory ``TestNatsBroker``, over the real database.

The in-memory broker hands a published event to its consumer before ``publish`` returns,
and so every event that consumer emits to the next one: a call through the door comes back
with the saga moved as far as it goes. Each test asserts one consumer's reaction (the rows it
changed, the events it wrote to the outbox, its inbox row with its note for the order's event
log), then delivers the same event again and proves that changes nothing. The refusals are
here too: a confirm that finds its order cancelled, a cancel after the pivot
(``order_cancel_refused``) or after the dealer window closed, a refund only of a COMPLETED
payment, and only once.

To reorder events as a slow broker would, ``Shop.held`` writes through the door while the
broker is down: its events wait in the outbox until the test delivers them.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from faststream.nats import NatsBroker, TestNatsBroker
from sqlalchemy import Engine

from choreography.consumer import Outcome
from choreography.handlers import open_payment
from choreography.outbox import Publisher
from choreography.runtime import Choreography, connect_broker
from choreography.sweepers import Sweepers
from domain import names
from domain.events import STREAM, Event, EventType, Service
from domain.status import Decision, DeliveryStatus, OrderStatus, PaymentStatus
from sagas.choreography import ChoreographedSagas
from sagas.door import Sagas
from sagas.errors import ConflictError
from services import payments
from settings import Settings
from store.db import session, transaction
from store.models import InboxRow, PaymentRow, as_utc, utcnow
from tests.choreography.observe import (
    a_city,
    choreographed_door,
    choreography_settings,
    dealer_load,
    decision_of,
    delivery_of,
    events,
    eventually,
    inbox_row,
    order_of,
    payment_of,
    refunds_of,
    rows_of,
    the_event,
    types,
)
from tests.choreography.test_sweepers import lock_waiters
from tests.saga_harness import add_dealer, order_request

pytestmark = pytest.mark.db

# The in-memory broker never dials this address; the settings only need one.
UNUSED_NATS_URL = "nats://127.0.0.1:4222"


@dataclass
class Shop:
    """The choreography of one test on the in-memory broker.

    ``door`` publishes what it writes (applied, downstream too, before it returns); ``held``
    is the same door while the broker is down: its events wait in the outbox for
    :meth:`deliver`. ``sweepers`` fire the windows' deadlines, one round per ``sweep()``.
    """

    engine: Engine
    settings: Settings
    broker: NatsBroker
    publisher: Publisher
    door: Sagas
    held: Sagas
    sweepers: Sweepers

    async def place(self, city: str = "Tehran", *, door: Sagas | None = None) -> str:
        """Place an order through ``door`` (the publishing one by default); its id."""
        return (await (door or self.door).place(order_request(city=city), None)).order_id

    async def decide(self, order_id: str, decision: Decision, *, door: Sagas | None = None) -> None:
        """The customer's decision on the order's payment."""
        await (door or self.door).decide_payment(names.payment_id_for(order_id), decision)

    async def cancel(self, order_id: str) -> None:
        """An operator's cancel request."""
        await self.door.cancel(order_id)

    async def cancel_checked_before_the_pivot(self, order_id: str) -> None:
        """A cancel request the door let through just before the dealer was assigned: the
        style's adapter writes it, past the door's own pivot check, as in that race."""
        await ChoreographedSagas(self.engine, self.settings, self.publisher).cancel(order_id)

    async def deliver(self, event: Event) -> InboxRow:
        """Publish ``event`` as the outbox does; its consumer's inbox row (it was applied)."""
        await self._publish(event)
        return applied(self.engine, event)

    async def delivered_again_changes_nothing(self, event: Event) -> None:
        """Deliver ``event`` once more, under a message id of its own (so only the inbox
        stands between it and a second effect), and prove no row of its order changed."""
        before = await asyncio.to_thread(rows_of, self.engine, event.order_id)
        await self._publish(event)
        assert await asyncio.to_thread(rows_of, self.engine, event.order_id) == before

    async def _publish(self, event: Event) -> None:
        await self.broker.publish(
            event.model_dump_json().encode(),
            event.type.subject,
            headers={
                "Nats-Msg-Id": f"{event.event_id}:{uuid.uuid4()}",
                "content-type": "application/json",
            },
            stream=STREAM,
        )


def applied(engine: Engine, event: Event) -> InboxRow:
    """The inbox row of ``event``'s consumer: it applied the event, at its first delivery."""
    found = inbox_row(engine, event)
    assert found is not None, f"{event.type} of order {event.order_id} was not applied"
    assert (found.order_id, found.type, found.deliveries) == (event.order_id, event.type, 1)
    return found


def log(engine: Engine, order_id: str) -> list[EventType]:
    """The order's event log: the types of its events in the outbox, as they were written."""
    return types(events(engine, order_id))


# The event logs of the paths most tests take.
CREATED = [EventType.ORDER_CREATED]
CONFIRMED = [*CREATED, EventType.PAYMENT_CONFIRMED, EventType.ORDER_CONFIRMED]
CANCELLED_WHILE_SOUGHT = [
    *CONFIRMED,
    EventType.ORDER_CANCEL_REQUESTED,
    EventType.DELIVERY_CANCELLED,
    EventType.PAYMENT_REFUNDED,
    EventType.ORDER_CANCELLED,
]
CANCELLED_BEFORE_THE_DECISION = [
    *CREATED,
    EventType.ORDER_CANCEL_REQUESTED,
    EventType.DELIVERY_CANCELLED,
    EventType.PAYMENT_CANCELLED,
    EventType.ORDER_CANCELLED,
]
REFUSED = [
    *CONFIRMED,
    EventType.DELIVERY_ASSIGNED,
    EventType.ORDER_CANCEL_REQUESTED,
    EventType.ORDER_CANCEL_REFUSED,
]


@pytest.fixture
async def shop(engine: Engine) -> AsyncIterator[Shop]:
    settings = choreography_settings(engine, UNUSED_NATS_URL)
    choreography = Choreography(engine, settings, connect_broker(settings))
    async with TestNatsBroker(choreography.broker) as broker:
        down = Publisher(engine, NatsBroker(UNUSED_NATS_URL))  # never started: publish fails
        yield Shop(
            engine=engine,
            settings=settings,
            broker=broker,
            publisher=choreography.publisher,
            door=choreographed_door(engine, settings, choreography.publisher),
            held=choreographed_door(engine, settings, down),
            sweepers=Sweepers(engine, choreography.publisher),
        )


# --- PaymentService: order_created ----------------------------------------------------------


async def test_order_created_opens_the_pending_payment_with_the_orders_window(
    shop: Shop,
) -> None:
    order_id = await shop.place(door=shop.held)
    assert payment_of(shop.engine, order_id) is None
    created = the_event(shop.engine, order_id, EventType.ORDER_CREATED)
    # The order keeps its windows, the door's settings', for its services to read.
    window = timedelta(seconds=shop.settings.payment_window_seconds)
    assert (
        order_of(shop.engine, order_id).saga_timeouts
        == shop.settings.saga_timeouts.model_dump_json()
    )
    before = utcnow()
    inbox = await shop.deliver(created)
    after = utcnow()
    payment = payment_of(shop.engine, order_id)
    assert payment is not None
    assert (payment.id, payment.status, payment.amount_cents) == (
        names.payment_id_for(order_id),
        PaymentStatus.PENDING,
        order_of(shop.engine, order_id).total_cents,
    )
    assert payment.expires_at is not None
    assert before + window <= as_utc(payment.expires_at) <= after + window
    assert inbox.note == "payment opened, waiting for the customer's decision"
    assert log(shop.engine, order_id) == CREATED  # nothing emitted
    assert order_of(shop.engine, order_id).status == OrderStatus.PENDING
    await shop.delivered_again_changes_nothing(created)


async def test_a_confirm_racing_the_payments_creation_is_applied_not_stranded(
    shop: Shop,
) -> None:
    """The customer's confirm records its decision and finds no payment yet (PaymentService
    is writing it, not committed): PaymentService waits for the decision's row and applies
    the confirm. (Each used to miss the other's uncommitted row: the order waited, PENDING
    with its confirm on record, until its window closed.)"""
    engine = shop.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs write transactions one at a time: they cannot interleave")
    order_id = await shop.place(door=shop.held)
    created = the_event(engine, order_id, EventType.ORDER_CREATED)
    payment_id = names.payment_id_for(order_id)

    def open_the_payment() -> Outcome:
        with transaction(engine) as db:
            return open_payment(db, created)

    with session(engine) as deciding:
        # The confirm's transaction: its decision recorded, the payment not there to apply.
        assert payments.take_decision(deciding, payment_id, Decision.CONFIRM).applied
        assert deciding.get(PaymentRow, payment_id) is None
        opening = asyncio.create_task(asyncio.to_thread(open_the_payment), name="opening")
        await lock_waiters(engine, 1, opening)
        deciding.commit()
    opened = await opening
    assert (opened.note, types(list(opened.emitted))) == (
        "payment confirmed",
        [EventType.PAYMENT_CONFIRMED],
    )
    payment = payment_of(engine, order_id)
    assert payment is not None
    assert payment.status == PaymentStatus.COMPLETED


@pytest.mark.parametrize(
    ("confirm", "payment_status", "order_status", "expected_log"),
    [
        (True, PaymentStatus.COMPLETED, OrderStatus.CONFIRMED, CONFIRMED),
        (
            False,
            PaymentStatus.CANCELLED,
            OrderStatus.CANCELLED,
            [*CREATED, EventType.PAYMENT_CANCELLED, EventType.ORDER_CANCELLED],
        ),
    ],
    ids=["confirm", "cancel"],
)
async def test_a_decision_taken_before_the_payment_existed_is_applied_as_it_is_written(
    shop: Shop,
    confirm: bool,
    payment_status: PaymentStatus,
    order_status: OrderStatus,
    expected_log: list[EventType],
) -> None:
    order_id = await shop.place(door=shop.held)
    decision = Decision.CONFIRM if confirm else Decision.CANCEL
    await shop.decide(order_id, decision)  # recorded; there is no payment to apply it to
    assert payment_of(shop.engine, order_id) is None
    created = the_event(shop.engine, order_id, EventType.ORDER_CREATED)
    inbox = await shop.deliver(created)
    payment = payment_of(shop.engine, order_id)
    assert payment is not None
    assert payment.status == payment_status
    assert inbox.note == f"payment {'confirmed' if confirm else 'cancelled'}"
    assert log(shop.engine, order_id) == expected_log
    assert order_of(shop.engine, order_id).status == order_status  # OrderService took it
    await shop.delivered_again_changes_nothing(created)


# --- OrderService: payment_confirmed --------------------------------------------------------


async def test_payment_confirmed_confirms_the_order(shop: Shop) -> None:
    order_id = await shop.place()
    await shop.decide(order_id, Decision.CONFIRM, door=shop.held)
    assert order_of(shop.engine, order_id).status == OrderStatus.PENDING
    confirmed = the_event(shop.engine, order_id, EventType.PAYMENT_CONFIRMED)
    inbox = await shop.deliver(confirmed)
    assert order_of(shop.engine, order_id).status == OrderStatus.CONFIRMED
    assert inbox.note == "order confirmed"
    assert log(shop.engine, order_id) == CONFIRMED
    await shop.delivered_again_changes_nothing(confirmed)


async def test_payment_confirmed_after_the_order_was_cancelled_changes_nothing(
    shop: Shop,
) -> None:
    order_id = await shop.place()
    await shop.decide(order_id, Decision.CONFIRM, door=shop.held)  # payment_confirmed is late...
    confirmed = the_event(shop.engine, order_id, EventType.PAYMENT_CONFIRMED)
    await shop.cancel(order_id)  # ...and a cancel overtakes it: refunded, cancelled
    assert order_of(shop.engine, order_id).status == OrderStatus.CANCELLED
    before = log(shop.engine, order_id)
    assert before == [
        *CREATED,
        EventType.PAYMENT_CONFIRMED,
        EventType.ORDER_CANCEL_REQUESTED,
        EventType.DELIVERY_CANCELLED,
        EventType.PAYMENT_REFUNDED,
        EventType.ORDER_CANCELLED,
    ]
    inbox = await shop.deliver(confirmed)
    assert inbox.note is not None
    assert inbox.note.startswith("not confirmed:")
    assert "CANCELLED" in inbox.note
    order = order_of(shop.engine, order_id)
    assert (order.status, order.cancel_reason) == (
        OrderStatus.CANCELLED,
        names.CANCELLED_ON_REQUEST,
    )
    assert log(shop.engine, order_id) == before  # no order_confirmed
    delivery = delivery_of(shop.engine, order_id)
    assert delivery is not None
    assert (delivery.status, delivery.dealer_id) == (DeliveryStatus.CANCELLED, None)
    payment = payment_of(shop.engine, order_id)
    assert payment is not None
    assert payment.status == PaymentStatus.REFUNDED
    assert len(refunds_of(shop.engine, payment.id)) == 1
    await shop.delivered_again_changes_nothing(confirmed)


# --- DeliveryService: order_confirmed -------------------------------------------------------


async def test_order_confirmed_assigns_a_free_dealer_the_pivot(shop: Shop) -> None:
    city = a_city()
    dealer_id = add_dealer(shop.engine, city=city, capacity=1)
    order_id = await shop.place(city)
    await shop.decide(order_id, Decision.CONFIRM)
    confirmed = the_event(shop.engine, order_id, EventType.ORDER_CONFIRMED)
    inbox = applied(shop.engine, confirmed)
    delivery = delivery_of(shop.engine, order_id)
    assert delivery is not None
    assert (delivery.id, delivery.status, delivery.dealer_id, delivery.next_attempt_at) == (
        names.delivery_id_for(order_id),
        DeliveryStatus.IN_TRANSIT,
        dealer_id,
        None,
    )
    assert dealer_load(shop.engine, dealer_id) == 1
    assert inbox.note == f"dealer {dealer_id} assigned: the pivot"
    assert log(shop.engine, order_id) == [*CONFIRMED, EventType.DELIVERY_ASSIGNED]
    assigned = the_event(shop.engine, order_id, EventType.DELIVERY_ASSIGNED)
    assert (assigned.source, assigned.dealer_id) == (Service.DELIVERIES, dealer_id)
    await shop.delivered_again_changes_nothing(confirmed)
    assert dealer_load(shop.engine, dealer_id) == 1


async def test_order_confirmed_without_a_free_dealer_waits_within_the_dealer_window(
    shop: Shop,
) -> None:
    order_id = await shop.place(a_city())  # nobody delivers there
    timeouts = shop.settings.saga_timeouts
    before = utcnow()
    await shop.decide(order_id, Decision.CONFIRM)
    after = utcnow()
    confirmed = the_event(shop.engine, order_id, EventType.ORDER_CONFIRMED)
    inbox = applied(shop.engine, confirmed)
    delivery = delivery_of(shop.engine, order_id)
    assert delivery is not None
    assert (delivery.status, delivery.dealer_id) == (DeliveryStatus.PENDING, None)
    assert delivery.assign_by is not None
    assert delivery.next_attempt_at is not None
    window = timeouts.dealer_assignment_window
    retry = timeouts.dealer_retry_initial_interval
    assert before + window <= as_utc(delivery.assign_by) <= after + window
    assert before + retry <= as_utc(delivery.next_attempt_at) <= after + retry
    assert inbox.note == "no dealer free yet"
    assert log(shop.engine, order_id) == CONFIRMED  # nothing emitted
    await shop.delivered_again_changes_nothing(confirmed)


# --- PaymentService: delivery_failed --------------------------------------------------------


async def test_delivery_failed_refunds_the_completed_payment_once(shop: Shop) -> None:
    order_id = await shop.place(a_city())
    await shop.decide(order_id, Decision.CONFIRM)
    failed = await eventually(
        lambda: events(shop.engine, order_id, type=EventType.DELIVERY_FAILED),
        what="the dealer window closes",
        between=shop.sweepers.sweep,
    )
    assert len(failed) == 1
    assert failed[0].reason == names.NO_DEALER_AVAILABLE
    inbox = applied(shop.engine, failed[0])
    payment = payment_of(shop.engine, order_id)
    assert payment is not None
    assert payment.status == PaymentStatus.REFUNDED
    assert payment.refunded_at is not None
    assert [r.amount_cents for r in refunds_of(shop.engine, payment.id)] == [payment.amount_cents]
    assert inbox.note == "payment refunded"
    refunded_log = [
        *CONFIRMED,
        EventType.DELIVERY_FAILED,
        EventType.PAYMENT_REFUNDED,
        EventType.ORDER_CANCELLED,
    ]
    assert log(shop.engine, order_id) == refunded_log
    refunded = the_event(shop.engine, order_id, EventType.PAYMENT_REFUNDED)
    assert (refunded.source, refunded.reason) == (Service.PAYMENTS, names.NO_DEALER_AVAILABLE)
    await shop.delivered_again_changes_nothing(failed[0])
    # Another delivery_failed (a second event, not a redelivery): REFUNDED is no longer
    # COMPLETED, so nothing is refunded again.
    again = Event(
        order_id=order_id,
        type=EventType.DELIVERY_FAILED,
        source=Service.DELIVERIES,
        reason=names.NO_DEALER_AVAILABLE,
    )
    inbox = await shop.deliver(again)
    assert inbox.note == "payment already refunded"
    assert len(refunds_of(shop.engine, payment.id)) == 1
    assert log(shop.engine, order_id) == refunded_log


# --- OrderService: payment_refunded, payment_cancelled, payment_expired ---------------------


async def cancel_while_a_dealer_is_sought(shop: Shop) -> str:
    """A confirmed order waiting for a dealer, cancelled by an operator: its delivery is
    cancelled, its payment refunded and the order cancelled. The order's id."""
    order_id = await shop.place(a_city())
    await shop.decide(order_id, Decision.CONFIRM)
    delivery = delivery_of(shop.engine, order_id)
    assert delivery is not None
    assert (delivery.status, delivery.next_attempt_at is not None) == (DeliveryStatus.PENDING, True)
    await shop.cancel(order_id)
    return order_id


async def test_payment_refunded_cancels_the_order_with_its_reason(shop: Shop) -> None:
    order_id = await cancel_while_a_dealer_is_sought(shop)
    refunded = the_event(shop.engine, order_id, EventType.PAYMENT_REFUNDED)
    assert refunded.reason == names.CANCELLED_ON_REQUEST
    inbox = applied(shop.engine, refunded)
    order = order_of(shop.engine, order_id)
    assert (order.status, order.cancel_reason) == (
        OrderStatus.CANCELLED,
        names.CANCELLED_ON_REQUEST,
    )
    assert inbox.note == f"order cancelled: {names.CANCELLED_ON_REQUEST}"
    assert log(shop.engine, order_id) == CANCELLED_WHILE_SOUGHT
    cancelled = the_event(shop.engine, order_id, EventType.ORDER_CANCELLED)
    assert (cancelled.source, cancelled.reason) == (Service.ORDERS, names.CANCELLED_ON_REQUEST)
    await shop.delivered_again_changes_nothing(refunded)


async def test_payment_cancelled_cancels_the_order_and_a_second_one_changes_nothing(
    shop: Shop,
) -> None:
    order_id = await shop.place()
    await shop.decide(order_id, Decision.CANCEL)
    cancelled = the_event(shop.engine, order_id, EventType.PAYMENT_CANCELLED)
    inbox = applied(shop.engine, cancelled)
    order = order_of(shop.engine, order_id)
    assert (order.status, order.cancel_reason) == (OrderStatus.CANCELLED, names.PAYMENT_CANCELLED)
    assert inbox.note == f"order cancelled: {names.PAYMENT_CANCELLED}"
    cancelled_log = [*CREATED, EventType.PAYMENT_CANCELLED, EventType.ORDER_CANCELLED]
    assert log(shop.engine, order_id) == cancelled_log
    await shop.delivered_again_changes_nothing(cancelled)
    # Another ending event for the cancelled order: nothing to cancel, nothing emitted.
    again = Event(order_id=order_id, type=EventType.PAYMENT_CANCELLED, source=Service.PAYMENTS)
    inbox = await shop.deliver(again)
    assert inbox.note == "order not cancelled: already cancelled"
    assert log(shop.engine, order_id) == cancelled_log


async def test_payment_expired_cancels_the_order(shop: Shop) -> None:
    short = shop.settings.model_copy(update={"payment_window_seconds": 0.2})
    door = choreographed_door(shop.engine, short, shop.publisher)
    order_id = await shop.place(door=door)
    expired = await eventually(
        lambda: events(shop.engine, order_id, type=EventType.PAYMENT_EXPIRED),
        what="the payment window closes",
        between=shop.sweepers.sweep,
    )
    assert len(expired) == 1
    inbox = applied(shop.engine, expired[0])
    order = order_of(shop.engine, order_id)
    assert (order.status, order.cancel_reason) == (OrderStatus.CANCELLED, names.PAYMENT_TIMED_OUT)
    payment = payment_of(shop.engine, order_id)
    assert payment is not None
    assert (payment.status, decision_of(shop.engine, order_id)) == (
        PaymentStatus.CANCELLED,
        "TIMEOUT",
    )
    assert inbox.note == f"order cancelled: {names.PAYMENT_TIMED_OUT}"
    assert log(shop.engine, order_id) == [
        *CREATED,
        EventType.PAYMENT_EXPIRED,
        EventType.ORDER_CANCELLED,
    ]
    await shop.delivered_again_changes_nothing(expired[0])


# --- OrderService: delivery_completed -------------------------------------------------------


async def test_delivery_completed_delivers_the_order_and_frees_the_dealer(shop: Shop) -> None:
    city = a_city()
    dealer_id = add_dealer(shop.engine, city=city, capacity=1)
    order_id = await shop.place(city)
    await shop.decide(order_id, Decision.CONFIRM)
    await shop.door.report_delivered(names.delivery_id_for(order_id))
    completed = the_event(shop.engine, order_id, EventType.DELIVERY_COMPLETED)
    assert completed.dealer_id == dealer_id
    inbox = applied(shop.engine, completed)
    assert order_of(shop.engine, order_id).status == OrderStatus.DELIVERED
    assert inbox.note == "order delivered"
    assert log(shop.engine, order_id) == [
        *CONFIRMED,
        EventType.DELIVERY_ASSIGNED,
        EventType.DELIVERY_COMPLETED,
        EventType.ORDER_DELIVERED,
    ]
    assert dealer_load(shop.engine, dealer_id) == 0
    await shop.delivered_again_changes_nothing(completed)


# --- DeliveryService: order_cancel_requested ------------------------------------------------


async def test_a_cancel_before_the_decision_writes_the_delivery_cancelled(shop: Shop) -> None:
    order_id = await shop.place()
    await shop.cancel(order_id)
    requested = the_event(shop.engine, order_id, EventType.ORDER_CANCEL_REQUESTED)
    inbox = applied(shop.engine, requested)
    delivery = delivery_of(shop.engine, order_id)
    assert delivery is not None  # written cancelled: none can be created for the order later
    assert (delivery.status, delivery.dealer_id, delivery.next_attempt_at) == (
        DeliveryStatus.CANCELLED,
        None,
        None,
    )
    assert inbox.note == "delivery cancelled before the pivot"
    assert log(shop.engine, order_id) == CANCELLED_BEFORE_THE_DECISION
    stopped = the_event(shop.engine, order_id, EventType.DELIVERY_CANCELLED)
    assert (stopped.source, stopped.reason) == (Service.DELIVERIES, names.CANCELLED_ON_REQUEST)
    assert order_of(shop.engine, order_id).status == OrderStatus.CANCELLED
    await shop.delivered_again_changes_nothing(requested)


async def test_a_cancel_while_a_dealer_is_sought_cancels_the_waiting_delivery(
    shop: Shop,
) -> None:
    order_id = await cancel_while_a_dealer_is_sought(shop)
    requested = the_event(shop.engine, order_id, EventType.ORDER_CANCEL_REQUESTED)
    inbox = applied(shop.engine, requested)
    delivery = delivery_of(shop.engine, order_id)
    assert delivery is not None
    assert (delivery.status, delivery.next_attempt_at) == (DeliveryStatus.CANCELLED, None)
    assert inbox.note == "delivery cancelled before the pivot"
    assert log(shop.engine, order_id) == CANCELLED_WHILE_SOUGHT
    await shop.delivered_again_changes_nothing(requested)


async def cancel_after_the_pivot(shop: Shop) -> tuple[str, int]:
    """An order in transit whose cancel was asked for as the dealer was being assigned (and
    was refused). Its id and dealer."""
    city = a_city()
    dealer_id = add_dealer(shop.engine, city=city, capacity=1)
    order_id = await shop.place(city)
    await shop.decide(order_id, Decision.CONFIRM)
    await shop.cancel_checked_before_the_pivot(order_id)
    return order_id, dealer_id


async def test_a_cancel_after_the_pivot_is_refused(shop: Shop) -> None:
    order_id, dealer_id = await cancel_after_the_pivot(shop)
    requested = the_event(shop.engine, order_id, EventType.ORDER_CANCEL_REQUESTED)
    inbox = applied(shop.engine, requested)
    delivery = delivery_of(shop.engine, order_id)
    assert delivery is not None
    assert (delivery.status, delivery.dealer_id) == (DeliveryStatus.IN_TRANSIT, dealer_id)
    assert dealer_load(shop.engine, dealer_id) == 1
    assert inbox.note == "cancel refused: the delivery is IN_TRANSIT"
    assert log(shop.engine, order_id) == REFUSED
    await shop.delivered_again_changes_nothing(requested)


async def test_a_cancel_after_the_dealer_window_closed_changes_nothing(shop: Shop) -> None:
    order_id = await shop.place(a_city())
    await shop.decide(order_id, Decision.CONFIRM)
    await shop.held.cancel(order_id)  # order_cancel_requested is late...
    requested = the_event(shop.engine, order_id, EventType.ORDER_CANCEL_REQUESTED)
    await eventually(  # ...and the dealer window closes first: refunded, cancelled
        lambda: order_of(shop.engine, order_id).status == OrderStatus.CANCELLED,
        what="the dealer window closes",
        between=shop.sweepers.sweep,
    )
    before = log(shop.engine, order_id)
    inbox = await shop.deliver(requested)
    assert inbox.note == "delivery already cancelled: no dealer in the window"
    assert log(shop.engine, order_id) == before  # no delivery_cancelled: nothing to undo
    order = order_of(shop.engine, order_id)
    assert (order.status, order.cancel_reason) == (
        OrderStatus.CANCELLED,
        names.NO_DEALER_AVAILABLE,
    )
    payment = payment_of(shop.engine, order_id)
    assert payment is not None
    assert len(refunds_of(shop.engine, payment.id)) == 1
    await shop.delivered_again_changes_nothing(requested)


# --- PaymentService: delivery_cancelled -----------------------------------------------------


async def test_delivery_cancelled_cancels_a_pending_payment_and_refunds_nothing(
    shop: Shop,
) -> None:
    order_id = await shop.place()
    await shop.cancel(order_id)
    stopped = the_event(shop.engine, order_id, EventType.DELIVERY_CANCELLED)
    inbox = applied(shop.engine, stopped)
    payment = payment_of(shop.engine, order_id)
    assert payment is not None
    assert (payment.status, payment.refunded_at) == (PaymentStatus.CANCELLED, None)
    assert refunds_of(shop.engine, payment.id) == []
    # The order was cancelled, not the payment decided: no decision is recorded, and a late
    # confirm finds the payment no longer PENDING.
    assert decision_of(shop.engine, order_id) is None
    assert inbox.note == "payment cancelled"
    assert log(shop.engine, order_id) == CANCELLED_BEFORE_THE_DECISION
    undone = the_event(shop.engine, order_id, EventType.PAYMENT_CANCELLED)
    assert (undone.source, undone.reason) == (Service.PAYMENTS, names.CANCELLED_ON_REQUEST)
    await shop.delivered_again_changes_nothing(stopped)
    with pytest.raises(ConflictError):
        await shop.decide(order_id, Decision.CONFIRM)


async def test_delivery_cancelled_refunds_a_completed_payment(shop: Shop) -> None:
    order_id = await cancel_while_a_dealer_is_sought(shop)
    stopped = the_event(shop.engine, order_id, EventType.DELIVERY_CANCELLED)
    inbox = applied(shop.engine, stopped)
    payment = payment_of(shop.engine, order_id)
    assert payment is not None
    assert payment.status == PaymentStatus.REFUNDED
    assert [r.amount_cents for r in refunds_of(shop.engine, payment.id)] == [payment.amount_cents]
    assert decision_of(shop.engine, order_id) == "CONFIRM"  # the customer's, kept
    assert inbox.note == "payment refunded"
    assert log(shop.engine, order_id) == CANCELLED_WHILE_SOUGHT
    await shop.delivered_again_changes_nothing(stopped)
    assert len(refunds_of(shop.engine, payment.id)) == 1


async def test_delivery_cancelled_before_the_payment_exists_writes_it_cancelled(
    shop: Shop,
) -> None:
    order_id = await shop.place(door=shop.held)  # order_created waits in the outbox...
    created = the_event(shop.engine, order_id, EventType.ORDER_CREATED)
    await shop.cancel(order_id)  # ...and the cancel overtakes it
    stopped = the_event(shop.engine, order_id, EventType.DELIVERY_CANCELLED)
    inbox = applied(shop.engine, stopped)
    payment = payment_of(shop.engine, order_id)
    assert payment is not None
    assert (payment.status, payment.expires_at) == (PaymentStatus.CANCELLED, None)
    assert decision_of(shop.engine, order_id) is None
    assert refunds_of(shop.engine, payment.id) == []
    assert inbox.note == "payment cancelled"
    assert order_of(shop.engine, order_id).status == OrderStatus.CANCELLED
    await shop.delivered_again_changes_nothing(stopped)
    # The late order_created finds the payment written, and the customer can no longer
    # confirm it.
    late = await shop.deliver(created)
    assert late.note == "payment already CANCELLED"
    assert log(shop.engine, order_id) == CANCELLED_BEFORE_THE_DECISION
    with pytest.raises(ConflictError):
        await shop.decide(order_id, Decision.CONFIRM)


# --- OrderService: order_cancel_refused -----------------------------------------------------


async def test_order_cancel_refused_lets_the_order_go_on_to_delivery(shop: Shop) -> None:
    order_id, dealer_id = await cancel_after_the_pivot(shop)
    refused = the_event(shop.engine, order_id, EventType.ORDER_CANCEL_REFUSED)
    inbox = applied(shop.engine, refused)
    order = order_of(shop.engine, order_id)
    assert (order.status, order.cancel_requested_at, order.cancel_reason) == (
        OrderStatus.CONFIRMED,
        None,
        None,
    )
    payment = payment_of(shop.engine, order_id)
    assert payment is not None
    assert payment.status == PaymentStatus.COMPLETED
    assert refunds_of(shop.engine, payment.id) == []
    assert inbox.note == "cancel refused after the pivot; the order goes on"
    assert log(shop.engine, order_id) == REFUSED  # nothing emitted
    await shop.delivered_again_changes_nothing(refused)
    await shop.door.report_delivered(names.delivery_id_for(order_id))
    assert order_of(shop.engine, order_id).status == OrderStatus.DELIVERED
    assert dealer_load(shop.engine, dealer_id) == 0
