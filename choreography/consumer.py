"""An idempotent consumer: each event applied once, in one transaction with its inbox row.

The event, its inbox row and the events it emits are written in one transaction, then the
event is acknowledged (a redelivery finds the inbox row) and the emitted events published.
An outage is retried for as long as it lasts; any other failure ``max_deliveries`` times, with
a growing delay, then kept as a dead letter for an operator: never dropped, never endless.
With tracing on, each delivery runs in a consumer span continuing the message's
``traceparent``: the effect and the events it emits belong to the order's trace.
"""

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from faststream.nats import NatsBroker, NatsMessage
from nats.errors import NotJSMessageError
from opentelemetry import trace
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlmodel import Session

import faults
from choreography.outbox import Publisher, emit
from domain.backoff import Backoff
from domain.events import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM, Event
from domain.timeouts import STEP_TRANSACTION_BUDGET
from store.db import TransactionBudgetExceededError, session
from store.models import DeadLetterRow, InboxRow
from telemetry import ORDER_ID_ATTRIBUTE, TRACEPARENT, context_of

log = logging.getLogger("choreography.consumer")


@dataclass(frozen=True)
class Outcome:
    """What a handler did with an event: the events it emits, and a note for the order's
    event log (what it changed, or why it changed nothing)."""

    emitted: tuple[Event, ...] = ()
    note: str | None = None


# A service's reaction to one event type: a function over the caller's transaction.
Handler = Callable[[Session, Event], Outcome]


def deliveries_of(message: NatsMessage) -> int:
    """How many times the broker has delivered ``message`` (1: the first time, also without
    JetStream metadata)."""
    try:
        return message.raw_message.metadata.num_delivered or 1
    except NotJSMessageError:
        return 1


# Failures of the infrastructure, not of the event: retried until the outage ends.
OUTAGES = (OperationalError, InterfaceError, PoolTimeoutError, TransactionBudgetExceededError)


# The wait before the next delivery of an event whose handler failed.
REDELIVERY = Backoff(initial=timedelta(seconds=0.5), maximum=timedelta(seconds=8))


class Consumer:
    """One durable consumer: (service, event type), named ``name``, applying ``handler``."""

    def __init__(
        self,
        name: str,
        handler: Handler,
        engine: Engine,
        broker: NatsBroker,
        publisher: Publisher,
        *,
        max_deliveries: int,
    ) -> None:
        self.name = name
        self._handler = handler
        self._engine = engine
        self._broker = broker
        self._publisher = publisher
        self._max_deliveries = max_deliveries

    async def __call__(self, event: Event, message: NatsMessage) -> None:
        with self._span(event, message) as span:
            await self._consume(event, message, span)

    @contextmanager
    def _span(self, event: Event, message: NatsMessage) -> Iterator[trace.Span]:
        """The delivery's consumer span, a child of the message's ``traceparent``; a
        non-recording span when tracing is off."""
        tracer = self._publisher.tracer
        if tracer is None:
            yield trace.INVALID_SPAN
            return
        with tracer.start_as_current_span(
            f"HandleEvent:{self.name}",
            context=context_of(message.headers.get(TRACEPARENT)),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": event.type.subject,
                "messaging.consumer.group.name": self.name,
                "messaging.message.id": event.event_id,
                ORDER_ID_ATTRIBUTE: event.order_id,
            },
        ) as span:
            yield span

    async def _consume(self, event: Event, message: NatsMessage, span: trace.Span) -> None:
        delivered = deliveries_of(message)
        try:
            emitted = await asyncio.to_thread(self._apply, event, delivered)
        except Exception as err:
            span.record_exception(err)
            span.set_status(trace.StatusCode.ERROR, f"{type(err).__name__}: {err}")
            if isinstance(err, OUTAGES) or delivered < self._max_deliveries:
                log.warning(
                    "%s: %s of order %s failed (delivery %d), retrying: %s",
                    self.name,
                    event.type,
                    event.order_id,
                    delivered,
                    err,
                )
                await message.nack(delay=REDELIVERY.delay(delivered).total_seconds())
                return
            await self._dead_letter(event, delivered, err)
            await message.ack()
            return
        faults.point("consumer.after_commit")  # applied, not acknowledged: redelivered
        await message.ack()
        if emitted:
            await self._publisher.publish(emitted)

    def _apply(self, event: Event, delivered: int) -> list[Event]:
        """Apply ``event`` once; [] for an event this consumer has applied before."""
        with session(self._engine, budget=STEP_TRANSACTION_BUDGET) as db:
            if db.get(InboxRow, (self.name, event.event_id)) is not None:
                return []
            outcome = self._handler(db, event)
            db.add(
                InboxRow(
                    consumer=self.name,
                    event_id=event.event_id,
                    order_id=event.order_id,
                    type=event.type,
                    deliveries=delivered,
                    note=outcome.note,
                )
            )
            for new in outcome.emitted:
                emit(db, new)
            try:
                db.commit()
            except IntegrityError:
                # The same event, applied by a concurrent delivery first: its effect stands.
                db.rollback()
                if db.get(InboxRow, (self.name, event.event_id)) is None:
                    raise
                return []
        return list(outcome.emitted)

    async def _dead_letter(self, event: Event, delivered: int, err: Exception) -> None:
        error = f"{type(err).__name__}: {err}"
        log.error(
            "%s: %s of order %s failed %d times: dead-lettered: %s",
            self.name,
            event.type,
            event.order_id,
            delivered,
            error,
        )

        def keep() -> None:
            with session(self._engine) as db:
                db.add(
                    DeadLetterRow(
                        consumer=self.name,
                        event_id=event.event_id,
                        order_id=event.order_id,
                        type=event.type,
                        body=event.model_dump_json(),
                        error=error[:2000],
                        deliveries=delivered,
                    )
                )
                db.commit()

        await asyncio.to_thread(keep)
        try:  # the row is the record; the subject lets a monitor subscribe to failures
            await self._broker.publish(
                event.model_dump_json().encode(),
                f"{DEAD_LETTER_PREFIX}.{self.name}",
                headers={"Nats-Msg-Id": f"{event.event_id}:{self.name}:dead"},
                stream=DEAD_LETTER_STREAM,
                timeout=5,
            )
        except Exception as publish_error:
            log.warning("dead letter of %s not published: %s", event.event_id, publish_error)
