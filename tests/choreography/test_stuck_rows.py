"""Rows that cannot go on must not hold up the others, and an operator's replay must not be lost.

On a real ``nats-server -js`` and the real database, with the choreography running in-process:

- a dead letter replayed while NATS is down is queued with its replay's mark, in one
  transaction: the replay is answered, and the event is delivered, once, when NATS is back;
- an outbox row the relay cannot publish (a body no event can be read from) is put off with
  its error, and every row written after it is published;
- a due row a sweeper fails on every time (a delivery another saga owns) is put off, and the
  deadlines due after it still fire;
- (PostgreSQL) customers' confirms, the payment window's close and order cancels racing on
  the same payments never deadlock and never answer anything but a decision or a conflict:
  each payment ends one way.
"""

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text, update
from sqlmodel import col, select

from choreography.sweepers import Sweepers
from domain import names
from domain.events import Event, EventType, Service
from domain.status import Decision, DeliveryStatus, OrderStatus, PaymentStatus
from sagas.errors import ConflictError
from services import payments
from store.db import session
from store.models import DeadLetterRow, DeliveryRow, InboxRow, OutboxRow, as_utc, utcnow
from tests.choreography.live import Live, running
from tests.choreography.observe import (
    a_city,
    choreography_settings,
    dead_letters,
    decision_of,
    delivery_of,
    events,
    eventually,
    order_of,
    payment_of,
    refunds_of,
)
from tests.choreography.test_sweepers import lock_waiters
from tests.e2e.test_dead_letters import CONSUMER, fix_the_missing_order
from tests.nats_server import NatsServer
from tests.saga_harness import add_dealer, order_request

pytestmark = pytest.mark.db


async def a_dead_letter(live: Live) -> DeadLetterRow:
    """An ``order_created`` of an order that does not exist, dead-lettered by PaymentService
    after its deliveries."""
    event = Event(order_id=str(uuid.uuid4()), type=EventType.ORDER_CREATED, source=Service.ORDERS)
    await live.choreography.publisher.write(lambda db: (None, [event]))

    def dead() -> DeadLetterRow | None:
        with session(live.engine) as db:
            return db.exec(
                select(DeadLetterRow).where(DeadLetterRow.event_id == event.event_id)
            ).first()

    return await eventually(dead, what="the poison event is dead-lettered", within=30)


def seeking_a_dealer(engine: Engine, order_id: str) -> bool:
    delivery = delivery_of(engine, order_id)
    return delivery is not None and delivery.next_attempt_at is not None


def in_transit(engine: Engine, order_id: str) -> bool:
    delivery = delivery_of(engine, order_id)
    return delivery is not None and delivery.status == DeliveryStatus.IN_TRANSIT


def applied(engine: Engine, event_id: str) -> int:
    with session(engine) as db:
        return len(
            db.exec(
                select(InboxRow).where(InboxRow.consumer == CONSUMER, InboxRow.event_id == event_id)
            ).all()
        )


async def test_a_replay_while_nats_is_down_is_delivered_once_it_is_back(
    engine: Engine, server: NatsServer
) -> None:
    settings = choreography_settings(engine, server.url)
    async with running(engine, settings, server) as live:
        dead = await a_dead_letter(live)
        fix_the_missing_order(engine, dead.order_id)
        server.stop()
        # Answered although nothing can be published: the replay is queued, not lost.
        await live.door().replay_dead_letter(dead.id)
        with session(engine) as db:
            row = db.get(DeadLetterRow, dead.id)
            assert row is not None
            assert row.replayed_at is not None
            queued = db.exec(
                select(OutboxRow).where(OutboxRow.message_id == f"{dead.event_id}:replay-{dead.id}")
            ).one()
            assert queued.published_at is None
        with pytest.raises(ConflictError):  # replayed already: a second replay is refused
            await live.door().replay_dead_letter(dead.id)
        assert applied(engine, dead.event_id) == 0

        server.start()
        await live.until(lambda: applied(engine, dead.event_id) == 1, "the replay is applied")
        await live.settled(within=30)
    assert applied(engine, dead.event_id) == 1
    payment = payment_of(engine, dead.order_id)
    assert payment is not None
    assert payment.status == PaymentStatus.PENDING


async def test_an_outbox_row_that_cannot_be_published_does_not_hold_back_the_rest(
    engine: Engine, server: NatsServer
) -> None:
    settings = choreography_settings(engine, server.url)
    with session(engine) as db:  # first in line: no event can be read from its body
        db.add(
            OutboxRow(
                event_id=str(uuid.uuid4()),
                message_id="poison",
                order_id=str(uuid.uuid4()),
                type="order_created",
                source="orders",
                body='{"not": "an event"}',
                created_at=utcnow() - timedelta(minutes=1),
            )
        )
        db.commit()
    city = a_city()
    add_dealer(engine, city=city)
    async with running(engine, settings, server) as live:
        door = live.door()
        # Written while the broker does not take them, so only the relay can publish them.
        server.stop()
        order_ids = [(await door.place(order_request(city=city), None)).order_id for _ in range(3)]
        server.start()
        for order_id in order_ids:
            await live.until(
                lambda o=order_id: payment_of(engine, o) is not None,  # type: ignore[misc]
                "PaymentService opens the payment of every order after the poison row",
                within=30,
            )
        with session(engine) as db:
            poison = db.exec(select(OutboxRow).where(OutboxRow.message_id == "poison")).one()
    assert poison.published_at is None
    assert poison.attempts >= 1
    assert poison.next_attempt_at is not None
    assert poison.last_error is not None
    assert "ValidationError" in poison.last_error
    assert live.choreography.publisher.failed_rows >= 1


async def test_a_row_a_sweeper_always_fails_on_does_not_hold_back_the_rest(
    engine: Engine, server: NatsServer
) -> None:
    settings = choreography_settings(engine, server.url)
    async with running(engine, settings, server, start=False) as live:  # the test sweeps
        sweeper = Sweepers(engine, live.choreography.publisher)
        door = live.door()
        # Two deliveries waiting for a dealer in a city with none; the first is then taken
        # over by another saga's identity, so every attempt on it fails.
        city = a_city()
        orders = []
        for _ in range(2):
            order_id = await live.place(city, door=door)
            await live.decide(order_id, Decision.CONFIRM)
            await live.until(
                lambda o=order_id: seeking_a_dealer(engine, o),  # type: ignore[misc]
                "the delivery waits for a dealer",
            )
            orders.append(order_id)
        poisoned, healthy = orders
        with session(engine) as db:
            db.exec(
                update(DeliveryRow)
                .where(col(DeliveryRow.order_id) == poisoned)
                .values(saga_id="someone-else", next_attempt_at=utcnow() - timedelta(hours=1))
            )
            db.commit()
        dealer_id = add_dealer(engine, city=city)  # the healthy delivery can now be assigned

        async def swept() -> None:
            await sweeper.sweep()

        await eventually(
            lambda: in_transit(engine, healthy),
            what="the healthy delivery, due after the poisoned one, gets its dealer",
            between=swept,
        )
        await live.settled()
    assert sweeper.failed_rows >= 1
    healthy_delivery = delivery_of(engine, healthy)
    assert healthy_delivery is not None
    assert healthy_delivery.dealer_id == dealer_id
    poisoned_delivery = delivery_of(engine, poisoned)
    assert poisoned_delivery is not None
    assert poisoned_delivery.status == DeliveryStatus.PENDING


# --- one lock order (PostgreSQL) ------------------------------------------------------------

RACES = 40


def deadlocks(engine: Engine) -> int:
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        ).scalar_one()
    return int(found)


@pytest.fixture
def slow_confirms(engine: Engine) -> Iterator[None]:
    """(PostgreSQL) Every transaction that records a CONFIRM holds its decision row for half a
    second before it goes on to the payment's row: the window in which a sweeper closing the
    payment's window takes its locks too."""
    statements = [
        "CREATE FUNCTION test_slow_confirm() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$",
        "CREATE TRIGGER test_slow_confirm AFTER UPDATE ON payment_decisions FOR EACH ROW"
        " WHEN (NEW.decision = 'CONFIRM' AND OLD.decision IS NULL)"
        " EXECUTE FUNCTION test_slow_confirm()",
    ]
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
    yield
    with engine.begin() as connection:
        connection.execute(text("DROP TRIGGER test_slow_confirm ON payment_decisions"))
        connection.execute(text("DROP FUNCTION test_slow_confirm()"))


async def test_a_confirm_meeting_the_windows_close_neither_deadlocks_nor_loses(
    engine: Engine, server: NatsServer, request: pytest.FixtureRequest
) -> None:
    """A confirm taken in time whose transaction is still open when the window closes, and
    the sweeper that closes it, take the decision row and the payment row in the same order:
    the sweeper waits, the confirm wins alone. (In the opposite orders they deadlocked: one of
    them was aborted by PostgreSQL.)"""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs write transactions one at a time: no lock order to get wrong")
    request.getfixturevalue("slow_confirms")
    settings = choreography_settings(engine, server.url)
    before = deadlocks(engine)
    async with running(engine, settings, server, start=False) as live:  # the test sweeps
        door = live.door(payment_window_seconds=2)
        order_ids = [await live.place(a_city(), door=door) for _ in range(3)]
        sweeper = Sweepers(
            engine,
            live.choreography.publisher,
            interval=timedelta(milliseconds=2),
        )
        sweeping = asyncio.create_task(sweeper.run())
        try:

            async def confirm_just_before_the_close(order_id: str) -> None:
                payment = payment_of(engine, order_id)
                assert payment is not None
                assert payment.expires_at is not None
                at = as_utc(payment.expires_at) - timedelta(milliseconds=150)
                await asyncio.sleep(max(0.0, (at - utcnow()).total_seconds()))
                await door.decide_payment(names.payment_id_for(order_id), Decision.CONFIRM)

            await asyncio.gather(*(confirm_just_before_the_close(o) for o in order_ids))
            await live.until(
                lambda: all(order_of(engine, o).status == OrderStatus.CONFIRMED for o in order_ids),
                "every confirmed order is confirmed",
            )
        finally:
            sweeping.cancel()
            await asyncio.gather(sweeping, return_exceptions=True)
    assert deadlocks(engine) == before
    for order_id in order_ids:
        assert decision_of(engine, order_id) == Decision.CONFIRM
        payment = payment_of(engine, order_id)
        assert payment is not None
        assert payment.status == PaymentStatus.COMPLETED
        assert [
            e.type for e in events(engine, order_id) if e.type == EventType.PAYMENT_EXPIRED
        ] == []


async def test_a_confirm_that_meets_an_order_cancels_refund_is_a_conflict_and_records_nothing(
    engine: Engine, server: NatsServer
) -> None:
    """The customer's confirm records its decision, then finds the payment being cancelled by
    an order cancel (PaymentService undoing it, which records no decision): it answers a
    conflict, and its decision is rolled back with it (it was a BusinessError and a 500)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs write transactions one at a time: they cannot interleave")
    settings = choreography_settings(engine, server.url)
    async with running(engine, settings, server, start=False) as live:
        order_id = await live.place(a_city())
        payment_id = names.payment_id_for(order_id)
        with session(engine) as undoing:
            # PaymentService undoing the payment for the order's cancel, not committed yet.
            outcome, changed = payments.cancel_or_refund_payment(
                undoing, order_id, names.choreographed_saga_id(order_id)
            )
            assert (outcome.status, changed) == (PaymentStatus.CANCELLED, True)
            deciding = asyncio.create_task(
                live.door().decide_payment(payment_id, Decision.CONFIRM), name="the confirm"
            )
            await lock_waiters(engine, 1, deciding)
            undoing.commit()
        with pytest.raises(ConflictError, match="can no longer be decided"):
            await deciding
    assert decision_of(engine, order_id) is None
    payment = payment_of(engine, order_id)
    assert payment is not None
    assert payment.status == PaymentStatus.CANCELLED
    assert [e.type for e in events(engine, order_id) if e.type == EventType.PAYMENT_CONFIRMED] == []


async def test_confirms_window_closes_and_cancels_racing_never_deadlock(
    engine: Engine, server: NatsServer
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs write transactions one at a time: no lock order to get wrong")
    settings = choreography_settings(engine, server.url)
    city = a_city()
    before = deadlocks(engine)
    async with running(engine, settings, server) as live:
        # Two more sweepers, sweeping all the time, as two more worker processes would.
        sweepers = [
            Sweepers(
                engine,
                live.choreography.publisher,
                interval=timedelta(milliseconds=2),
            )
            for _ in range(2)
        ]
        sweeping = [asyncio.create_task(s.run()) for s in sweepers]
        door = live.door(payment_window_seconds=2)
        order_ids = list(await asyncio.gather(*(live.place(city, door=door) for _ in range(RACES))))
        answers: dict[str, list[str]] = {o: [] for o in order_ids}

        async def race(order_id: str) -> None:
            payment = payment_of(engine, order_id)
            assert payment is not None
            assert payment.expires_at is not None
            closes = as_utc(payment.expires_at)
            await asyncio.sleep(max(0.0, (closes - utcnow()).total_seconds() - 0.05))

            async def confirm() -> None:
                try:
                    await door.decide_payment(names.payment_id_for(order_id), Decision.CONFIRM)
                    answers[order_id].append("confirmed")
                except ConflictError:
                    answers[order_id].append("confirm refused")

            async def cancel() -> None:
                try:
                    await door.cancel(order_id)
                    answers[order_id].append("cancel requested")
                except ConflictError:
                    answers[order_id].append("cancel refused")

            await asyncio.gather(*(confirm() for _ in range(3)), cancel(), cancel())

        try:
            await asyncio.gather(*(race(o) for o in order_ids))
            await live.until(
                lambda: all(order_of(engine, o).status == OrderStatus.CANCELLED for o in order_ids),
                "every order ends cancelled (nobody delivers to its city)",
                within=60,
            )
            await live.settled(within=30)
        finally:
            for task in sweeping:
                task.cancel()
            await asyncio.gather(*sweeping, return_exceptions=True)

    assert deadlocks(engine) == before
    assert dead_letters(engine) == []
    for order_id in order_ids:
        payment = payment_of(engine, order_id)
        assert payment is not None
        decision = decision_of(engine, order_id)
        # One way each: confirmed then refunded (no dealer, or the cancel), or never taken.
        if decision == Decision.CONFIRM:
            assert "confirmed" in answers[order_id], (order_id, answers[order_id])
            assert payment.status == PaymentStatus.REFUNDED
            assert len(refunds_of(engine, payment.id)) == 1
        else:
            assert "confirmed" not in answers[order_id], (order_id, answers[order_id])
            assert payment.status == PaymentStatus.CANCELLED
            assert refunds_of(engine, payment.id) == []
        ending = [
            e
            for e in events(engine, order_id)
            if e.type
            in (EventType.PAYMENT_CONFIRMED, EventType.PAYMENT_EXPIRED, EventType.PAYMENT_CANCELLED)
        ]
        assert len(ending) <= 2, ending  # decided once; cancelled or refunded once
