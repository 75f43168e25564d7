"""Retention (services/retention.py): what outlived its time is deleted, nothing else is.

On the real database: orders that ended long ago, ended just now, and still running, each
with its event log rows and its Idempotency-Key; one pass of the job deletes exactly the old
ended orders' published events, inbox rows, replayed dead letters and keys, and keeps every
business record, every unpublished event and every pending dead letter.
"""

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, func
from sqlmodel import col, select

from domain.events import Event, EventType, Service
from domain.status import OrderStatus
from services import orders
from services.retention import delete_expired
from settings import Settings
from store.db import session
from store.models import (
    DeadLetterRow,
    IdempotencyKeyRow,
    InboxRow,
    OrderRow,
    OutboxRow,
    utcnow,
)
from tests.saga_harness import order_request
from worker import delete_expired as delete_all_expired

pytestmark = pytest.mark.db

NOW = utcnow()
LONG_AGO = NOW - timedelta(days=40)
RETENTION = timedelta(days=30)


def an_order(engine: Engine, status: OrderStatus, ended_at: datetime) -> str:
    """An order in ``status`` last changed at ``ended_at``, with one event of each kind of
    row, all as old as that: published and unpublished, applied, dead-lettered (replayed and
    pending), and its Idempotency-Key."""
    order_id = str(uuid.uuid4())
    request = order_request()
    with session(engine) as db:
        orders.create_order(db, order_id, request, f"saga-{order_id}")
        db.flush()
        row = db.get(OrderRow, order_id)
        assert row is not None
        row.status, row.updated_at = status, ended_at
        for published in (ended_at, None):
            event = Event(order_id=order_id, type=EventType.ORDER_CREATED, source=Service.ORDERS)
            db.add(
                OutboxRow(
                    event_id=event.event_id,
                    message_id=event.event_id,
                    order_id=order_id,
                    type=event.type,
                    source=event.source,
                    body=event.model_dump_json(),
                    created_at=ended_at,
                    published_at=published,
                )
            )
            db.add(
                InboxRow(
                    consumer="payments-order_created",
                    event_id=event.event_id,
                    order_id=order_id,
                    type=event.type,
                    consumed_at=ended_at,
                )
            )
            db.add(
                DeadLetterRow(
                    consumer="orders-payment_confirmed",
                    event_id=event.event_id,
                    order_id=order_id,
                    type=event.type,
                    body=event.model_dump_json(),
                    error="boom",
                    deliveries=5,
                    failed_at=ended_at,
                    replayed_at=published,  # one replayed, one still pending
                )
            )
        db.add(
            IdempotencyKeyRow(
                customer_id=request.customer_id,
                key=f"key-{order_id}",
                fingerprint=request.fingerprint(),
                order_id=order_id,
                created_at=ended_at,
            )
        )
        db.commit()
    return order_id


def rows_of(engine: Engine, order_id: str) -> dict[str, int]:
    columns = {
        "orders": OrderRow.id,
        "outbox": OutboxRow.order_id,
        "inbox": InboxRow.order_id,
        "dead_letters": DeadLetterRow.order_id,
        "idempotency_keys": IdempotencyKeyRow.order_id,
    }
    with session(engine) as db:
        return {
            name: db.exec(select(func.count()).where(col(column) == order_id)).one()
            for name, column in columns.items()
        }


ALL = {"orders": 1, "outbox": 2, "inbox": 2, "dead_letters": 2, "idempotency_keys": 1}
# Past retention: the order, its unpublished event and its pending dead letter stay.
EXPIRED = {"orders": 1, "outbox": 1, "inbox": 0, "dead_letters": 1, "idempotency_keys": 0}


def test_only_what_outlived_its_retention_after_its_order_ended_is_deleted(
    engine: Engine,
) -> None:
    old_delivered = an_order(engine, OrderStatus.DELIVERED, LONG_AGO)
    old_cancelled = an_order(engine, OrderStatus.CANCELLED, LONG_AGO)
    recently_ended = an_order(engine, OrderStatus.DELIVERED, NOW - timedelta(days=1))
    # Still running after 40 days (say, waiting for its delivery): nothing of it goes.
    old_but_running = an_order(engine, OrderStatus.CONFIRMED, LONG_AGO)

    with session(engine) as db:
        deleted = delete_expired(db, NOW, event_log=RETENTION, idempotency_keys=RETENTION)
        db.commit()
    assert deleted == {"outbox": 2, "inbox": 4, "dead_letters": 2, "idempotency_keys": 2}
    assert rows_of(engine, old_delivered) == EXPIRED
    assert rows_of(engine, old_cancelled) == EXPIRED
    assert rows_of(engine, recently_ended) == ALL
    assert rows_of(engine, old_but_running) == ALL

    with session(engine) as db:  # nothing more to do
        assert (
            sum(delete_expired(db, NOW, event_log=RETENTION, idempotency_keys=RETENTION).values())
            == 0
        )


def test_kept_for_good_when_retention_is_unset(engine: Engine) -> None:
    order_id = an_order(engine, OrderStatus.DELIVERED, LONG_AGO)
    with session(engine) as db:
        assert delete_expired(db, NOW, event_log=None, idempotency_keys=None) == {}
        db.commit()
    assert rows_of(engine, order_id) == ALL


def test_the_worker_deletes_in_batches_until_nothing_is_left(engine: Engine) -> None:
    ended = [an_order(engine, OrderStatus.CANCELLED, LONG_AGO) for _ in range(3)]
    settings = Settings(event_log_retention_days=30, idempotency_key_retention_days=30)
    assert delete_all_expired(engine, settings) == 3 * (1 + 2 + 1 + 1)
    assert all(rows_of(engine, order_id) == EXPIRED for order_id in ended)
    assert delete_all_expired(engine, settings) == 0
    assert Settings(event_log_retention_days="").event_log_retention is None
