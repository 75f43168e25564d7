"""The customer's decision on a payment: one compare-and-set in the database, exactly one winner.

``payment_decisions`` holds one row per order, opened when the order is accepted; the first
decision (confirm, cancel, or the window's close) is recorded and every other one learns it.
"""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from temporalio.exceptions import ApplicationError

from activities.payments import PaymentActivities
from domain import names
from domain.payloads import CreatePaymentInput, PaymentRef
from domain.status import Decision, PaymentStatus, SagaStyle
from sagas import views
from services import payments
from store.db import session
from store.models import OrderRow, PaymentDecisionRow, PaymentRow, utcnow
from tests.activities.support import (
    assert_business_error,
    get_row,
    open_payment,
    place_order,
    run_concurrently,
)

pytestmark = pytest.mark.db


def accept(engine, order_id: str, customer_id: str = "customer-1") -> str:
    """What the door does when it accepts an order: the payment's decision, opened."""
    payment_id = names.payment_id_for(order_id)
    with session(engine) as db:
        payments.open_decision(db, payment_id, order_id, customer_id)
        db.commit()
    return payment_id


def decide(engine, payment_id: str, decision: Decision, **kw) -> payments.DecisionTaken:
    with session(engine) as db:
        taken = payments.take_decision(db, payment_id, decision, **kw)
        db.commit()
    return taken


def test_a_decision_taken_before_the_payment_exists_is_recorded_once(engine):
    order_id = str(uuid.uuid4())
    payment_id = accept(engine, order_id)

    first = decide(engine, payment_id, Decision.CONFIRM)
    again = decide(engine, payment_id, Decision.CONFIRM)
    other = decide(engine, payment_id, Decision.CANCEL)

    assert (first.applied, first.winner, first.order_id) == (True, Decision.CONFIRM, order_id)
    assert (again.applied, again.winner) == (False, Decision.CONFIRM)
    assert (other.applied, other.winner) == (False, Decision.CONFIRM)
    assert get_row(engine, PaymentDecisionRow, payment_id).decision == Decision.CONFIRM


def test_racing_confirms_and_cancels_record_exactly_one_decision(engine):
    payment_ids = [accept(engine, str(uuid.uuid4())) for _ in range(12)]
    attempts = [(p, d) for p in payment_ids for d in (Decision.CONFIRM, Decision.CANCEL)] * 2

    results = run_concurrently(lambda attempt: (attempt, decide(engine, *attempt)), attempts)

    for payment_id in payment_ids:
        mine = [(d, taken) for (p, d), taken in results if p == payment_id]
        winners = {taken.winner for _, taken in mine}
        assert len(winners) == 1, mine  # every attempt learns the same winner
        assert sum(taken.applied for _, taken in mine) == 1  # and exactly one recorded it
        (winner,) = winners
        assert get_row(engine, PaymentDecisionRow, payment_id).decision == winner


def test_no_decision_once_the_window_closed_or_the_payment_moved_on(engine):
    _, payment_id = open_payment(engine)
    with session(engine) as db:  # its window closed a moment ago
        row = db.get(PaymentRow, payment_id)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.add(row)
        db.commit()

    late = decide(engine, payment_id, Decision.CONFIRM)

    assert (late.applied, late.winner) == (False, None)
    assert late.refusal is not None
    assert "window closed" in late.refusal
    # The saga's own close of the window is still taken: TIMEOUT is the decision.
    closing = decide(engine, payment_id, Decision.TIMEOUT)
    assert (closing.applied, closing.winner) == (True, Decision.TIMEOUT)
    assert decide(engine, payment_id, Decision.CONFIRM).winner == Decision.TIMEOUT


def test_a_payment_no_longer_pending_takes_no_decision(engine):
    order_id, payment_id = open_payment(engine)
    with session(engine) as db:  # the order was cancelled by an operator meanwhile
        payments.cancel_or_refund_payment(db, order_id, None)
        db.commit()

    refused = decide(engine, payment_id, Decision.CONFIRM)

    assert (refused.applied, refused.winner) == (False, None)
    assert refused.refusal == f"the payment is {PaymentStatus.CANCELLED}"


def test_an_unknown_payment_takes_no_decision(engine):
    taken = decide(engine, str(uuid.uuid4()), Decision.CONFIRM)
    assert (taken.order_id, taken.winner, taken.refusal) == (None, None, "unknown")


def test_create_payment_reports_a_decision_taken_before_it(engine, payments_activities):
    order_id = place_order(engine)
    payment_id = accept(engine, order_id)
    decide(engine, payment_id, Decision.CONFIRM)

    created = payments_activities.create_payment(
        CreatePaymentInput(payment_id=payment_id, order_id=order_id, amount=Decimal("28.10"))
    )

    assert (created.status, created.decision) == (PaymentStatus.PENDING, Decision.CONFIRM)


def test_the_window_closing_keeps_a_decision_already_taken(engine, payments_activities):
    # The customer confirmed in time, but the signal never reached the saga (the API died
    # after recording it): the saga's close of the window finds the confirm and takes it.
    order_id, payment_id = open_payment(engine)
    decide(engine, payment_id, Decision.CONFIRM)

    closed = payments_activities.expire_payment(PaymentRef(payment_id=payment_id))
    closed_again = payments_activities.expire_payment(PaymentRef(payment_id=payment_id))

    assert closed.decision == closed_again.decision == Decision.CONFIRM
    assert get_row(engine, PaymentDecisionRow, payment_id).decision == Decision.CONFIRM
    assert order_id


def test_the_window_closing_with_no_decision_records_the_timeout(engine, payments_activities):
    _, payment_id = open_payment(engine)

    closed = payments_activities.expire_payment(PaymentRef(payment_id=payment_id))

    assert closed.decision == Decision.TIMEOUT
    assert decide(engine, payment_id, Decision.CONFIRM).winner == Decision.TIMEOUT


def test_a_payment_decided_cancel_cannot_complete(engine, payments_activities):
    # A confirm signal sent past the API (from the Web UI, say) cannot override the decision
    # on record: the saga's complete_payment refuses, and the saga compensates.
    _, payment_id = open_payment(engine)
    decide(engine, payment_id, Decision.CANCEL)

    with pytest.raises(ApplicationError) as raised:
        payments_activities.complete_payment(PaymentRef(payment_id=payment_id))

    assert_business_error(raised.value, names.INVALID_TRANSITION)
    assert get_row(engine, PaymentRow, payment_id).status == PaymentStatus.PENDING


def test_completing_a_payment_records_the_confirm_it_stands_for(engine, payments_activities):
    _, payment_id = open_payment(engine)

    completed = payments_activities.complete_payment(PaymentRef(payment_id=payment_id))

    assert completed.status == PaymentStatus.COMPLETED
    assert get_row(engine, PaymentDecisionRow, payment_id).decision == Decision.CONFIRM


@pytest.fixture
def payments_activities(engine) -> PaymentActivities:
    return PaymentActivities(engine)


def test_a_payment_party_is_known_from_the_acceptance_on(engine):
    # What a confirm looks up before it is taken: whose payment it is and how its saga runs.
    unwritten = str(uuid.uuid4())  # accepted, its saga has not written the order yet
    early = accept(engine, unwritten, customer_id="customer-7")
    written = place_order(engine)  # accepted, the order written
    accepted = accept(engine, written)
    with session(engine) as db:
        db.get_one(OrderRow, written).saga_style = SagaStyle.CHOREOGRAPHY
        db.commit()
    _, unaccepted = open_payment(engine, accepted=False)  # past the door: never accepted

    assert views.payment_party(engine, early) == views.PaymentParty(
        unwritten, "customer-7", SagaStyle.ORCHESTRATION
    )
    assert views.payment_party(engine, accepted) == views.PaymentParty(
        written, "customer-1", SagaStyle.CHOREOGRAPHY
    )
    assert views.payment_party(engine, unaccepted) is None
    assert views.payment_party(engine, str(uuid.uuid4())) is None
