"""The row helpers the steps' hot statements go through (services/rows.py): a guarded
transition and an insert that does nothing when the key is taken, run as Core statements
inside an ORM session, must leave that session telling the truth."""

import re
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from temporalio.exceptions import ApplicationError

from domain import names
from domain.payloads import CreateDeliveryInput, CreatePaymentInput
from domain.status import OrderStatus
from domain.views import NewDealer
from services.dealers import DealerExistsError, add_dealer
from services.rows import insert_new, transition
from store.db import session
from store.models import DealerRow, OrderRow, PaymentRow
from tests.activities.support import (
    all_rows,
    assert_business_error,
    get_row,
    new_order_id,
    open_payment,
    place_order,
)


def _order_row(order_id: str, customer_id: str = "customer-1") -> OrderRow:
    return OrderRow(
        id=order_id,
        customer_id=customer_id,
        status=OrderStatus.PENDING,
        total_cents=100,
        province="Tehran",
        city="Tehran",
    )


def test_insert_new_inserts_once_and_the_inserted_row_joins_the_session(engine):
    order_id = new_order_id()
    with session(engine) as db:
        row = _order_row(order_id)
        assert insert_new(db, row) is True
        assert inspect(row).persistent  # the session holds it as the stored row
        db.refresh(row)  # only a persistent row can be read again
        db.commit()
    with session(engine) as db:
        assert insert_new(db, _order_row(order_id, customer_id="someone-else")) is False
        db.commit()

    stored = get_row(engine, OrderRow, order_id)
    assert stored.customer_id == "customer-1"  # the second insert changed nothing
    assert len(all_rows(engine, OrderRow, id=order_id)) == 1


def test_insert_new_raises_for_a_missing_parent(engine):
    order_id = new_order_id()
    payment = PaymentRow(id=str(uuid.uuid4()), order_id=order_id, status="PENDING", amount_cents=1)
    with session(engine) as db, pytest.raises(IntegrityError):
        insert_new(db, payment)

    assert all_rows(engine, PaymentRow, order_id=order_id) == []


def test_creating_the_payment_or_delivery_of_an_unknown_order_is_entity_not_found(
    engine, payments, deliveries
):
    order_id = new_order_id()

    with pytest.raises(ApplicationError) as paying:
        payments.create_payment(
            CreatePaymentInput(
                payment_id=names.payment_id_for(order_id), order_id=order_id, amount=Decimal("1")
            )
        )
    with pytest.raises(ApplicationError) as delivering:
        deliveries.create_delivery(
            CreateDeliveryInput(
                delivery_id=names.delivery_id_for(order_id),
                order_id=order_id,
                province="Tehran",
                city="Tehran",
            )
        )

    assert_business_error(paying.value, names.ENTITY_NOT_FOUND)
    assert_business_error(delivering.value, names.ENTITY_NOT_FOUND)
    assert all_rows(engine, PaymentRow, order_id=order_id) == []


def test_transition_expires_the_row_the_session_holds(engine):
    order_id = place_order(engine)
    with session(engine) as db:
        held = db.get(OrderRow, order_id)
        assert held is not None
        assert held.status == OrderStatus.PENDING

        moved = transition(db, OrderRow, order_id, [OrderStatus.PENDING], OrderStatus.CONFIRMED)
        again = transition(db, OrderRow, order_id, [OrderStatus.PENDING], OrderStatus.CONFIRMED)

        assert (moved, again) == (True, False)
        assert held.status == OrderStatus.CONFIRMED  # read again, not the stale PENDING
        db.commit()

    assert get_row(engine, OrderRow, order_id).status == OrderStatus.CONFIRMED


def test_transition_of_another_sagas_row_changes_nothing(engine):
    order_id = place_order(engine)
    with session(engine) as db:
        db.get(OrderRow, order_id)  # the order, of no saga yet: claimed by the first saga
        assert transition(
            db, OrderRow, order_id, [OrderStatus.PENDING], OrderStatus.CONFIRMED, saga_id="a"
        )
        assert not transition(
            db, OrderRow, order_id, [OrderStatus.CONFIRMED], OrderStatus.CANCELLED, saga_id="b"
        )
        db.commit()

    stored = get_row(engine, OrderRow, order_id)
    assert (stored.status, stored.saga_id) == (OrderStatus.CONFIRMED, "a")


def test_a_payment_whose_id_is_another_orders_payment_is_refused(engine, payments):
    first_order, payment_id = open_payment(engine)
    other_order = place_order(engine)

    with pytest.raises(ApplicationError) as excinfo:
        payments.create_payment(
            CreatePaymentInput(payment_id=payment_id, order_id=other_order, amount=Decimal("1"))
        )

    assert_business_error(excinfo.value, names.OWNED_BY_ANOTHER_SAGA)
    assert all_rows(engine, PaymentRow, order_id=other_order) == []
    assert get_row(engine, PaymentRow, payment_id).order_id == first_order


def test_core_statements_see_what_the_session_has_pending(engine):
    order_id = new_order_id()
    with session(engine) as db:
        db.add(_order_row(order_id))  # pending, not flushed
        payment = PaymentRow(
            id=str(uuid.uuid4()), order_id=order_id, status="PENDING", amount_cents=1
        )
        assert insert_new(db, payment) is True  # its order is written first: no foreign key error
        assert transition(db, OrderRow, order_id, [OrderStatus.PENDING], OrderStatus.CONFIRMED)
        db.commit()

    assert get_row(engine, OrderRow, order_id).status == OrderStatus.CONFIRMED
    assert get_row(engine, PaymentRow, payment.id).order_id == order_id


def test_a_dealer_gets_the_id_the_database_generated_and_its_phone_once(engine):
    phone = f"+1-{uuid.uuid4().int % 10**12}"
    ana = NewDealer(name="Ana", phone=phone, province="Tehran", city="Karaj", capacity=3)
    bo = NewDealer(name="Bo", phone=phone, province="Qom", city="Qom", capacity=9)
    with session(engine) as db:
        added = add_dealer(db, ana)
        db.commit()
    with session(engine) as db, pytest.raises(DealerExistsError, match=re.escape(phone)):
        add_dealer(db, bo)

    assert added.id is not None
    stored = all_rows(engine, DealerRow, phone=phone)
    assert [(d.id, d.name, d.city, d.capacity) for d in stored] == [(added.id, "Ana", "Karaj", 3)]
