"""Dead letters of the choreographed saga, end to end on the real stack (nats-server, the
worker's consumers, the API).

An event its consumer cannot apply on any delivery is kept, not dropped: it is listed by
``GET /dead-letters`` (pending ones by default, the replayed ones too with ``?pending=false``),
shown in its order's event log, and published on the dead-letter subject for a monitor. Once
an operator has fixed its cause, ``POST /dead-letters/{id}/replay`` delivers it again (202)
and its consumer applies it exactly once; a second replay is 409, an unknown id 404.
"""

import asyncio
import json
import time
import uuid
from decimal import Decimal
from typing import Any

import nats
from nats.js.errors import NotFoundError
from sqlalchemy import Engine
from sqlmodel import func, select

from choreography.outbox import Publisher, emit
from choreography.runtime import connect_broker
from domain import names
from domain.events import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM, Event, EventType, Service
from domain.payloads import OrderItem, OrderRequest, SagaTimeouts
from domain.status import SagaStyle
from sagas import rules
from sagas.rules import NewOrder
from services import orders
from store.db import session, transaction
from store.models import DeadLetterRow, InboxRow, PaymentRow
from tests.e2e.conftest import Stack, poison_event

# The consumer that fails on an order_created whose order does not exist.
CONSUMER = "payments-order_created"


def fix_the_missing_order(engine: Engine, order_id: str) -> None:
    """The operator's fix: the order row the event needs, written as the door writes it."""
    request = OrderRequest(
        customer_id="dead-letter-customer",
        items=[OrderItem(product_id="book", quantity=2, unit_price=Decimal("12.50"))],
        province="Tehran",
        city="Tehran",
    )
    order = NewOrder(
        order_id=order_id,
        request=request,
        idempotency_key=None,
        fingerprint=request.fingerprint(),
        timeouts=SagaTimeouts(),
    )
    with transaction(engine) as db:
        rules.accept(db, order)
        orders.create_order(
            db,
            order_id,
            request,
            names.choreographed_saga_id(order_id),
            style=SagaStyle.CHOREOGRAPHY,
            timeouts=SagaTimeouts(),
        )


async def listed(stack: Stack, *, pending: bool | None = None) -> dict[str, dict[str, Any]]:
    """``GET /dead-letters`` (with ``?pending=`` when given), by id."""
    params = {} if pending is None else {"pending": str(pending).lower()}
    response = await stack.http.get("/dead-letters", params=params)
    assert response.status_code == 200, response.text
    return {d["id"]: d for d in response.json()}


def applied(stack: Stack, event_id: str) -> tuple[int, int]:
    """How many times the consumer recorded ``event_id`` in its inbox, and how many
    payments the event's order has."""
    with session(stack.engine) as db:
        inbox = db.exec(
            select(func.count())
            .select_from(InboxRow)
            .where(InboxRow.consumer == CONSUMER, InboxRow.event_id == event_id)
        ).one()
        dead = db.exec(select(DeadLetterRow).where(DeadLetterRow.event_id == event_id)).one()
        payments = db.exec(
            select(func.count()).select_from(PaymentRow).where(PaymentRow.order_id == dead.order_id)
        ).one()
    return inbox, payments


async def until_applied(stack: Stack, event_id: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while applied(stack, event_id) == (0, 0):
        assert time.monotonic() < deadline, "the replayed event was never applied"
        await asyncio.sleep(0.05)


async def on_dead_letter_subject(stack: Stack, event_id: str, within: float = 10) -> Event:
    """The event as published on its consumer's dead-letter subject (the last message
    there: tests dead-letter one event at a time)."""
    connection = await nats.connect(stack.nats.url)
    try:
        js = connection.jetstream()
        deadline = time.monotonic() + within
        while True:
            try:
                message = await js.get_last_msg(
                    DEAD_LETTER_STREAM, f"{DEAD_LETTER_PREFIX}.{CONSUMER}"
                )
                if (message.headers or {}).get("Nats-Msg-Id") == f"{event_id}:{CONSUMER}:dead":
                    assert message.data is not None
                    return Event.model_validate_json(message.data)
            except NotFoundError:
                pass
            assert time.monotonic() < deadline, "the dead letter was never published"
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def test_a_poison_event_is_kept_and_replayed_once_its_cause_is_fixed(stack: Stack) -> None:
    dead = await poison_event(stack)
    assert (dead.consumer, dead.type, dead.deliveries) == (CONSUMER, "order_created", 3)
    # Listed for an operator, pending and among all, with why it failed.
    pending = await listed(stack)
    assert dead.id in pending
    shown = pending[dead.id]
    assert (shown["event_id"], shown["order_id"], shown["replayed_at"]) == (
        dead.event_id,
        dead.order_id,
        None,
    )
    assert "does not exist" in shown["error"], shown
    assert dead.id in await listed(stack, pending=False)
    # Published on the dead-letter subject, the event as it was.
    published = await on_dead_letter_subject(stack, dead.event_id)
    assert (published.event_id, published.order_id, published.type) == (
        dead.event_id,
        dead.order_id,
        EventType.ORDER_CREATED,
    )
    # Nothing applied it: no inbox row, no payment; its order does not exist.
    assert applied(stack, dead.event_id) == (0, 0)
    assert (await stack.http.get(f"/orders/{dead.order_id}")).status_code == 404

    fix_the_missing_order(stack.engine, dead.order_id)
    replay = await stack.http.post(f"/dead-letters/{dead.id}/replay")
    assert replay.status_code == 202, replay.text
    await until_applied(stack, dead.event_id)
    assert applied(stack, dead.event_id) == (1, 1)
    order = (await stack.http.get(f"/orders/{dead.order_id}")).json()
    assert (order["phase"], order["payment"]["status"]) == ("AWAITING_PAYMENT", "PENDING")
    # Replayed: no longer pending, still listed among all, with when.
    assert dead.id not in await listed(stack)
    assert (await listed(stack, pending=False))[dead.id]["replayed_at"] is not None

    again = await stack.http.post(f"/dead-letters/{dead.id}/replay")
    assert again.status_code == 409, again.text
    unknown = await stack.http.post(f"/dead-letters/{uuid.uuid4()}/replay")
    assert unknown.status_code == 404, unknown.text
    assert applied(stack, dead.event_id) == (1, 1)


async def test_a_dead_letter_shows_in_its_orders_event_log_with_its_replay(stack: Stack) -> None:
    """An event written to the outbox as every producer writes it (here an order_created
    whose order row is missing): its dead letter is in the order's event log, and after the
    replay so is the consumer that applied it."""
    event = Event(order_id=str(uuid.uuid4()), type=EventType.ORDER_CREATED, source=Service.ORDERS)
    with session(stack.engine) as db:
        emit(db, event)
        db.commit()
    broker = connect_broker(stack.settings)
    await broker.start()
    try:
        await Publisher(stack.engine, broker).publish([event])
    finally:
        await broker.stop()
    deadline = time.monotonic() + 20
    while True:
        with session(stack.engine) as db:
            dead = db.exec(
                select(DeadLetterRow).where(DeadLetterRow.event_id == event.event_id)
            ).first()
        if dead is not None:
            break
        assert time.monotonic() < deadline, "the event was never dead-lettered"
        await asyncio.sleep(0.05)

    fix_the_missing_order(stack.engine, event.order_id)
    # The operator's account of the saga: the event, who could not apply it, and why.
    account = (await stack.http.get(f"/orders/{event.order_id}/saga")).json()
    assert [(e["event_id"], e["consumed"]) for e in account] == [(event.event_id, [])], account
    assert [d["id"] for d in account[0]["dead_letters"]] == [dead.id]
    assert account[0]["dead_letters"][0]["consumer"] == CONSUMER
    # The order as its customer reads it: what happened, and nothing of consumers or errors.
    view = (await stack.http.get(f"/orders/{event.order_id}")).json()
    assert [(e["type"], e["reason"]) for e in view["events"]] == [("order_created", None)], view
    assert set(view["events"][0]) == {"type", "occurred_at", "reason"}, view
    assert dead.error not in json.dumps(view), view
    assert CONSUMER not in json.dumps(view), view

    replay = await stack.http.post(f"/dead-letters/{dead.id}/replay")
    assert replay.status_code == 202, replay.text
    await until_applied(stack, event.event_id)
    account = (await stack.http.get(f"/orders/{event.order_id}/saga")).json()
    # The replay is the same event sent again, not an event of its own.
    assert [e["event_id"] for e in account] == [event.event_id], account
    assert [c["consumer"] for c in account[0]["consumed"]] == [CONSUMER]
    assert account[0]["dead_letters"][0]["replayed_at"] is not None
