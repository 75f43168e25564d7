"""Helpers of the choreography tests: an order observed through its rows (the services'
tables, its outbox, the inboxes), and polling with a deadline. Every helper reads real rows."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlmodel import SQLModel, col, select

from choreography.handlers import CONSUMERS
from choreography.outbox import Publisher
from domain.events import Event, EventType, Service
from domain.status import SagaStyle
from sagas.door import Sagas
from settings import Settings
from store.db import read_session
from store.models import (
    DeadLetterRow,
    DealerRow,
    DeliveryRow,
    InboxRow,
    OrderRow,
    OutboxRow,
    PaymentDecisionRow,
    PaymentRow,
    RefundRow,
)

T = TypeVar("T")


def choreography_settings(engine: Engine, nats_url: str, **changes: Any) -> Settings:
    """Settings for ``engine``'s database and the broker at ``nats_url``, with the short
    windows of tests/e2e/conftest.py (they close within a test)."""
    values: dict[str, Any] = {
        "database_url": engine.url.render_as_string(hide_password=False),
        "nats_url": nats_url,
        "dealer_assignment_window_seconds": 1.5,
        "dealer_retry_initial_seconds": 0.5,
        "event_max_deliveries": 3,
        "auth_mode": "dev",
        "saga_style": SagaStyle.CHOREOGRAPHY,
        **changes,
    }
    return Settings(**values)


def choreographed_door(engine: Engine, settings: Settings, publisher: Publisher) -> Sagas:
    """The door as the API builds it, placing choreographed orders (and no orchestrated
    ones: it has no Temporal client)."""
    return Sagas(engine, settings, publisher=publisher)


def a_city() -> str:
    """A city of the test's own (a dealer added there serves this test only)."""
    return f"City {uuid.uuid4().hex[:10]}"


def consumer_of(type: EventType) -> str:
    """The one durable consumer of ``type``."""
    (name,) = [name for (_, consumed), name in CONSUMERS.items() if consumed == type]
    return name


async def eventually(
    probe: Callable[[], T | None],
    *,
    what: str,
    within: float = 15,
    between: Callable[[], Awaitable[Any]] | None = None,
) -> T:
    """Call ``probe`` (in a thread: it reads the database) until it returns a truthy value,
    and return that; fail naming ``what`` once ``within`` seconds have passed. ``between``
    runs between two probes (a sweeper's round, say); otherwise the poll waits 20 ms."""
    deadline = time.monotonic() + within
    while True:
        found = await asyncio.to_thread(probe)
        if found:
            return found
        assert time.monotonic() < deadline, f"never happened within {within} s: {what}"
        if between is not None:
            await between()
        await asyncio.sleep(0.02)


def _dump(row: SQLModel) -> dict[str, Any]:
    return row.model_dump()


def rows_of(engine: Engine, order_id: str) -> dict[str, Any]:
    """Every row that concerns the order, column by column (and every dealer): equal before
    and after something happened means it changed nothing."""
    with read_session(engine) as db:
        payment = db.exec(select(PaymentRow).where(PaymentRow.order_id == order_id)).first()
        refunds = (
            db.exec(select(RefundRow).where(RefundRow.payment_id == payment.id)).all()
            if payment is not None
            else []
        )
        by_order: dict[str, Any] = {
            "order": db.get(OrderRow, order_id),
            "payment": payment,
            "decision": db.exec(
                select(PaymentDecisionRow).where(PaymentDecisionRow.order_id == order_id)
            ).first(),
            "delivery": db.exec(
                select(DeliveryRow).where(DeliveryRow.order_id == order_id)
            ).first(),
        }
        lists: dict[str, Any] = {
            "refunds": refunds,
            "dealers": db.exec(select(DealerRow).order_by(col(DealerRow.id))).all(),
            "outbox": db.exec(
                select(OutboxRow).where(OutboxRow.order_id == order_id).order_by(col(OutboxRow.id))
            ).all(),
            "inbox": db.exec(
                select(InboxRow)
                .where(InboxRow.order_id == order_id)
                .order_by(col(InboxRow.consumer), col(InboxRow.event_id))
            ).all(),
            "dead_letters": db.exec(
                select(DeadLetterRow).where(DeadLetterRow.order_id == order_id)
            ).all(),
        }
    return {
        **{name: None if row is None else _dump(row) for name, row in by_order.items()},
        **{name: [_dump(row) for row in rows] for name, rows in lists.items()},
    }


def outbox(engine: Engine, order_id: str) -> list[OutboxRow]:
    """The order's outbox rows, in the order they were written."""
    with read_session(engine) as db:
        return list(
            db.exec(
                select(OutboxRow).where(OutboxRow.order_id == order_id).order_by(col(OutboxRow.id))
            ).all()
        )


def events(
    engine: Engine,
    order_id: str,
    *,
    type: EventType | None = None,
    source: Service | None = None,
) -> list[Event]:
    """The order's events in its outbox (of ``type``, from ``source``), in order."""
    return [
        Event.model_validate_json(row.body)
        for row in outbox(engine, order_id)
        if (type is None or row.type == type) and (source is None or row.source == source)
    ]


def types(found: list[Event]) -> list[EventType]:
    return [event.type for event in found]


def the_event(engine: Engine, order_id: str, type: EventType) -> Event:
    """The order's one event of ``type`` (fails if there is none, or more than one)."""
    found = events(engine, order_id, type=type)
    assert len(found) == 1, f"{len(found)} {type} events of order {order_id}"
    return found[0]


def inbox_row(engine: Engine, event: Event) -> InboxRow | None:
    """The inbox row of ``event``'s consumer for it (None: not applied)."""
    with read_session(engine) as db:
        return db.get(InboxRow, (consumer_of(event.type), event.event_id))


def row(engine: Engine, table: type[SQLModel], **where: Any) -> Any:
    """The one row of ``table`` matching ``where`` (None if there is none)."""
    columns: Any = table
    with read_session(engine) as db:
        statement = select(table).where(
            *(getattr(columns, name) == value for name, value in where.items())
        )
        return db.exec(statement).first()


def order_of(engine: Engine, order_id: str) -> OrderRow:
    found: OrderRow | None = row(engine, OrderRow, id=order_id)
    assert found is not None, f"order {order_id} is not written"
    return found


def payment_of(engine: Engine, order_id: str) -> PaymentRow | None:
    found: PaymentRow | None = row(engine, PaymentRow, order_id=order_id)
    return found


def delivery_of(engine: Engine, order_id: str) -> DeliveryRow | None:
    found: DeliveryRow | None = row(engine, DeliveryRow, order_id=order_id)
    return found


def decision_of(engine: Engine, order_id: str) -> str | None:
    found: PaymentDecisionRow | None = row(engine, PaymentDecisionRow, order_id=order_id)
    return None if found is None else found.decision


def refunds_of(engine: Engine, payment_id: str) -> list[RefundRow]:
    with read_session(engine) as db:
        return list(db.exec(select(RefundRow).where(RefundRow.payment_id == payment_id)).all())


def dealer_load(engine: Engine, dealer_id: int) -> int:
    found: DealerRow | None = row(engine, DealerRow, id=dealer_id)
    assert found is not None
    return found.active_deliveries


def unpublished(engine: Engine) -> int:
    """How many outbox rows are not published yet (all orders)."""
    with read_session(engine) as db:
        return len(db.exec(select(OutboxRow.id).where(col(OutboxRow.published_at).is_(None))).all())


def dead_letters(engine: Engine) -> list[DeadLetterRow]:
    with read_session(engine) as db:
        return list(db.exec(select(DeadLetterRow)).all())
