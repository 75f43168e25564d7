"""OrderProcessWorkflow end to end on the time-skipping server: every path of the saga.

Real workers run the real activities over a real database; each test has its own task
queues. Outcomes are read where a user would see them: the database, the saga's state
(result or ``state`` query), the run's status and its OrderStatus search attribute.
"""

import asyncio
import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import CancelledError

from activities._defn import service_activity
from activities.deliveries import DeliveryActivities
from domain import names
from domain.payloads import (
    DeliveredReport,
    DeliveryRef,
    DeliverySnapshot,
    PaymentDecision,
    SagaState,
    SagaTimeouts,
)
from domain.status import (
    DeliveryStatus,
    OrderStatus,
    PaymentStatus,
    RecordStatus,
    SagaPhase,
)
from store.db import session
from store.models import PaymentRow, as_utc
from tests.saga_harness import (
    DELIVERED_STEPS,
    FAST_DEALER_RETRY,
    FORWARD_STEPS,
    HeldCreatePayment,
    SagaHandle,
    add_dealer,
    confirm_payment,
    db_statuses,
    dealer_load,
    order_request,
    order_status_attribute,
    saga_workers,
    start_saga,
    wait_for_phase,
    wait_until_seeking_a_dealer,
)
from workflows import OrderProcessWorkflow as Saga

PRE_PIVOT_UNWIND = [names.CANCEL_DELIVERY, names.CANCEL_OR_REFUND_PAYMENT, names.CANCEL_ORDER]
PAYMENT_UNWIND = [names.CANCEL_OR_REFUND_PAYMENT, names.CANCEL_ORDER]


def step_names(records) -> list[str]:
    return [r.name for r in records]


def assert_all_completed_first_time(records) -> None:
    assert [(r.status, r.attempts) for r in records] == [(RecordStatus.COMPLETED, 1)] * len(records)


def find_step(state: SagaState, name: str):
    return next(r for r in state.steps if r.name == name)


async def assert_cancelled_run(handle: SagaHandle) -> None:
    """The run closed as CANCELED (not failed, not completed)."""
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED


async def deliver(handle: SagaHandle, state: SagaState) -> SagaState:
    assert state.delivery_id is not None
    await handle.signal(Saga.mark_delivered, DeliveredReport(delivery_id=state.delivery_id))
    return await handle.result()


# --- happy path -----------------------------------------------------------------------


async def test_confirmed_order_is_delivered_and_frees_its_dealer(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    dealer = add_dealer(engine, capacity=1)
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix)
        await confirm_payment(handle)
        in_transit = await wait_for_phase(handle, SagaPhase.IN_TRANSIT)

        assert in_transit.dealer_id == dealer
        assert dealer_load(engine, dealer) == 1
        assert db_statuses(engine, in_transit.order_id) == {
            "order": OrderStatus.CONFIRMED,
            "payment": PaymentStatus.COMPLETED,
            "delivery": DeliveryStatus.IN_TRANSIT,
            "dealer_id": dealer,
            "payments": 1,
            "deliveries": 1,
        }
        assert await order_status_attribute(handle) == OrderStatus.CONFIRMED
        # The payment records when its window closes, for the API to refuse late decisions.
        with session(engine) as db:
            payment = db.get(PaymentRow, in_transit.payment_id)
        assert payment is not None
        assert payment.expires_at is not None
        assert as_utc(payment.expires_at) == in_transit.payment_deadline

        result = await deliver(handle, in_transit)
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        assert await order_status_attribute(handle) == OrderStatus.DELIVERED

    assert result.phase == SagaPhase.DELIVERED
    assert (result.order_status, result.payment_status, result.delivery_status) == (
        OrderStatus.DELIVERED,
        PaymentStatus.COMPLETED,
        DeliveryStatus.DELIVERED,
    )
    assert result.total_amount == Decimal("28.10")
    assert result.dealer_id == dealer
    assert result.failure_type is None
    assert step_names(result.steps) == DELIVERED_STEPS
    assert_all_completed_first_time(result.steps)
    assert result.compensations == []
    assert [(s.name, s.applied) for s in result.signals] == [
        (names.SIGNAL_CONFIRM_PAYMENT, True),
        (names.SIGNAL_MARK_DELIVERED, True),
    ]
    assert db_statuses(engine, result.order_id) == {
        "order": OrderStatus.DELIVERED,
        "payment": PaymentStatus.COMPLETED,
        "delivery": DeliveryStatus.DELIVERED,
        "dealer_id": dealer,
        "payments": 1,
        "deliveries": 1,
    }
    assert dealer_load(engine, dealer) == 0


async def test_city_and_province_match_dealers_case_insensitively(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    dealer = add_dealer(engine, city="Tehran", province="Tehran")
    request = order_request(city="tEhRaN", province="TEHRAN")
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix, request)
        await confirm_payment(handle)
        in_transit = await wait_for_phase(handle, SagaPhase.IN_TRANSIT)
        assert in_transit.dealer_id == dealer
        assert find_step(in_transit, names.ASSIGN_DEALER).attempts == 1
        result = await deliver(handle, in_transit)

    assert result.phase == SagaPhase.DELIVERED
    assert db_statuses(engine, result.order_id)["delivery"] == DeliveryStatus.DELIVERED


# --- business failures before the pivot: compensate, complete with the order CANCELLED ---


async def test_customer_cancel_cancels_payment_then_order(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    add_dealer(engine)
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix)
        waiting = await wait_for_phase(handle, SagaPhase.AWAITING_PAYMENT)
        assert waiting.payment_id is not None
        await handle.signal(
            Saga.cancel_payment,
            PaymentDecision(payment_id=waiting.payment_id, reason="changed my mind"),
        )
        result = await handle.result()
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        assert await order_status_attribute(handle) == OrderStatus.CANCELLED

    assert result.phase == SagaPhase.CANCELLED
    assert result.failure_type == names.PAYMENT_CANCELLED
    assert step_names(result.compensations) == PAYMENT_UNWIND
    assert_all_completed_first_time(result.compensations)
    assert step_names(result.steps) == [names.CREATE_ORDER, names.CREATE_PAYMENT]
    assert [(s.name, s.applied, s.note) for s in result.signals] == [
        (names.SIGNAL_CANCEL_PAYMENT, True, "changed my mind")
    ]
    assert (result.order_status, result.payment_status, result.delivery_status) == (
        OrderStatus.CANCELLED,
        PaymentStatus.CANCELLED,
        None,
    )
    db = db_statuses(engine, result.order_id)
    assert (db["order"], db["payment"], db["deliveries"]) == (
        OrderStatus.CANCELLED,
        PaymentStatus.CANCELLED,
        0,
    )


async def test_payment_window_closing_after_30_minutes_cancels_payment_then_order(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    assert SagaTimeouts().payment_window == timedelta(minutes=30)
    async with saga_workers(client, engine, executor, task_queue_suffix):
        started = time.monotonic()
        handle = await start_saga(client, engine, task_queue_suffix, timeouts=SagaTimeouts())
        result = await handle.result()
        elapsed = time.monotonic() - started

    assert elapsed < 3, f"the 30-minute window took {elapsed:.1f}s of real time"
    assert result.failure_type == names.PAYMENT_TIMED_OUT
    assert result.phase == SagaPhase.CANCELLED
    # The compensations ran once the whole window had passed on the server's clock.
    assert result.payment_deadline is not None
    assert result.compensations[0].started_at >= result.payment_deadline
    assert step_names(result.compensations) == PAYMENT_UNWIND
    assert_all_completed_first_time(result.compensations)
    assert result.signals == []
    db = db_statuses(engine, result.order_id)
    assert (db["order"], db["payment"], db["deliveries"]) == (
        OrderStatus.CANCELLED,
        PaymentStatus.CANCELLED,
        0,
    )


@pytest.mark.parametrize(
    "dealers",
    [
        pytest.param([{"city": "Isfahan", "province": "Isfahan"}], id="no-dealer-in-the-city"),
        pytest.param([{"capacity": 1, "active_deliveries": 1}], id="only-dealer-is-full"),
    ],
)
async def test_no_dealer_refunds_payment_then_cancels_order(
    time_skipping_env, engine, executor, task_queue_suffix, dealers
):
    client = time_skipping_env.client
    dealer_ids = [add_dealer(engine, **kw) for kw in dealers]
    loads = [dealer_load(engine, d) for d in dealer_ids]
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix)
        await confirm_payment(handle)
        result = await handle.result()
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        assert await order_status_attribute(handle) == OrderStatus.CANCELLED

    assert result.phase == SagaPhase.CANCELLED
    assert result.failure_type == names.NO_DEALER_AVAILABLE
    # Exact reverse order of the forward steps they undo.
    assert step_names(result.compensations) == PRE_PIVOT_UNWIND
    assert_all_completed_first_time(result.compensations)
    assert step_names(result.steps) == FORWARD_STEPS
    assign = find_step(result, names.ASSIGN_DEALER)
    assert assign.status == RecordStatus.FAILED
    assert assign.error is not None
    assert assign.error.startswith(names.NO_DEALER_AVAILABLE)
    # It kept retrying for the whole assignment window before giving up.
    assert assign.attempts > 1
    assert assign.finished_at is not None
    assert assign.finished_at - assign.started_at >= FAST_DEALER_RETRY.dealer_assignment_window
    assert (result.order_status, result.payment_status, result.delivery_status) == (
        OrderStatus.CANCELLED,
        PaymentStatus.REFUNDED,
        DeliveryStatus.CANCELLED,
    )
    assert result.dealer_id is None
    assert db_statuses(engine, result.order_id) == {
        "order": OrderStatus.CANCELLED,
        "payment": PaymentStatus.REFUNDED,
        "delivery": DeliveryStatus.CANCELLED,
        "dealer_id": None,
        "payments": 1,
        "deliveries": 1,
    }
    assert [dealer_load(engine, d) for d in dealer_ids] == loads


# --- the workflow itself cancelled before the pivot: compensate, close CANCELED ---------


async def test_cancelling_the_workflow_while_awaiting_payment_compensates_then_closes_canceled(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix)
        await wait_for_phase(handle, SagaPhase.AWAITING_PAYMENT)
        await handle.cancel()
        await assert_cancelled_run(handle)
        state = await handle.query(Saga.state)
        assert await order_status_attribute(handle) == OrderStatus.CANCELLED

    assert state.phase == SagaPhase.CANCELLED
    assert state.failure_type == names.CANCELLED_ON_REQUEST
    assert step_names(state.compensations) == PAYMENT_UNWIND
    assert_all_completed_first_time(state.compensations)
    assert (state.order_status, state.payment_status) == (
        OrderStatus.CANCELLED,
        PaymentStatus.CANCELLED,
    )
    db = db_statuses(engine, state.order_id)
    assert (db["order"], db["payment"], db["deliveries"]) == (
        OrderStatus.CANCELLED,
        PaymentStatus.CANCELLED,
        0,
    )


async def test_cancelling_the_workflow_while_waiting_for_a_dealer_refunds_and_holds_no_dealer(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    full_dealer = add_dealer(engine, capacity=1, active_deliveries=1)
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix)
        await confirm_payment(handle)
        retrying = await wait_until_seeking_a_dealer(handle)
        assert db_statuses(engine, retrying.order_id)["delivery"] == DeliveryStatus.PENDING
        await handle.cancel()
        await assert_cancelled_run(handle)
        state = await handle.query(Saga.state)

    assert state.failure_type == names.CANCELLED_ON_REQUEST
    assert step_names(state.compensations) == PRE_PIVOT_UNWIND
    assert_all_completed_first_time(state.compensations)
    # The interrupted assignment is recorded as failed, not left retrying forever.
    assign = find_step(state, names.ASSIGN_DEALER)
    assert assign.status == RecordStatus.FAILED
    assert assign.finished_at is not None
    assert (state.order_status, state.payment_status, state.delivery_status) == (
        OrderStatus.CANCELLED,
        PaymentStatus.REFUNDED,
        DeliveryStatus.CANCELLED,
    )
    assert db_statuses(engine, state.order_id) == {
        "order": OrderStatus.CANCELLED,
        "payment": PaymentStatus.REFUNDED,
        "delivery": DeliveryStatus.CANCELLED,
        "dealer_id": None,
        "payments": 1,
        "deliveries": 1,
    }
    assert dealer_load(engine, full_dealer) == 1  # only the parcel it already carried


class ReplyLostAssignment:
    """Fake ``assign_dealer``: runs the real assignment, but its reply never reaches the
    saga (an infrastructure error every time, so Temporal keeps retrying it)."""

    def __init__(self, engine) -> None:
        self._real = DeliveryActivities(engine)
        self.assigned = threading.Event()

    @service_activity(names.ASSIGN_DEALER)
    def assign_dealer(self, ref: DeliveryRef) -> DeliverySnapshot:
        delivery = self._real.assign_dealer(ref)
        assert delivery.dealer_id is not None
        self.assigned.set()
        raise RuntimeError("connection reset before the reply was sent")


async def test_cancelling_the_workflow_after_an_unseen_dealer_assignment_releases_that_dealer(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    dealer = add_dealer(engine, capacity=1)
    lost = ReplyLostAssignment(engine)
    async with saga_workers(
        client, engine, executor, task_queue_suffix, overrides=[lost.assign_dealer]
    ):
        handle = await start_saga(client, engine, task_queue_suffix)
        await confirm_payment(handle)
        assert await asyncio.to_thread(lost.assigned.wait, 10)
        # The dealer has the parcel, but the saga never saw it: still before the pivot.
        assert dealer_load(engine, dealer) == 1
        assert (await handle.query(Saga.state)).phase == SagaPhase.ASSIGNING_DEALER
        await handle.cancel()
        await assert_cancelled_run(handle)
        state = await handle.query(Saga.state)

    assert step_names(state.compensations) == PRE_PIVOT_UNWIND
    assert (state.order_status, state.payment_status, state.delivery_status) == (
        OrderStatus.CANCELLED,
        PaymentStatus.REFUNDED,
        DeliveryStatus.CANCELLED,
    )
    assert state.dealer_id is None
    db = db_statuses(engine, state.order_id)
    assert (db["order"], db["payment"], db["delivery"]) == (
        OrderStatus.CANCELLED,
        PaymentStatus.REFUNDED,
        DeliveryStatus.CANCELLED,
    )
    assert dealer_load(engine, dealer) == 0


async def test_cancelling_while_a_step_runs_waits_for_it_then_undoes_what_it_did(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    held = HeldCreatePayment(engine)
    async with saga_workers(
        client, engine, executor, task_queue_suffix, overrides=[held.create_payment]
    ):
        handle = await start_saga(client, engine, task_queue_suffix)
        assert await asyncio.to_thread(held.started.wait, 10)
        await handle.cancel()
        # While the step still runs, the saga must not unwind: an undo now would find
        # nothing, and the payment committed a moment later would stay PENDING forever.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            waiting = await handle.query(Saga.state)
            assert waiting.compensations == [], "unwound while a step was still running"
            await asyncio.sleep(0.05)
        held.release.set()
        async with asyncio.timeout(30):
            await assert_cancelled_run(handle)
        state = await handle.query(Saga.state)

    assert step_names(state.compensations) == PAYMENT_UNWIND
    assert state.payment_status == PaymentStatus.CANCELLED
    db = db_statuses(engine, state.order_id)
    assert (db["order"], db["payment"], db["payments"]) == (
        OrderStatus.CANCELLED,
        PaymentStatus.CANCELLED,
        1,
    )


# --- past the pivot: nothing is compensated any more -----------------------------------


async def test_cancel_request_after_the_pivot_is_ignored_and_the_order_is_still_delivered(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    dealer = add_dealer(engine)
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix)
        await confirm_payment(handle)
        await wait_for_phase(handle, SagaPhase.IN_TRANSIT)
        await handle.cancel()
        ignored = await wait_for_phase(
            handle, SagaPhase.IN_TRANSIT, until=lambda s: len(s.signals) == 2
        )
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        assert dealer_load(engine, dealer) == 1
        result = await deliver(handle, ignored)
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED

    cancel_request = ignored.signals[1]
    assert (cancel_request.name, cancel_request.applied) == ("cancel_request", False)
    assert "past the pivot" in cancel_request.note
    assert result.phase == SagaPhase.DELIVERED
    assert result.compensations == []
    assert result.failure_type is None
    assert [(s.name, s.applied) for s in result.signals] == [
        (names.SIGNAL_CONFIRM_PAYMENT, True),
        ("cancel_request", False),
        (names.SIGNAL_MARK_DELIVERED, True),
    ]
    db = db_statuses(engine, result.order_id)
    assert (db["order"], db["payment"], db["delivery"]) == (
        OrderStatus.DELIVERED,
        PaymentStatus.COMPLETED,
        DeliveryStatus.DELIVERED,
    )
    assert dealer_load(engine, dealer) == 0
