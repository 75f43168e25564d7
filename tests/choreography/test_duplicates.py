"""Every event delivered twice changes nothing: the consumers' inboxes absorb duplicates that
JetStream's deduplication lets through.

The choreography runs in-process on a real ``nats-server -js`` and the real database, once as
it is and once with a ``Publisher`` that publishes every event twice (the door's, the
consumers' and the sweepers'), the second copy under a message id of its own, so JetStream
stores and delivers both. Whole orders go through the door (delivered; cancelled by the
customer; no dealer, so refunded then cancelled; cancelled by an operator while a dealer is
sought) and each ends exactly as it does without duplicates: the same rows, the same event
log, the same inbox notes, one payment, at most one refund, the dealer's load back where it
belongs, one inbox row per (consumer, event), every outbox row published and nothing
dead-lettered. The stream holding twice as many messages proves the copies were delivered.
"""

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import col, select

from choreography import runtime
from choreography.handlers import CONSUMERS
from choreography.outbox import Publisher
from domain.events import Event, EventType
from domain.status import Decision, DeliveryStatus, OrderStatus, PaymentStatus
from store.db import read_session
from store.models import DealerRow, InboxRow, OutboxRow, PaymentRow, place_key
from tests.choreography.live import Live, running
from tests.choreography.observe import (
    choreography_settings,
    consumer_of,
    dead_letters,
    decision_of,
    delivery_of,
    order_of,
    outbox,
    payment_of,
    refunds_of,
)
from tests.nats_server import NatsServer
from tests.saga_harness import add_dealer

pytestmark = pytest.mark.db


class PublishingTwice(Publisher):
    """Publishes every event twice: the second copy under a message id of its own, which
    JetStream's deduplication does not recognise, so every consumer gets the event twice."""

    async def _send(
        self, event: Event, *, message_id: str | None = None, traceparent: str | None = None
    ) -> None:
        first = message_id or event.event_id
        await super()._send(event, message_id=first, traceparent=traceparent)
        await super()._send(event, message_id=f"{first}:twice", traceparent=traceparent)


@asynccontextmanager
async def shop(
    engine: Engine, store: Path, *, twice: bool, dealer_window: float
) -> AsyncIterator[Live]:
    """The choreography on a nats-server of its own, publishing every event ``twice`` or
    once, looking for a dealer for ``dealer_window`` seconds."""
    server = NatsServer(store)
    server.start()
    settings = choreography_settings(
        engine, server.url, dealer_assignment_window_seconds=dealer_window
    )
    try:
        with pytest.MonkeyPatch.context() as patch:
            if twice:  # the publisher the choreography builds, for every publishing part
                patch.setattr(runtime, "Publisher", PublishingTwice)
            async with running(engine, settings, server) as live:
                assert isinstance(live.choreography.publisher, PublishingTwice) == twice
                yield live
    finally:
        server.stop()


# --- the orders -----------------------------------------------------------------------------

Scenario = Callable[[Live, str], Awaitable[list[str]]]


async def delivered(live: Live, city: str) -> list[str]:
    add_dealer(live.engine, city=city, capacity=1)
    order_id = await live.place(city)
    await live.decide(order_id, Decision.CONFIRM)
    await live.until(lambda: in_transit(live.engine, order_id), "the dealer takes the parcel")
    await live.report_delivered(order_id)
    await live.until(
        lambda: order_of(live.engine, order_id).status == OrderStatus.DELIVERED, "delivered"
    )
    return [order_id]


async def cancelled_by_the_customer(live: Live, city: str) -> list[str]:
    order_id = await live.place(city)
    await live.decide(order_id, Decision.CANCEL)
    await live.until(lambda: cancelled(live.engine, order_id), "the order is cancelled")
    return [order_id]


async def refunded_for_want_of_a_dealer(live: Live, city: str) -> list[str]:
    order_id = await live.place(city)  # nobody delivers there
    await live.decide(order_id, Decision.CONFIRM)
    await live.until(lambda: cancelled(live.engine, order_id), "the dealer window closes")
    return [order_id]


async def cancelled_while_a_dealer_is_sought(live: Live, city: str) -> list[str]:
    add_dealer(live.engine, city=city, capacity=1)
    busy = await live.place(city)
    await live.decide(busy, Decision.CONFIRM)
    await live.until(lambda: in_transit(live.engine, busy), "the only dealer is taken")
    waiting = await live.place(city)
    await live.decide(waiting, Decision.CONFIRM)
    await live.until(lambda: seeking(live.engine, waiting), "the second order waits")
    await live.cancel(waiting)
    await live.until(lambda: cancelled(live.engine, waiting), "the waiting order is cancelled")
    await live.report_delivered(busy)
    await live.until(
        lambda: order_of(live.engine, busy).status == OrderStatus.DELIVERED, "delivered"
    )
    return [busy, waiting]


def in_transit(engine: Engine, order_id: str) -> bool:
    delivery = delivery_of(engine, order_id)
    return delivery is not None and delivery.status == DeliveryStatus.IN_TRANSIT


def seeking(engine: Engine, order_id: str) -> bool:
    delivery = delivery_of(engine, order_id)
    return (
        delivery is not None
        and delivery.status == DeliveryStatus.PENDING
        and delivery.next_attempt_at is not None
    )


def cancelled(engine: Engine, order_id: str) -> bool:
    return order_of(engine, order_id).status == OrderStatus.CANCELLED


# --- what an order ends as --------------------------------------------------------------------


def without_ids(note: str | None) -> str:
    """An inbox note with the dealer's id left out (each run adds dealers of its own)."""
    return re.sub(r"dealer \d+", "dealer <id>", note or "")


def end_state(engine: Engine, order_ids: list[str], city: str) -> dict[str, Any]:
    """What the orders and the city's dealers ended as, free of ids and times: the same for
    the same story."""
    orders = []
    for order_id in order_ids:
        order = order_of(engine, order_id)
        payment = payment_of(engine, order_id)
        assert payment is not None
        delivery = delivery_of(engine, order_id)
        events = [Event.model_validate_json(row.body) for row in outbox(engine, order_id)]
        with read_session(engine) as db:
            inbox = db.exec(select(InboxRow).where(InboxRow.order_id == order_id)).all()
        orders.append(
            {
                "order": (order.status, order.cancel_reason, order.cancel_requested_at is None),
                "payment": (payment.status, payment.amount_cents, payment.refunded_at is None),
                "decision": decision_of(engine, order_id),
                "refunds": [r.amount_cents for r in refunds_of(engine, payment.id)],
                "delivery": None
                if delivery is None
                else (
                    delivery.status,
                    delivery.dealer_id is None,
                    delivery.next_attempt_at is None,
                ),
                "events": [(e.type, e.source, e.reason, e.dealer_id is None) for e in events],
                "inbox": sorted((row.consumer, row.type, without_ids(row.note)) for row in inbox),
            }
        )
    with read_session(engine) as db:
        dealers = db.exec(
            select(DealerRow.capacity, DealerRow.active_deliveries).where(
                DealerRow.city_key == place_key(city)
            )
        ).all()
    return {"orders": orders, "dealers": sorted(tuple(d) for d in dealers)}


def assert_each_effect_once(engine: Engine, order_ids: list[str]) -> None:
    """One payment per order, a refund exactly for a refunded payment, every event applied
    once by its consumer and by no other, every outbox row published, no dead letter."""
    for order_id in order_ids:
        with read_session(engine) as db:
            payments = db.exec(select(PaymentRow).where(PaymentRow.order_id == order_id)).all()
            inbox = db.exec(select(InboxRow).where(InboxRow.order_id == order_id)).all()
            rows = db.exec(
                select(OutboxRow).where(OutboxRow.order_id == order_id).order_by(col(OutboxRow.id))
            ).all()
        assert len(payments) == 1
        refunds = refunds_of(engine, payments[0].id)
        assert len(refunds) == (1 if payments[0].status == PaymentStatus.REFUNDED else 0)
        consumed = {type for (_, type) in CONSUMERS}
        assert sorted((row.consumer, row.event_id) for row in inbox) == sorted(
            (consumer_of(EventType(row.type)), row.event_id) for row in rows if row.type in consumed
        )
        assert all(row.published_at is not None for row in rows)
    assert dead_letters(engine) == []


async def run(
    engine: Engine, store: Path, scenario: Scenario, *, twice: bool, dealer_window: float
) -> dict[str, Any]:
    """``scenario`` on a choreography of its own; its end state once nothing is in flight."""
    async with shop(engine, store, twice=twice, dealer_window=dealer_window) as live:
        city = f"City {uuid.uuid4().hex[:10]}"
        order_ids = await scenario(live, city)
        await live.settled()
        assert_each_effect_once(engine, order_ids)
        written = sum(len(outbox(engine, order_id)) for order_id in order_ids)
        assert await live.stream_messages() == (2 if twice else 1) * written
        return end_state(engine, order_ids, city)


# Each story with its dealer window: short where the window closing is the story, long where
# the story must end before it closes (a cancel while a dealer is sought).
SHORT, LONG = 1.5, 30.0


@pytest.mark.parametrize(
    ("scenario", "dealer_window"),
    [
        pytest.param(scenario, window, id=scenario.__name__)
        for scenario, window in (
            (delivered, LONG),
            (cancelled_by_the_customer, LONG),
            (refunded_for_want_of_a_dealer, SHORT),
            (cancelled_while_a_dealer_is_sought, LONG),
        )
    ],
)
async def test_every_event_delivered_twice_ends_the_order_as_once(
    engine: Engine, tmp_path: Path, scenario: Scenario, dealer_window: float
) -> None:
    once = await run(engine, tmp_path / "once", scenario, twice=False, dealer_window=dealer_window)
    twice = await run(engine, tmp_path / "twice", scenario, twice=True, dealer_window=dealer_window)
    assert twice == once
