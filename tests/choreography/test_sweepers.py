"""The payment window and the dealer window are deadlines in rows, fired by
``choreography.sweepers.Sweepers``: each fires once, whoever sweeps and whenever.

On a real ``nats-server -js`` and the real database, with the choreography's consumers
running in-process:

- two sweepers at once (two worker processes) over deadlines that all passed together fire
  each one once: one ``payment_expired`` or ``delivery_failed`` per order, one refund per
  refunded payment, and of the orders a dealer freed at that moment could take, each is
  either assigned or failed, never both;
- a deadline that passed while nothing ran (the worker and the broker stopped) fires once
  after the restart;
- a customer's confirm racing the payment window's close: exactly one of them wins, the
  customer's answer says which, and the order goes the winner's way with one event; and
  (PostgreSQL, where transactions interleave) a confirm taken in time whose transaction
  commits only after the window closed, while a sweeper waits for the payment, wins alone.
"""

import asyncio
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from choreography.sweepers import Sweepers
from domain import names
from domain.events import EventType
from domain.status import Decision, DeliveryStatus, OrderStatus, PaymentStatus
from sagas.errors import ConflictError
from store.db import session
from store.models import PaymentRow, as_utc, utcnow
from tests.choreography.live import Live, running
from tests.choreography.observe import (
    a_city,
    choreography_settings,
    dead_letters,
    dealer_load,
    decision_of,
    delivery_of,
    events,
    eventually,
    order_of,
    payment_of,
    refunds_of,
)
from tests.nats_server import NatsServer
from tests.saga_harness import add_dealer, set_dealer_load

pytestmark = pytest.mark.db


def count(engine: Engine, order_id: str, type: EventType) -> int:
    return len(events(engine, order_id, type=type))


def payment_deadline(engine: Engine, order_id: str) -> datetime:
    payment = payment_of(engine, order_id)
    assert payment is not None
    assert payment.expires_at is not None
    return as_utc(payment.expires_at)


def dealer_deadline(engine: Engine, order_id: str) -> datetime:
    delivery = delivery_of(engine, order_id)
    assert delivery is not None
    assert delivery.assign_by is not None
    return as_utc(delivery.assign_by)


def ended(engine: Engine, order_id: str) -> bool:
    """Whether the order went one way or the other: cancelled, or its parcel on its way."""
    delivery = delivery_of(engine, order_id)
    in_transit = delivery is not None and delivery.status == DeliveryStatus.IN_TRANSIT
    return in_transit or order_of(engine, order_id).status == OrderStatus.CANCELLED


def seeking(engine: Engine, order_id: str) -> bool:
    delivery = delivery_of(engine, order_id)
    return (
        delivery is not None
        and delivery.status == DeliveryStatus.PENDING
        and delivery.next_attempt_at is not None
    )


async def passed(moment: datetime) -> None:
    """Wait until the clock has passed ``moment``."""
    await eventually(lambda: utcnow() > moment, what=f"the clock passes {moment}", within=30)


async def confirmed_and_seeking(live: Live, city: str) -> str:
    """An order whose payment is confirmed and whose delivery waits for a dealer."""
    order_id = await live.place(city)
    await live.decide(order_id, Decision.CONFIRM)
    await live.until(lambda: seeking(live.engine, order_id), "the delivery waits for a dealer")
    return order_id


def assert_expired_once(engine: Engine, order_id: str) -> None:
    assert count(engine, order_id, EventType.PAYMENT_EXPIRED) == 1
    assert count(engine, order_id, EventType.PAYMENT_CONFIRMED) == 0
    payment = payment_of(engine, order_id)
    assert payment is not None
    assert (payment.status, decision_of(engine, order_id)) == (
        PaymentStatus.CANCELLED,
        Decision.TIMEOUT,
    )
    order = order_of(engine, order_id)
    assert (order.status, order.cancel_reason) == (OrderStatus.CANCELLED, names.PAYMENT_TIMED_OUT)


def assert_failed_once(engine: Engine, order_id: str) -> None:
    assert count(engine, order_id, EventType.DELIVERY_FAILED) == 1
    assert count(engine, order_id, EventType.DELIVERY_ASSIGNED) == 0
    delivery = delivery_of(engine, order_id)
    assert delivery is not None
    assert (delivery.status, delivery.dealer_id, delivery.next_attempt_at) == (
        DeliveryStatus.CANCELLED,
        None,
        None,
    )
    payment = payment_of(engine, order_id)
    assert payment is not None
    assert payment.status == PaymentStatus.REFUNDED
    assert len(refunds_of(engine, payment.id)) == 1
    order = order_of(engine, order_id)
    assert (order.status, order.cancel_reason) == (
        OrderStatus.CANCELLED,
        names.NO_DEALER_AVAILABLE,
    )


def assert_assigned_once(engine: Engine, order_id: str, dealer_id: int) -> None:
    assert count(engine, order_id, EventType.DELIVERY_ASSIGNED) == 1
    assert count(engine, order_id, EventType.DELIVERY_FAILED) == 0
    delivery = delivery_of(engine, order_id)
    assert delivery is not None
    assert (delivery.status, delivery.dealer_id, delivery.next_attempt_at) == (
        DeliveryStatus.IN_TRANSIT,
        dealer_id,
        None,
    )
    payment = payment_of(engine, order_id)
    assert payment is not None
    assert (payment.status, refunds_of(engine, payment.id)) == (PaymentStatus.COMPLETED, [])
    assert order_of(engine, order_id).status == OrderStatus.CONFIRMED


async def test_two_sweepers_at_once_fire_each_deadline_once(
    engine: Engine, server: NatsServer
) -> None:
    settings = choreography_settings(engine, server.url)
    async with running(engine, settings, server, start=False) as live:  # no sweeper yet
        quick = live.door(payment_window_seconds=1)
        expiring = list(await asyncio.gather(*(live.place("Tehran", door=quick) for _ in range(5))))
        nowhere = a_city()  # nobody delivers there
        failing = list(
            await asyncio.gather(*(confirmed_and_seeking(live, nowhere) for _ in range(5)))
        )
        busy_city = a_city()
        dealer_id = add_dealer(engine, city=busy_city, capacity=2, active_deliveries=2)
        freed = list(
            await asyncio.gather(*(confirmed_and_seeking(live, busy_city) for _ in range(4)))
        )
        last = max(
            [payment_deadline(engine, order_id) for order_id in expiring]
            + [dealer_deadline(engine, order_id) for order_id in failing + freed]
        )
        await passed(last)
        # Every deadline has passed and none has fired: nobody swept.
        assert all(count(engine, order_id, EventType.PAYMENT_EXPIRED) == 0 for order_id in expiring)
        assert all(seeking(engine, order_id) for order_id in failing + freed)
        # The busy dealer delivers both parcels as the windows close: two orders can go.
        set_dealer_load(engine, dealer_id, 0)

        publisher = live.choreography.publisher
        first = Sweepers(engine, publisher)
        second = Sweepers(engine, publisher)

        deadline = time.monotonic() + 20
        # Rounds of both at once, until neither finds anything due.
        while sum(await asyncio.gather(first.sweep(), second.sweep())) > 0:
            assert time.monotonic() < deadline, "the sweepers never ran out of due rows"
        await live.until(
            lambda: all(ended(engine, o) for o in expiring + failing + freed),
            "every order goes the way its deadline says",
        )
        await live.settled()

    for order_id in expiring:
        assert_expired_once(engine, order_id)
    for order_id in failing:
        assert_failed_once(engine, order_id)
    assigned = [o for o in freed if count(engine, o, EventType.DELIVERY_ASSIGNED)]
    for order_id in freed:
        if order_id in assigned:
            assert_assigned_once(engine, order_id, dealer_id)
        else:
            assert_failed_once(engine, order_id)
    assert len(assigned) == 2 == dealer_load(engine, dealer_id)
    assert dead_letters(engine) == []


async def test_a_deadline_that_passed_while_nothing_ran_fires_once_after_the_restart(
    engine: Engine, server: NatsServer
) -> None:
    settings = choreography_settings(engine, server.url)
    # The consumers write both deadlines in their rows; no sweeper runs before the stop.
    async with running(engine, settings, server, start=False) as live:
        seeking_id = await confirmed_and_seeking(live, a_city())
        deciding_id = await live.place("Tehran", door=live.door(payment_window_seconds=1))
    server.stop()
    await passed(max(payment_deadline(engine, deciding_id), dealer_deadline(engine, seeking_id)))
    # Both deadlines have passed with nothing running: neither has fired.
    payment = payment_of(engine, deciding_id)
    assert payment is not None
    assert payment.status == PaymentStatus.PENDING
    assert seeking(engine, seeking_id)
    assert count(engine, seeking_id, EventType.DELIVERY_FAILED) == 0

    server.start()  # the same store: the stream and its durable consumers are still there
    async with running(engine, settings, server) as live:
        await live.until(
            lambda: ended(engine, deciding_id) and ended(engine, seeking_id),
            "both deadlines fire after the restart",
        )
        await live.settled()
    assert_expired_once(engine, deciding_id)
    assert_failed_once(engine, seeking_id)
    assert dead_letters(engine) == []


# How far from the payment window's close each customer confirms, in seconds: well before
# (the customer wins), well after (the window's close wins), and close on either side.
OFFSETS = (-0.3, -0.05, -0.01, -0.004, -0.001, 0.0, 0.001, 0.004, 0.01, 0.05, 0.3)


async def test_a_confirm_racing_the_windows_close_has_exactly_one_winner(
    engine: Engine, server: NatsServer
) -> None:
    settings = choreography_settings(engine, server.url)
    city = a_city()
    dealer_id = add_dealer(engine, city=city, capacity=len(OFFSETS))
    async with running(engine, settings, server) as live:
        # Another worker's sweeper too, sweeping often: the close is taken right on time.
        eager = Sweepers(
            engine,
            live.choreography.publisher,
            interval=timedelta(milliseconds=5),
        )
        sweeping = asyncio.create_task(eager.run())
        try:
            door = live.door(payment_window_seconds=2)
            order_ids = list(await asyncio.gather(*(live.place(city, door=door) for _ in OFFSETS)))

            async def confirm_at(order_id: str, offset: float) -> bool:
                """Confirm ``offset`` s after the window's close: whether it was accepted."""
                at = payment_deadline(engine, order_id) + timedelta(seconds=offset)
                await asyncio.sleep(max(0.0, (at - utcnow()).total_seconds()))
                try:
                    await door.decide_payment(names.payment_id_for(order_id), Decision.CONFIRM)
                except ConflictError:
                    return False
                return True

            accepted = await asyncio.gather(
                *(confirm_at(o, offset) for o, offset in zip(order_ids, OFFSETS, strict=True))
            )

            await live.until(lambda: all(ended(engine, o) for o in order_ids), "all decided")
            await live.settled()
        finally:
            sweeping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sweeping

    winners = []
    for order_id, was_accepted in zip(order_ids, accepted, strict=True):
        winner = decision_of(engine, order_id)
        winners.append(winner)
        assert was_accepted == (winner == Decision.CONFIRM), (order_id, winner)
        if winner == Decision.CONFIRM:
            assert count(engine, order_id, EventType.PAYMENT_CONFIRMED) == 1
            assert count(engine, order_id, EventType.PAYMENT_EXPIRED) == 0
            assert_assigned_once(engine, order_id, dealer_id)
        else:
            assert winner == Decision.TIMEOUT
            assert_expired_once(engine, order_id)
    # Both ways happened: the test raced the close from either side.
    assert winners[0] == Decision.CONFIRM
    assert winners[-1] == Decision.TIMEOUT
    assert dealer_load(engine, dealer_id) == winners.count(Decision.CONFIRM)
    assert dead_letters(engine) == []


async def lock_waiters(engine: Engine, at_least: int, *waiters: asyncio.Task[object]) -> None:
    """Wait until ``at_least`` sessions of the test's database wait for a lock (failing at
    once if one of the ``waiters`` ends instead)."""

    def waiting() -> bool:
        for task in waiters:
            if task.done():
                raise AssertionError(f"{task.get_name()} ended: {task.result()!r}")
        with engine.connect() as connection:
            found = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        return int(found) >= at_least

    await eventually(waiting, what=f"{at_least} session(s) wait for a lock")


async def test_a_confirm_taken_in_time_but_committed_after_the_close_wins_alone(
    engine: Engine, server: NatsServer
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs write transactions one at a time: they cannot interleave")
    settings = choreography_settings(engine, server.url)
    async with running(engine, settings, server, start=False) as live:  # the test sweeps
        door = live.door(payment_window_seconds=2)  # time to pause its confirm in the window
        order_id = await live.place("Tehran", door=door)
        payment_id = names.payment_id_for(order_id)
        with session(engine) as holder:
            # Holding the payment's row pauses the customer's transaction after it recorded
            # CONFIRM (in time) and before it completes the payment.
            holder.get(PaymentRow, payment_id, with_for_update=True)
            deciding = asyncio.create_task(
                door.decide_payment(payment_id, Decision.CONFIRM), name="the confirm"
            )
            await lock_waiters(engine, 1, deciding)
            await passed(payment_deadline(engine, order_id))
            sweeper = Sweepers(engine, live.choreography.publisher)
            sweeping = asyncio.create_task(sweeper.sweep(), name="the sweep")  # it has closed
            await lock_waiters(engine, 2, deciding, sweeping)
            holder.rollback()
        accepted = await deciding
        assert await sweeping == 1  # it found the payment due, and left it to the customer
        assert accepted.decision == Decision.CONFIRM
        await live.until(
            lambda: order_of(engine, order_id).status == OrderStatus.CONFIRMED,
            "OrderService confirms the order",
        )
        await live.settled()
    assert decision_of(engine, order_id) == Decision.CONFIRM
    assert count(engine, order_id, EventType.PAYMENT_CONFIRMED) == 1
    assert count(engine, order_id, EventType.PAYMENT_EXPIRED) == 0
    payment = payment_of(engine, order_id)
    assert payment is not None
    assert payment.status == PaymentStatus.COMPLETED
    assert order_of(engine, order_id).status == OrderStatus.CONFIRMED
