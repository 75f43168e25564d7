"""The transactional outbox: events written with the change they report, then published.

``emit`` adds an event to the caller's transaction; after the commit ``Publisher.publish``
sends it with ``Nats-Msg-Id`` = its message id and marks it, and the ``Relay`` publishes what
was left unpublished, row by row. Publishing twice is harmless (deduplication, inboxes).

With tracing on, a row keeps the W3C trace context of the transaction that wrote it and its
message carries it as the ``traceparent`` header, so the consumers continue the order's trace;
a customer's later call joins it through :meth:`Publisher.in_order_trace`.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import nats.errors
import nats.js.errors
from faststream.exceptions import IncorrectState
from faststream.nats import NatsBroker
from opentelemetry import trace
from sqlalchemy import Engine, update
from sqlmodel import Session, col, or_, select

import faults
from choreography.metrics import SagaCounters
from domain.backoff import Backoff
from domain.events import STREAM, Event, read_event
from store.db import read_session, session
from store.models import OutboxRow, utcnow
from telemetry import ORDER_ID_ATTRIBUTE, TRACEPARENT, context_of, current_traceparent

log = logging.getLogger("choreography.outbox")
T = TypeVar("T")

# The broker itself is down: no row is to blame, and the round stops.
BROKER_OUTAGES = (
    OSError,
    TimeoutError,
    IncorrectState,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.TimeoutError,
    nats.js.errors.ServiceUnavailableError,
)
# Between attempts of a row that fails to publish for a reason of its own.
ROW_BACKOFF = Backoff(initial=timedelta(seconds=1), maximum=timedelta(minutes=5))


@dataclass(frozen=True)
class Replay:
    """A dead letter's event sent again: the same event (every inbox still applies it at most
    once) under a message id of its own, which the broker does not drop as a duplicate."""

    event: Event
    dead_letter_id: str

    @property
    def message_id(self) -> str:
        return f"{self.event.event_id}:replay-{self.dead_letter_id}"


Outgoing = Event | Replay


def _message(outgoing: Outgoing) -> tuple[Event, str]:
    if isinstance(outgoing, Replay):
        return outgoing.event, outgoing.message_id
    return outgoing, outgoing.event_id


def emit(db: Session, outgoing: Outgoing) -> None:
    """Write ``outgoing`` in the caller's transaction (published once it commits), with the
    current span's trace context."""
    event, message_id = _message(outgoing)
    db.add(
        OutboxRow(
            event_id=event.event_id,
            message_id=message_id,
            order_id=event.order_id,
            type=event.type,
            source=event.source,
            body=event.model_dump_json(),
            traceparent=current_traceparent(),
        )
    )


def order_traceparent(db: Session, order_id: str) -> str | None:
    """The trace an order's saga runs in: that of its first event written with one."""
    return db.exec(
        select(OutboxRow.traceparent)
        .where(col(OutboxRow.order_id) == order_id, col(OutboxRow.traceparent).is_not(None))
        .order_by(col(OutboxRow.id))
        .limit(1)
    ).first()


@dataclass(frozen=True)
class _Pending:
    row_id: int
    message_id: str
    body: str
    attempts: int
    traceparent: str | None


class Publisher:
    """Publishes outbox events to JetStream and marks them published."""

    def __init__(
        self,
        engine: Engine,
        broker: NatsBroker,
        counters: SagaCounters | None = None,
        *,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._engine = engine
        self._broker = broker
        self._counters = counters
        # None: tracing off, and every tracing step here a no-op.
        self.tracer = tracer
        # Rows the relay could not publish for a reason of their own, since the start.
        self.failed_rows = 0

    async def publish(self, events: Sequence[Outgoing]) -> None:
        """Publish ``events`` (just committed) now; a failure leaves them to the relay."""
        if self._counters is not None:
            self._counters.committed(events)
        # Committed, not published: only the relay (after a restart) can publish them now.
        faults.point("outbox.after_commit")
        traceparent = current_traceparent()  # the context they were written in
        try:
            for outgoing in events:
                event, message_id = _message(outgoing)
                await self._send(event, message_id=message_id, traceparent=traceparent)
        except Exception as err:  # the broker is down or slow: the relay will publish them
            log.warning("publishing %d event(s) failed, left to the relay: %s", len(events), err)
            return
        faults.point("outbox.after_publish")  # published, not marked: a duplicate follows
        await asyncio.to_thread(self._mark, [_message(e)[1] for e in events])

    async def write(
        self,
        work: Callable[[Session], tuple[T, Sequence[Outgoing]]],
        *,
        budget: timedelta | None = None,
    ) -> T:
        """Run ``work`` in one transaction with the events it returns written to the outbox,
        then publish them (else the relay will). Returns ``work``'s result."""

        def in_transaction() -> tuple[T, Sequence[Outgoing]]:
            with session(self._engine, budget=budget) as db:
                result, emitted = work(db)
                for outgoing in emitted:
                    emit(db, outgoing)
                db.commit()
            return result, emitted

        result, emitted = await asyncio.to_thread(in_transaction)
        if emitted:
            await self.publish(emitted)
        return result

    @asynccontextmanager
    async def in_order_trace(self, name: str, order_id: str | None) -> AsyncIterator[None]:
        """Run the block in a span ``name`` of the order's trace, linked to the current span
        (a customer's or a dealer's request), so the events it writes continue the saga's
        trace. An order with no trace on record keeps the current one; a no-op when off."""
        if self.tracer is None or order_id is None:
            yield
            return
        order = context_of(await asyncio.to_thread(self._order_traceparent, order_id))
        if order is None:
            yield
            return
        caller = trace.get_current_span().get_span_context()
        with self.tracer.start_as_current_span(
            name,
            context=order,
            links=[trace.Link(caller)] if caller.is_valid else [],
            attributes={ORDER_ID_ATTRIBUTE: order_id},
        ):
            yield

    def _order_traceparent(self, order_id: str) -> str | None:
        with read_session(self._engine) as db:
            return order_traceparent(db, order_id)

    async def publish_pending(self, *, older_than: timedelta, limit: int = 200) -> int:
        """Publish rows committed more than ``older_than`` ago and still unpublished, in order,
        skipping those put off after a failure. Returns how many it published or put off."""
        rows = await asyncio.to_thread(self._pending, older_than, limit)
        published: list[str] = []
        failed: list[tuple[_Pending, Exception]] = []
        try:
            for row in rows:
                try:
                    event = read_event(row.body)
                    await self._send(event, message_id=row.message_id, traceparent=row.traceparent)
                except BROKER_OUTAGES:
                    raise
                except Exception as err:
                    failed.append((row, err))
                    continue
                published.append(row.message_id)
        finally:
            if published:
                faults.point("outbox.after_publish")
                await asyncio.to_thread(self._mark, published)
            if failed:
                await asyncio.to_thread(self._put_off, failed)
        return len(published) + len(failed)

    async def _send(
        self, event: Event, *, message_id: str | None = None, traceparent: str | None = None
    ) -> None:
        headers = {"Nats-Msg-Id": message_id or event.event_id, "content-type": "application/json"}
        if traceparent is not None:
            headers[TRACEPARENT] = traceparent
        await self._broker.publish(
            event.model_dump_json().encode(),
            event.type.subject,
            headers=headers,
            stream=STREAM,
            timeout=5,
        )

    def _pending(self, older_than: timedelta, limit: int) -> list[_Pending]:
        now = utcnow()
        with session(self._engine) as db:
            rows = db.exec(
                select(OutboxRow)
                .where(
                    col(OutboxRow.published_at).is_(None),
                    col(OutboxRow.created_at) <= now - older_than,
                    or_(
                        col(OutboxRow.next_attempt_at).is_(None),
                        col(OutboxRow.next_attempt_at) <= now,
                    ),
                )
                .order_by(col(OutboxRow.id))
                .limit(limit)
            ).all()
            return [
                _Pending(r.id or 0, r.message_id, r.body, r.attempts, r.traceparent) for r in rows
            ]

    def _mark(self, message_ids: list[str]) -> None:
        with session(self._engine) as db:
            db.exec(
                update(OutboxRow)
                .where(
                    col(OutboxRow.message_id).in_(message_ids),
                    col(OutboxRow.published_at).is_(None),
                )
                .values(published_at=utcnow())
            )
            db.commit()

    def _put_off(self, failed: list[tuple[_Pending, Exception]]) -> None:
        """Record each row's failure and when to try it next."""
        now = utcnow()
        with session(self._engine) as db:
            for row, err in failed:
                attempts = row.attempts + 1
                error = f"{type(err).__name__}: {err}"[:2000]
                log.error(
                    "outbox row %d (message %s) failed to publish (attempt %d): %s",
                    row.row_id,
                    row.message_id,
                    attempts,
                    error,
                )
                db.exec(
                    update(OutboxRow)
                    .where(col(OutboxRow.id) == row.row_id)
                    .values(
                        attempts=attempts,
                        next_attempt_at=now + ROW_BACKOFF.delay(attempts),
                        last_error=error,
                    )
                )
            db.commit()
        self.failed_rows += len(failed)


class Relay:
    """Publishes what the producers' own publishing left behind, every ``interval``."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        interval: timedelta = timedelta(seconds=1),
        grace: timedelta = timedelta(seconds=2),
    ) -> None:
        self._publisher = publisher
        self._interval = interval
        # A fresh event is its producer's to publish; the relay takes it after ``grace``.
        self._grace = grace

    async def run(self) -> None:
        """Until cancelled. A failed round (database or broker down) is retried next round."""
        while True:
            try:
                while await self._publisher.publish_pending(older_than=self._grace) > 0:
                    pass
            except Exception as err:
                log.warning("relay round failed, retrying: %s", err)
            await asyncio.sleep(self._interval.total_seconds())
