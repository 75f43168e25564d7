"""The transactional outbox: events written with the change they report, then published.

``emit`` adds an event to the caller's transaction. After the commit, ``Publisher.publish``
sends it to JetStream with ``Nats-Msg-Id`` = its event id and marks it published; the
``Relay`` publishes every event left unpublished (the process died between the commit and
the publish, or the broker was down). Publishing twice is harmless: JetStream drops a
message id it has seen within its deduplication window, and every consumer's inbox drops an
event it has applied.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TypeVar

from faststream.nats import NatsBroker
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

import faults
from domain.events import STREAM, Event
from store.db import session
from store.models import OutboxRow, utcnow

log = logging.getLogger("choreography.outbox")
T = TypeVar("T")


def emit(db: Session, event: Event) -> None:
    """Write ``event`` in the caller's transaction (published once it commits)."""
    db.add(
        OutboxRow(
            event_id=event.event_id,
            order_id=event.order_id,
            type=event.type,
            source=event.source,
            body=event.model_dump_json(),
        )
    )


class Publisher:
    """Publishes outbox events to JetStream and marks them published."""

    def __init__(self, engine: Engine, broker: NatsBroker) -> None:
        self._engine = engine
        self._broker = broker

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish ``events`` (just committed) now; a failure leaves them to the relay."""
        # Committed, not published: only the relay (after a restart) can publish them now.
        faults.point("outbox.after_commit")
        try:
            for event in events:
                await self._send(event)
        except Exception as err:  # the broker is down or slow: the relay will publish them
            log.warning("publishing %d event(s) failed, left to the relay: %s", len(events), err)
            return
        faults.point("outbox.after_publish")  # published, not marked: a duplicate follows
        await asyncio.to_thread(self._mark, [e.event_id for e in events])

    async def write(
        self,
        work: Callable[[Session], tuple[T, Sequence[Event]]],
        *,
        budget: timedelta | None = None,
    ) -> T:
        """Run ``work`` in one transaction (within ``budget``, if given) with the events it
        returns, written to the outbox; once committed, publish them (left to the relay if
        the broker does not take them now). Returns ``work``'s result."""

        def in_transaction() -> tuple[T, Sequence[Event]]:
            with session(self._engine, budget=budget) as db:
                result, emitted = work(db)
                for event in emitted:
                    emit(db, event)
                db.commit()
            return result, emitted

        result, emitted = await asyncio.to_thread(in_transaction)
        if emitted:
            await self.publish(emitted)
        return result

    async def replay(self, event: Event, tag: str) -> None:
        """Publish ``event`` again under a new message id (``tag``): the broker delivers it
        afresh, and its consumers' inboxes still apply it at most once."""
        await self._send(event, message_id=f"{event.event_id}:{tag}")

    async def publish_pending(self, *, older_than: timedelta, limit: int = 200) -> int:
        """Publish events committed more than ``older_than`` ago and still unpublished, in
        the order they were written. Returns how many were published."""
        events = await asyncio.to_thread(self._pending, older_than, limit)
        for event in events:
            await self._send(event)
        if events:
            faults.point("outbox.after_publish")
            await asyncio.to_thread(self._mark, [e.event_id for e in events])
        return len(events)

    async def _send(self, event: Event, *, message_id: str | None = None) -> None:
        await self._broker.publish(
            event.model_dump_json().encode(),
            event.type.subject,
            headers={
                "Nats-Msg-Id": message_id or event.event_id,
                "content-type": "application/json",
            },
            stream=STREAM,
            timeout=5,
        )

    def _pending(self, older_than: timedelta, limit: int) -> list[Event]:
        with session(self._engine) as db:
            rows = db.exec(
                select(OutboxRow)
                .where(
                    col(OutboxRow.published_at).is_(None),
                    col(OutboxRow.created_at) <= utcnow() - older_than,
                )
                .order_by(col(OutboxRow.id))
                .limit(limit)
            ).all()
            return [Event.model_validate_json(row.body) for row in rows]

    def _mark(self, event_ids: list[str]) -> None:
        with session(self._engine) as db:
            db.exec(
                update(OutboxRow)
                .where(
                    col(OutboxRow.event_id).in_(event_ids), col(OutboxRow.published_at).is_(None)
                )
                .values(published_at=utcnow())
            )
            db.commit()


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
