"""A failing compensation is retried until it succeeds, visibly, and never skipped."""

from temporalio.client import WorkflowExecutionStatus

from domain import names
from domain.payloads import PaymentDecision
from domain.status import (
    DeliveryStatus,
    OrderStatus,
    PaymentStatus,
    RecordStatus,
    SagaPhase,
)
from tests.saga_harness import (
    FailingRefund,
    add_dealer,
    confirm_payment,
    db_statuses,
    order_status_attribute,
    saga_workers,
    start_saga,
    wait_for_phase,
)
from workflows import OrderProcessWorkflow as Saga

COMPENSATING = "COMPENSATING"


def refund_retrying(state) -> bool:
    return any(
        c.name == names.CANCEL_OR_REFUND_PAYMENT and c.status == RecordStatus.RETRYING
        for c in state.compensations
    )


async def test_refund_that_fails_twice_is_retried_until_it_succeeds(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    refund = FailingRefund(engine, failures=2)
    overrides = [refund.cancel_or_refund_payment]
    async with saga_workers(client, engine, executor, task_queue_suffix, overrides=overrides):
        handle = await start_saga(client, engine, task_queue_suffix)  # no dealer anywhere
        await confirm_payment(handle)
        result = await handle.result()

    assert refund.calls == 3
    assert result.failure_type == names.NO_DEALER_AVAILABLE
    assert [c.name for c in result.compensations] == [
        names.CANCEL_DELIVERY,
        names.CANCEL_OR_REFUND_PAYMENT,
        names.CANCEL_ORDER,
    ]
    cancel_delivery, refund_record, cancel_order = result.compensations
    assert (refund_record.status, refund_record.attempts) == (RecordStatus.COMPLETED, 3)
    assert refund_record.error == "RuntimeError: payment provider unavailable (call 2)"
    assert refund_record.finished_at is not None
    # The retries waited (1 s, then 2 s of workflow time) and cancel_order only ran after.
    assert (refund_record.finished_at - refund_record.started_at).total_seconds() >= 3
    assert cancel_order.started_at >= refund_record.finished_at
    assert [(c.status, c.attempts) for c in (cancel_delivery, cancel_order)] == [
        (RecordStatus.COMPLETED, 1)
    ] * 2
    assert db_statuses(engine, result.order_id) == {
        "order": OrderStatus.CANCELLED,
        "payment": PaymentStatus.REFUNDED,
        "delivery": DeliveryStatus.CANCELLED,
        "dealer_id": None,
        "payments": 1,
        "deliveries": 1,
    }


async def test_failing_refund_shows_as_retrying_with_its_error_until_it_succeeds(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    add_dealer(engine)
    refund = FailingRefund(engine)
    overrides = [refund.cancel_or_refund_payment]
    async with saga_workers(client, engine, executor, task_queue_suffix, overrides=overrides):
        handle = await start_saga(client, engine, task_queue_suffix)
        waiting = await wait_for_phase(handle, SagaPhase.AWAITING_PAYMENT)
        assert waiting.payment_id is not None
        await handle.signal(Saga.cancel_payment, PaymentDecision(payment_id=waiting.payment_id))

        stuck = await wait_for_phase(handle, SagaPhase.COMPENSATING, until=refund_retrying)
        assert [c.name for c in stuck.compensations] == [names.CANCEL_OR_REFUND_PAYMENT]
        retrying = stuck.compensations[0]
        assert retrying.error is not None
        assert retrying.error.startswith("RuntimeError: payment provider unavailable")
        assert retrying.finished_at is None
        assert await order_status_attribute(handle) == COMPENSATING
        # Nothing after the failing compensation ran: the order waits for its refund.
        db = db_statuses(engine, stuck.order_id)
        assert (db["order"], db["payment"]) == (OrderStatus.PENDING, PaymentStatus.PENDING)

        refund.release()
        result = await handle.result()
        assert await order_status_attribute(handle) == OrderStatus.CANCELLED

    assert [c.name for c in result.compensations] == [
        names.CANCEL_OR_REFUND_PAYMENT,
        names.CANCEL_ORDER,
    ]
    refund_record = result.compensations[0]
    assert refund_record.status == RecordStatus.COMPLETED
    assert refund_record.attempts == refund.calls >= 2
    assert result.failure_type == names.PAYMENT_CANCELLED
    db = db_statuses(engine, result.order_id)
    assert (db["order"], db["payment"]) == (OrderStatus.CANCELLED, PaymentStatus.CANCELLED)


async def test_cancelling_the_workflow_does_not_interrupt_a_running_unwind(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    refund = FailingRefund(engine)
    overrides = [refund.cancel_or_refund_payment]
    async with saga_workers(client, engine, executor, task_queue_suffix, overrides=overrides):
        handle = await start_saga(client, engine, task_queue_suffix)
        waiting = await wait_for_phase(handle, SagaPhase.AWAITING_PAYMENT)
        assert waiting.payment_id is not None
        await handle.signal(Saga.cancel_payment, PaymentDecision(payment_id=waiting.payment_id))
        await wait_for_phase(handle, SagaPhase.COMPENSATING, until=refund_retrying)

        await handle.cancel()
        refund.release()
        result = await handle.result()
        # The business failure was already being handled: the run completes, compensated.
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED

    assert result.failure_type == names.PAYMENT_CANCELLED
    assert [(c.name, c.status) for c in result.compensations] == [
        (names.CANCEL_OR_REFUND_PAYMENT, RecordStatus.COMPLETED),
        (names.CANCEL_ORDER, RecordStatus.COMPLETED),
    ]
    db = db_statuses(engine, result.order_id)
    assert (db["order"], db["payment"]) == (OrderStatus.CANCELLED, PaymentStatus.CANCELLED)
