"""Decisions recorded in the database count, and reports the database backs are held until
the saga sees its pivot.

The door records the customer's decision (a compare-and-set in ``payment_decisions``) before
it signals the saga. So a decision counts even when its signal never arrives: the saga takes
it with its payment, or when its window closes.
"""

import asyncio
import threading
import uuid
from datetime import timedelta

from activities._defn import service_activity
from activities.deliveries import DeliveryActivities
from domain import names
from domain.payloads import DeliveredReport, DeliveryRef, DeliverySnapshot, SagaTimeouts
from domain.status import Decision, DeliveryStatus, OrderStatus, PaymentStatus, SagaPhase
from services import payments
from store.db import session
from store.models import PaymentDecisionRow
from tests.activities.support import get_row
from tests.saga_harness import (
    DELIVERED_STEPS,
    add_dealer,
    confirm_payment,
    db_statuses,
    saga_workers,
    start_saga,
    wait_for_phase,
)
from workflows import OrderProcessWorkflow as Saga


def opened(engine, order_id: str) -> str:
    """What the door does when it accepts an order: open its payment's decision."""
    payment_id = names.payment_id_for(order_id)
    with session(engine) as db:
        payments.open_decision(db, payment_id, order_id, "customer-1")
        db.commit()
    return payment_id


def record_decision(engine, order_id: str, decision: Decision) -> None:
    """What the door does for a customer's decision: compare-and-set it, once accepted."""
    payment_id = opened(engine, order_id)
    with session(engine) as db:
        assert payments.take_decision(db, payment_id, decision).applied
        db.commit()


async def test_a_confirm_recorded_before_the_payment_exists_is_taken_without_its_signal(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    add_dealer(engine)
    order_id = str(uuid.uuid4())
    record_decision(engine, order_id, Decision.CONFIRM)  # its signal is lost
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix, order_id=order_id)
        state = await wait_for_phase(handle, SagaPhase.IN_TRANSIT)

    assert [s.name for s in state.steps] == DELIVERED_STEPS[:6]
    assert [(s.name, s.applied) for s in state.signals] == [("recorded_confirm", True)]
    assert db_statuses(engine, order_id)["payment"] == PaymentStatus.COMPLETED


async def test_the_window_closing_takes_a_confirm_whose_signal_never_came(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    add_dealer(engine)
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix, timeouts=SagaTimeouts())
        waiting = await wait_for_phase(handle, SagaPhase.AWAITING_PAYMENT)
        # The customer confirmed in time; the API recorded it and died before signalling.
        record_decision(engine, waiting.order_id, Decision.CONFIRM)
        # The 30-minute window passes on the server's clock; the saga reads the decision back.
        await time_skipping_env.sleep(SagaTimeouts().payment_window + timedelta(minutes=1))
        state = await wait_for_phase(handle, SagaPhase.IN_TRANSIT)

    names_run = [s.name for s in state.steps]
    assert names_run[:3] == [names.CREATE_ORDER, names.CREATE_PAYMENT, names.EXPIRE_PAYMENT]
    assert names.COMPLETE_PAYMENT in names_run
    assert state.failure_type is None
    assert db_statuses(engine, waiting.order_id)["payment"] == PaymentStatus.COMPLETED


async def test_the_window_closing_with_no_decision_records_the_timeout_and_cancels(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    order_id = str(uuid.uuid4())
    opened(engine, order_id)  # accepted, as the door accepts it
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(
            client, engine, task_queue_suffix, timeouts=SagaTimeouts(), order_id=order_id
        )
        result = await handle.result()

    assert result.failure_type == names.PAYMENT_TIMED_OUT
    assert [s.name for s in result.steps] == [
        names.CREATE_ORDER,
        names.CREATE_PAYMENT,
        names.EXPIRE_PAYMENT,
    ]
    payment_id = names.payment_id_for(result.order_id)
    assert get_row(engine, PaymentDecisionRow, payment_id).decision == Decision.TIMEOUT
    assert db_statuses(engine, result.order_id)["order"] == OrderStatus.CANCELLED


class HeldAssignDealer:
    """Fake ``assign_dealer``: runs the real assignment (committed), then holds its result
    until released, as a saga that has not seen its pivot yet while the database has it."""

    def __init__(self, engine) -> None:
        self._real = DeliveryActivities(engine)
        self.assigned = threading.Event()
        self.release = threading.Event()

    @service_activity(names.ASSIGN_DEALER)
    def assign_dealer(self, ref: DeliveryRef) -> DeliverySnapshot:
        delivery = self._real.assign_dealer(ref)
        self.assigned.set()
        assert self.release.wait(10)
        return delivery


async def test_a_report_the_database_backs_is_held_until_the_saga_sees_its_pivot(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    dealer = add_dealer(engine)
    held = HeldAssignDealer(engine)
    async with saga_workers(
        client, engine, executor, task_queue_suffix, overrides=[held.assign_dealer]
    ):
        handle = await start_saga(client, engine, task_queue_suffix)
        state = await confirm_payment(handle)
        assert await asyncio.to_thread(held.assigned.wait, 10)
        # The database shows the delivery with its dealer; the saga is still assigning.
        assert db_statuses(engine, state.order_id)["delivery"] == DeliveryStatus.IN_TRANSIT
        assert state.delivery_id is not None
        await handle.signal(
            Saga.mark_delivered, DeliveredReport(delivery_id=state.delivery_id, dealer_id=dealer)
        )
        await wait_for_phase(
            handle,
            SagaPhase.ASSIGNING_DEALER,
            until=lambda s: any(x.name == names.SIGNAL_MARK_DELIVERED for x in s.signals),
        )
        held.release.set()
        result = await handle.result()

    assert result.phase == SagaPhase.DELIVERED
    assert [(s.name, s.applied, s.note) for s in result.signals[-2:]] == [
        (names.SIGNAL_MARK_DELIVERED, False, f"held until the saga sees dealer {dealer} assigned"),
        (names.SIGNAL_MARK_DELIVERED, True, "delivered"),
    ]
    assert db_statuses(engine, result.order_id)["order"] == OrderStatus.DELIVERED


async def test_a_held_report_for_another_dealer_is_ignored(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    dealer = add_dealer(engine)
    held = HeldAssignDealer(engine)
    async with saga_workers(
        client, engine, executor, task_queue_suffix, overrides=[held.assign_dealer]
    ):
        handle = await start_saga(client, engine, task_queue_suffix)
        state = await confirm_payment(handle)
        assert await asyncio.to_thread(held.assigned.wait, 10)
        assert state.delivery_id is not None
        await handle.signal(
            Saga.mark_delivered,
            DeliveredReport(delivery_id=state.delivery_id, dealer_id=dealer + 1000),
        )
        held.release.set()
        in_transit = await wait_for_phase(
            handle,
            SagaPhase.IN_TRANSIT,
            until=lambda s: any(
                x.name == names.SIGNAL_MARK_DELIVERED and "has it" in x.note for x in s.signals
            ),
        )
        await handle.cancel()  # not needed any more; the parcel stays with its dealer

    assert in_transit.phase == SagaPhase.IN_TRANSIT  # still waiting for a true report
    assert db_statuses(engine, in_transit.order_id)["order"] == OrderStatus.CONFIRMED
