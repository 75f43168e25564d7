"""PaymentService activities against a real database (SQLite, or PostgreSQL via DATABASE_URL)."""

import json
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import text
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.payments import PaymentActivities
from domain import names
from domain.payloads import CreatePaymentInput, PaymentSnapshot
from domain.status import PaymentStatus
from store.db import session
from store.models import PaymentRow, RefundRow
from tests.activities.support import (
    all_rows,
    assert_business_error,
    get_row,
    new_order_id,
    open_payment,
    order_ref,
    payment_ref,
    place_order,
    run_concurrently,
)
from tests.saga_harness import db_statuses

pytestmark = pytest.mark.db


def payment_input(
    order_id: str, amount: str = "28.10", payment_id: str | None = None
) -> CreatePaymentInput:
    return CreatePaymentInput(
        payment_id=payment_id or names.payment_id_for(order_id),
        order_id=order_id,
        amount=Decimal(amount),
    )


# --- create_payment ---------------------------------------------------------------------


def test_create_payment_twice_with_another_payment_id_keeps_one_payment(engine, payments):
    order_id = place_order(engine)
    first_input = payment_input(order_id)

    first = ActivityEnvironment().run(payments.create_payment, first_input)
    second = ActivityEnvironment().run(payments.create_payment, payment_input(order_id, "1.00"))

    assert first == second
    assert first == PaymentSnapshot(
        payment_id=first_input.payment_id,
        order_id=order_id,
        status=PaymentStatus.PENDING,
        amount=Decimal("28.10"),
    )
    rows = all_rows(engine, PaymentRow)
    assert [(p.id, p.order_id, p.status, p.amount_cents) for p in rows] == [
        (first_input.payment_id, order_id, "PENDING", 2810)
    ]
    assert rows[0].refunded_at is None


def test_concurrent_create_payment_with_different_ids_stores_one_payment(engine, payments):
    order_id = place_order(engine)
    inputs = [payment_input(order_id) for _ in range(16)]

    results = run_concurrently(payments.create_payment, inputs)

    rows = all_rows(engine, PaymentRow)
    assert len(rows) == 1
    assert rows[0].id in {i.payment_id for i in inputs}
    assert {r.payment_id for r in results} == {rows[0].id}  # every caller sees the winner
    assert db_statuses(engine, order_id)["payments"] == 1


def test_concurrent_create_payment_of_many_orders_stores_one_each(engine, payments):
    order_ids = [place_order(engine) for _ in range(8)]
    # The saga's own deterministic payment id and fresh ones: both kinds of duplicate.
    inputs = [
        payment_input(order_id, payment_id=payment_id)
        for order_id in order_ids
        for payment_id in (names.payment_id_for(order_id), None, names.payment_id_for(order_id))
    ]

    run_concurrently(payments.create_payment, inputs)

    assert sorted(p.order_id for p in all_rows(engine, PaymentRow)) == sorted(order_ids)


# --- complete_payment -------------------------------------------------------------------


def test_complete_payment_twice_completes_once(engine, payments):
    _, payment_id = open_payment(engine)

    first = payments.complete_payment(payment_ref(payment_id))
    completed = get_row(engine, PaymentRow, payment_id)
    second = payments.complete_payment(payment_ref(payment_id))

    assert first == second
    assert first.status == PaymentStatus.COMPLETED
    assert first.amount == Decimal("28.10")
    assert completed.status == "COMPLETED"
    assert get_row(engine, PaymentRow, payment_id) == completed  # updated_at untouched too


def test_complete_unknown_payment_is_entity_not_found(engine, payments):
    with pytest.raises(ApplicationError) as excinfo:
        payments.complete_payment(payment_ref(str(uuid.uuid4())))

    assert_business_error(excinfo.value, names.ENTITY_NOT_FOUND)
    assert all_rows(engine, PaymentRow) == []


@pytest.mark.parametrize("status", ["CANCELLED", "REFUNDED"])
def test_complete_an_undone_payment_is_invalid_transition(engine, payments, status):
    order_id, payment_id = open_payment(engine)
    if status == "REFUNDED":
        payments.complete_payment(payment_ref(payment_id))
    payments.cancel_or_refund_payment(order_ref(order_id))
    undone = get_row(engine, PaymentRow, payment_id)
    assert undone.status == status

    with pytest.raises(ApplicationError) as excinfo:
        payments.complete_payment(payment_ref(payment_id))

    assert_business_error(excinfo.value, names.INVALID_TRANSITION)
    assert get_row(engine, PaymentRow, payment_id) == undone


# --- cancel_or_refund_payment -----------------------------------------------------------


def test_cancel_pending_payment_twice_cancels_once(engine, payments):
    order_id, payment_id = open_payment(engine)

    first = payments.cancel_or_refund_payment(order_ref(order_id))
    cancelled = get_row(engine, PaymentRow, payment_id)
    second = payments.cancel_or_refund_payment(order_ref(order_id))

    assert (first.action, first.status) == ("cancelled", "CANCELLED")
    assert (second.action, second.status) == ("already cancelled", "CANCELLED")
    assert cancelled.status == "CANCELLED"
    assert cancelled.refunded_at is None  # nothing was taken, so nothing is refunded
    assert get_row(engine, PaymentRow, payment_id) == cancelled
    assert all_rows(engine, RefundRow, payment_id=payment_id) == []


def test_refund_completed_payment_twice_refunds_once(engine, payments):
    order_id, payment_id = open_payment(engine)
    payments.complete_payment(payment_ref(payment_id))

    first = payments.cancel_or_refund_payment(order_ref(order_id))
    refunded = get_row(engine, PaymentRow, payment_id)
    second = payments.cancel_or_refund_payment(order_ref(order_id))

    assert (first.action, first.status) == ("refunded", "REFUNDED")
    assert (second.action, second.status) == ("already refunded", "REFUNDED")
    assert refunded.status == "REFUNDED"
    assert refunded.refunded_at is not None
    again = get_row(engine, PaymentRow, payment_id)
    assert again.refunded_at == refunded.refunded_at
    assert again == refunded
    assert again.amount_cents == 2810
    refunds = all_rows(engine, RefundRow, payment_id=payment_id)
    assert [r.amount_cents for r in refunds] == [2810]


def test_concurrent_refunds_refund_once(engine, payments):
    order_id, payment_id = open_payment(engine)
    payments.complete_payment(payment_ref(payment_id))

    outcomes = run_concurrently(payments.cancel_or_refund_payment, [order_ref(order_id)] * 16)

    assert sorted(o.action for o in outcomes) == ["already refunded"] * 15 + ["refunded"]
    assert {o.status for o in outcomes} == {"REFUNDED"}
    row = get_row(engine, PaymentRow, payment_id)
    assert row.status == "REFUNDED"
    assert row.refunded_at is not None
    assert len(all_rows(engine, RefundRow, payment_id=payment_id)) == 1


def test_complete_racing_compensation_never_leaves_a_completed_payment(
    engine, payments: PaymentActivities
):
    """The customer's confirm and the saga's compensation race: the money always comes back."""
    opened = [open_payment(engine) for _ in range(12)]

    def complete(payment_id: str) -> str:
        try:
            return payments.complete_payment(payment_ref(payment_id)).status
        except ApplicationError as error:
            assert_business_error(error, names.INVALID_TRANSITION)
            return "rejected"

    def race(task: tuple[str, str]) -> str:
        kind, key = task
        if kind == "complete":
            return complete(key)
        return payments.cancel_or_refund_payment(order_ref(key)).action

    tasks = [t for order_id, pay_id in opened for t in (("complete", pay_id), ("undo", order_id))]
    run_concurrently(race, tasks)

    for order_id, payment_id in opened:
        row = get_row(engine, PaymentRow, payment_id)
        assert row.status in {"CANCELLED", "REFUNDED"}, (order_id, row.status)
        assert (row.refunded_at is not None) == (row.status == "REFUNDED")


def test_cancel_or_refund_with_no_payment_has_nothing_to_undo(engine, payments):
    unrelated_order, unrelated_payment = open_payment(engine)
    order_without_payment = place_order(engine)
    before = all_rows(engine, PaymentRow)

    for order_id in (new_order_id(), order_without_payment):
        outcome = payments.cancel_or_refund_payment(order_ref(order_id))
        assert (outcome.action, outcome.status) == ("nothing to undo", None)

    assert all_rows(engine, PaymentRow) == before
    assert get_row(engine, PaymentRow, unrelated_payment).status == "PENDING"
    assert db_statuses(engine, unrelated_order)["payments"] == 1


# --- money ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "cents"),
    [("9999999.99", 999999999), ("0.01", 1), ("28.10", 2810), ("9999999999.99", 999999999999)],
)
def test_payment_amount_round_trips_exactly(engine, payments, amount, cents):
    order_id = place_order(engine)
    created = payments.create_payment(payment_input(order_id, amount))

    read_back = payments.create_payment(payment_input(order_id, "5.00"))  # from the database
    completed = payments.complete_payment(payment_ref(created.payment_id))

    for snapshot in (created, read_back, completed):
        assert isinstance(snapshot.amount, Decimal)
        assert snapshot.amount == Decimal(amount)
        assert snapshot.amount.as_tuple().exponent == -2  # two places, e.g. 0.01 not 1E-2
        assert str(snapshot.amount) == amount
    row = get_row(engine, PaymentRow, created.payment_id)
    assert type(row.amount_cents) is int
    assert row.amount_cents == cents
    with session(engine) as db:
        raw = db.connection().execute(
            text("SELECT amount_cents FROM payments WHERE id = :id"), {"id": created.payment_id}
        )
        stored = raw.scalar_one()
    assert type(stored) is int  # an integer column, never a float
    assert stored == cents
    # What the workflow receives: the amount travels as a JSON string, not a JSON number.
    converter = pydantic_data_converter.payload_converter
    payloads = converter.to_payloads([completed])
    assert json.loads(payloads[0].data)["amount"] == amount
    [decoded] = converter.from_payloads(payloads, [PaymentSnapshot])
    assert decoded == completed
    assert str(decoded.amount) == amount
