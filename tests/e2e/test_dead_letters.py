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
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import nats
from nats.js.errors import NotFoundError
from sqlalchemy import Engine
from sqlmodel import col, func, select

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
from tests.e2e.conftest import SecuredApi, Stack, poison_event

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


# --- bulk replay -------------------------------------------------------------------------

# The consumer that fails on a delivery_completed whose order does not exist.
DELIVERIES_CONSUMER = "orders-delivery_completed"


async def dead_lettered(stack: Stack, events: list[Event], within: float = 180) -> None:
    """Publish ``events`` (none applicable: their orders do not exist) at once, and wait
    until every one has its dead letter."""
    broker = connect_broker(stack.settings)
    await broker.start()
    try:
        await Publisher(stack.engine, broker).publish(events)
    finally:
        await broker.stop()
    ids = [e.event_id for e in events]
    deadline = time.monotonic() + within
    while True:
        with session(stack.engine) as db:
            dead = db.exec(
                select(func.count())
                .select_from(DeadLetterRow)
                .where(col(DeadLetterRow.event_id).in_(ids))
            ).one()
        if dead == len(events):
            return
        assert time.monotonic() < deadline, f"only {dead} of {len(events)} were dead-lettered"
        await asyncio.sleep(0.2)


def poison(type: EventType, count: int) -> list[Event]:
    source = Service.ORDERS if type == EventType.ORDER_CREATED else Service.DELIVERIES
    return [Event(order_id=str(uuid.uuid4()), type=type, source=source) for _ in range(count)]


def fix_the_missing_confirmed_order(engine: Engine, order_id: str) -> None:
    """The fix a delivery_completed needs: its order, CONFIRMED."""
    fix_the_missing_order(engine, order_id)
    with transaction(engine) as db:
        orders.confirm_order(db, order_id, names.choreographed_saga_id(order_id))


def inbox_rows(stack: Stack, events: list[Event]) -> dict[str, int]:
    """How many inbox rows each event has (every consumer's)."""
    with session(stack.engine) as db:
        rows = db.exec(
            select(InboxRow.event_id).where(
                col(InboxRow.event_id).in_([e.event_id for e in events])
            )
        ).all()
    return {e.event_id: rows.count(e.event_id) for e in events}


async def until_each_applied(stack: Stack, events: list[Event], within: float = 120) -> None:
    deadline = time.monotonic() + within
    while (applied := inbox_rows(stack, events)) and 0 in applied.values():
        missing = sum(1 for n in applied.values() if n == 0)
        assert time.monotonic() < deadline, f"{missing} replayed event(s) never applied"
        await asyncio.sleep(0.2)


async def bulk_replay(stack: Stack, **filters: str) -> int:
    response = await stack.http.post("/dead-letters/replay", json=filters)
    assert response.status_code == 202, response.text
    queued: int = response.json()["queued"]
    return queued


async def test_a_hundred_dead_letters_are_replayed_in_bulk_each_applied_once(
    stack: Stack,
) -> None:
    """100 dead letters of two consumers, in two waves; their cause fixed, replays by
    consumer, by type and time, then all that are left: each event applied exactly once, and
    a bulk replay after that queues nothing."""
    start = datetime.now(UTC).isoformat()
    first = poison(EventType.ORDER_CREATED, 40)
    await dead_lettered(stack, first)
    between = datetime.now(UTC).isoformat()
    second = poison(EventType.ORDER_CREATED, 40)
    delivered = poison(EventType.DELIVERY_COMPLETED, 20)
    await dead_lettered(stack, [*second, *delivered])
    everything = [*first, *second, *delivered]
    for event in [*first, *second]:
        fix_the_missing_order(stack.engine, event.order_id)
    for event in delivered:
        fix_the_missing_confirmed_order(stack.engine, event.order_id)

    # By consumer: the 20 delivery_completed only.
    assert await bulk_replay(stack, consumer=DELIVERIES_CONSUMER, since=start) == 20
    await until_each_applied(stack, delivered)
    assert set(inbox_rows(stack, [*first, *second]).values()) == {0}
    # By type and time: the first wave's 40 (failed before ``between``).
    assert await bulk_replay(stack, type="order_created", since=start, until=between) == 40
    await until_each_applied(stack, first)
    assert set(inbox_rows(stack, second).values()) == {0}
    # All that are left: the second wave's 40; then nothing.
    assert await bulk_replay(stack, since=start) == 40
    await until_each_applied(stack, everything)
    assert await bulk_replay(stack, since=start) == 0

    assert set(inbox_rows(stack, everything).values()) == {1}
    with session(stack.engine) as db:
        payments = db.exec(
            select(func.count())
            .select_from(PaymentRow)
            .where(col(PaymentRow.order_id).in_([e.order_id for e in [*first, *second]]))
        ).one()
        left = db.exec(
            select(func.count())
            .select_from(DeadLetterRow)
            .where(
                col(DeadLetterRow.event_id).in_([e.event_id for e in everything]),
                col(DeadLetterRow.replayed_at).is_(None),
            )
        ).one()
    assert (payments, left) == (80, 0)
    for event in delivered:
        order = (await stack.http.get(f"/orders/{event.order_id}")).json()
        assert order["status"] == "DELIVERED", order


# Bodies a bulk replay refuses: no filter, an unknown consumer or type, a time without its
# offset or unreadable, a null filter, an unknown field, not an object.
BAD_FILTERS: list[Any] = [
    {},
    {"consumer": "nobody"},
    {"type": "order_exploded"},
    {"since": "yesterday"},
    {"since": "2026-01-02T00:00:00"},
    {"consumer": None},
    {"all": False},
    {"limit": 5},
    [],
]


async def test_a_bulk_replay_with_bad_filters_is_a_422_and_replays_nothing(stack: Stack) -> None:
    dead = await poison_event(stack)
    for body in BAD_FILTERS:
        response = await stack.http.post("/dead-letters/replay", json=body)
        assert response.status_code == 422, (body, response.text)
    assert dead.id in await listed(stack)


async def test_only_an_operator_replays_in_bulk(secured: SecuredApi) -> None:
    assert (await secured.http.post("/dead-letters/replay", json={})).status_code == 401
    customer = await secured.http.post(
        "/dead-letters/replay", json={}, headers=secured.customer("someone")
    )
    assert customer.status_code == 403, customer.text
