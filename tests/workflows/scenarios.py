"""Saga paths driven signal by signal, defined once for the tests and the history recorder.

A scenario takes a saga already started (its workers running, the dealers it needs in the
database) and drives it to its end; the caller checks the outcome it cares about. The tests
(``test_signals.py``) check it in full, in both step modes; ``record_histories.py`` records
the closed run as ``tests/histories/<path>.json`` for ``test_replay.py``.
"""

from domain import names
from domain.payloads import DeliveredReport, PaymentDecision, SagaState
from domain.status import PaymentStatus, SagaPhase
from tests.saga_harness import SagaHandle, wait_for_phase
from workflows import OrderProcessWorkflow as Saga


def signal_log(state: SagaState) -> list[tuple[str, bool, str]]:
    """Every signal the saga recorded: its name, whether it was applied, its note."""
    return [(s.name, s.applied, s.note) for s in state.signals]


async def mark_delivered(handle: SagaHandle, state: SagaState) -> SagaState:
    """Report the saga's delivery delivered, as its dealer would; the saga's result."""
    assert state.delivery_id is not None
    await handle.signal(Saga.mark_delivered, DeliveredReport(delivery_id=state.delivery_id))
    return await handle.result()


async def cancel_the_payment(handle: SagaHandle, reason: str | None = None) -> PaymentDecision:
    """Wait until the saga awaits the payment decision, then cancel the payment as the
    customer would; the decision sent."""
    waiting = await wait_for_phase(handle, SagaPhase.AWAITING_PAYMENT)
    assert waiting.payment_id is not None
    decision = PaymentDecision(payment_id=waiting.payment_id, reason=reason)
    await handle.signal(Saga.cancel_payment, decision)
    return decision


# The signal log of late_and_duplicate_signals: one of each kind of ignored signal.
LATE_AND_DUPLICATE_SIGNAL_LOG = [
    (names.SIGNAL_MARK_DELIVERED, False, "ignored in phase AWAITING_PAYMENT"),
    (names.SIGNAL_CONFIRM_PAYMENT, False, "unknown payment not-a-payment"),
    (names.SIGNAL_CONFIRM_PAYMENT, True, "CONFIRM"),
    (names.SIGNAL_CONFIRM_PAYMENT, False, "decision already taken: CONFIRM"),
    (names.SIGNAL_CANCEL_PAYMENT, False, "decision already taken: CONFIRM"),
    (names.SIGNAL_MARK_DELIVERED, False, "unknown delivery not-a-delivery"),
    (names.SIGNAL_MARK_DELIVERED, True, "delivered"),
]


async def late_and_duplicate_signals(handle: SagaHandle) -> SagaState:
    """Early, unknown, duplicate and late signals, then the real ones: the saga's result.

    Needs a free dealer in the order's city. The signals are recorded as
    ``LATE_AND_DUPLICATE_SIGNAL_LOG`` says, and the ignored ones change nothing (the payment
    is still PENDING after the first two).
    """
    waiting = await wait_for_phase(handle, SagaPhase.AWAITING_PAYMENT)
    payment_id, delivery_id = waiting.payment_id, waiting.delivery_id
    assert payment_id is not None
    assert delivery_id is not None
    # Too early (no dealer has the parcel) and addressed to an unknown payment.
    await handle.signal(Saga.mark_delivered, DeliveredReport(delivery_id=delivery_id))
    await handle.signal(Saga.confirm_payment, PaymentDecision(payment_id="not-a-payment"))
    still_waiting = await wait_for_phase(
        handle, SagaPhase.AWAITING_PAYMENT, until=lambda s: len(s.signals) == 2
    )
    assert still_waiting.payment_status == PaymentStatus.PENDING
    # Taken once; the duplicate confirm and the late cancel are ignored.
    decision = PaymentDecision(payment_id=payment_id)
    await handle.signal(Saga.confirm_payment, decision)
    await handle.signal(Saga.confirm_payment, decision)
    await handle.signal(Saga.cancel_payment, decision)
    await wait_for_phase(handle, SagaPhase.IN_TRANSIT, until=lambda s: len(s.signals) == 5)
    # A report for another delivery, then the real one.
    await handle.signal(Saga.mark_delivered, DeliveredReport(delivery_id="not-a-delivery"))
    in_transit = await wait_for_phase(
        handle, SagaPhase.IN_TRANSIT, until=lambda s: len(s.signals) == 6
    )
    return await mark_delivered(handle, in_transit)
