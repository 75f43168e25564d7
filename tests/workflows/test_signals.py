"""Duplicate, late and misaddressed signals change nothing and are recorded as ignored."""

from datetime import timedelta

from domain import names
from domain.payloads import DeliveredReport, PaymentDecision, SagaTimeouts
from domain.status import (
    DeliveryStatus,
    OrderStatus,
    PaymentStatus,
    RecordStatus,
    SagaPhase,
)
from tests.saga_harness import (
    FAST_DEALER_RETRY,
    FailingRefund,
    add_dealer,
    confirm_payment,
    db_statuses,
    dealer_load,
    saga_workers,
    set_dealer_load,
    start_saga,
    wait_for_phase,
    wait_until_seeking_a_dealer,
)
from tests.workflows.scenarios import (
    LATE_AND_DUPLICATE_SIGNAL_LOG,
    cancel_the_payment,
    late_and_duplicate_signals,
    signal_log,
)
from workflows import OrderProcessWorkflow as Saga

# Just past the saga's first pause between dealer assignment attempts.
FAST_RETRY_GAP = FAST_DEALER_RETRY.dealer_retry_initial_interval + timedelta(seconds=1)


def compensation_retrying(state) -> bool:
    return any(c.status == RecordStatus.RETRYING for c in state.compensations)


async def test_duplicate_unknown_and_early_signals_are_ignored_and_the_order_is_delivered(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    add_dealer(engine)
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix)
        result = await late_and_duplicate_signals(handle)

    assert signal_log(result) == LATE_AND_DUPLICATE_SIGNAL_LOG
    assert result.phase == SagaPhase.DELIVERED
    assert result.compensations == []
    assert [s.name for s in result.steps].count(names.COMPLETE_PAYMENT) == 1
    db = db_statuses(engine, result.order_id)
    assert (db["order"], db["payment"], db["delivery"], db["payments"]) == (
        OrderStatus.DELIVERED,
        PaymentStatus.COMPLETED,
        DeliveryStatus.DELIVERED,
        1,
    )


async def test_mark_delivered_while_a_dealer_is_still_being_sought_is_ignored(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    dealer = add_dealer(engine, capacity=1, active_deliveries=1)
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix)
        await confirm_payment(handle)
        seeking = await wait_until_seeking_a_dealer(handle)
        assert seeking.delivery_id is not None
        # No dealer has the parcel yet, so it cannot have been delivered.
        report = DeliveredReport(delivery_id=seeking.delivery_id)
        await handle.signal(Saga.mark_delivered, report)
        await wait_for_phase(
            handle, SagaPhase.ASSIGNING_DEALER, until=lambda s: len(s.signals) == 2
        )

        set_dealer_load(engine, dealer, 0)  # the dealer's other parcel was delivered
        await time_skipping_env.sleep(FAST_RETRY_GAP)
        in_transit = await wait_for_phase(handle, SagaPhase.IN_TRANSIT)
        assert in_transit.dealer_id == dealer
        assert db_statuses(engine, in_transit.order_id)["delivery"] == DeliveryStatus.IN_TRANSIT

        await handle.signal(Saga.mark_delivered, report)
        result = await handle.result()

    assert signal_log(result) == [
        (names.SIGNAL_CONFIRM_PAYMENT, True, "CONFIRM"),
        (names.SIGNAL_MARK_DELIVERED, False, "ignored in phase ASSIGNING_DEALER"),
        (names.SIGNAL_MARK_DELIVERED, True, "delivered"),
    ]
    assert result.phase == SagaPhase.DELIVERED
    assert db_statuses(engine, result.order_id)["delivery"] == DeliveryStatus.DELIVERED
    assert dealer_load(engine, dealer) == 0


async def test_confirm_after_cancel_is_ignored_while_the_saga_compensates(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    refund = FailingRefund(engine)  # keeps the saga open, compensating, until released
    async with saga_workers(
        client, engine, executor, task_queue_suffix, overrides=[refund.cancel_or_refund_payment]
    ):
        handle = await start_saga(client, engine, task_queue_suffix)
        decision = await cancel_the_payment(handle)
        await wait_for_phase(handle, SagaPhase.COMPENSATING, until=compensation_retrying)

        await handle.signal(Saga.confirm_payment, decision)
        await wait_for_phase(handle, SagaPhase.COMPENSATING, until=lambda s: len(s.signals) == 2)
        refund.release()
        result = await handle.result()

    assert signal_log(result) == [
        (names.SIGNAL_CANCEL_PAYMENT, True, "CANCEL"),
        (names.SIGNAL_CONFIRM_PAYMENT, False, "decision already taken: CANCEL"),
    ]
    assert result.failure_type == names.PAYMENT_CANCELLED
    assert names.COMPLETE_PAYMENT not in [s.name for s in result.steps]
    db = db_statuses(engine, result.order_id)
    assert (db["order"], db["payment"]) == (OrderStatus.CANCELLED, PaymentStatus.CANCELLED)


async def test_confirm_after_the_payment_window_closed_is_ignored(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    timeouts = SagaTimeouts()
    refund = FailingRefund(engine)  # keeps the saga open, compensating, until released
    async with saga_workers(
        client, engine, executor, task_queue_suffix, overrides=[refund.cancel_or_refund_payment]
    ):
        handle = await start_saga(client, engine, task_queue_suffix, timeouts=timeouts)
        waiting = await wait_for_phase(handle, SagaPhase.AWAITING_PAYMENT)
        assert waiting.payment_id is not None

        await time_skipping_env.sleep(timeouts.payment_window + timedelta(minutes=1))
        closed = await wait_for_phase(handle, SagaPhase.COMPENSATING, until=compensation_retrying)
        assert closed.failure_type == names.PAYMENT_TIMED_OUT

        await handle.signal(Saga.confirm_payment, PaymentDecision(payment_id=waiting.payment_id))
        await wait_for_phase(handle, SagaPhase.COMPENSATING, until=lambda s: len(s.signals) == 1)
        refund.release()
        result = await handle.result()

    assert signal_log(result) == [
        (names.SIGNAL_CONFIRM_PAYMENT, False, "the payment window had closed"),
    ]
    assert result.failure_type == names.PAYMENT_TIMED_OUT
    assert names.COMPLETE_PAYMENT not in [s.name for s in result.steps]
    db = db_statuses(engine, result.order_id)
    assert (db["order"], db["payment"]) == (OrderStatus.CANCELLED, PaymentStatus.CANCELLED)


async def test_an_ignored_signal_sent_again_is_counted_not_listed(
    time_skipping_env, engine, executor, task_queue_suffix
):
    """A client looping on a decision the saga has taken never grows the saga's state: the
    repeats of one ignored signal are one record and a count."""
    client = time_skipping_env.client
    add_dealer(engine)
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix)
        await confirm_payment(handle)
        moving = await wait_for_phase(handle, SagaPhase.IN_TRANSIT)
        assert moving.payment_id is not None
        decision = PaymentDecision(payment_id=moving.payment_id)
        for _ in range(50):
            await handle.signal(Saga.confirm_payment, decision)
        state = await wait_for_phase(
            handle,
            SagaPhase.IN_TRANSIT,
            until=lambda s: sum(1 + r.repeats for r in s.signals if not r.applied) == 50,
        )
    ignored = [s for s in state.signals if not s.applied]
    assert [(s.name, s.note, s.repeats) for s in ignored] == [
        (names.SIGNAL_CONFIRM_PAYMENT, "decision already taken: CONFIRM", 49)
    ]
    assert ignored[0].last_received_at is not None
    assert ignored[0].last_received_at >= ignored[0].received_at
    assert len(state.signals) == 2  # the confirm that was taken, and the repeats of it
