"""How the choreographed saga starts and is steered: events between the services, on NATS
JetStream. Each call writes its change and its events in one transaction (the outbox), then
publishes them; every answer comes from the database, and nothing waits for a consumer.
With tracing on, a decision, a report or a cancel writes its events in the order's trace,
linked to the request's (``Publisher.in_order_trace``).
"""

import asyncio
import time
from typing import Any

from sqlalchemy import ColumnElement, Engine, select, update
from sqlmodel import Session, col

from choreography.handlers import apply_decision
from choreography.outbox import Publisher, Replay
from domain import names
from domain.events import Event, EventType, Service, read_event
from domain.status import Decision, PaymentStatus, SagaStyle
from domain.views import OrderView, ReplayFilter
from sagas import rules, views
from sagas.errors import ConflictError, NotFoundError
from sagas.rules import Acceptance, DecisionAccepted, NewOrder, Placement
from services import deliveries, orders, payments
from settings import Settings
from store.models import DeadLetterRow, DeliveryRow, PaymentRow, utcnow

# How often a waiting ``place`` reads the order back (``Prefer: wait``).
POLL = 0.02
# Dead letters a bulk replay marks and queues in one transaction (a few hundred outbox rows).
REPLAY_BATCH = 200


class ChoreographedSagas:
    """Choreographed orders: each step a service's transaction with the events it emits."""

    def __init__(self, engine: Engine, settings: Settings, publisher: Publisher) -> None:
        self._engine = engine
        self._settings = settings
        self._publisher = publisher

    async def place(self, order: NewOrder, *, wait: float) -> Placement:
        """Accept the order (:func:`sagas.rules.accept`), write it PENDING with the saga's
        windows and emit ``order_created``, in one transaction. ``wait`` > 0: read the
        order back until its payment exists, for up to that long. A replay answers its order
        and writes nothing."""
        order_id = order.order_id

        def accept(db: Session) -> tuple[Acceptance, list[Event]]:
            accepted = rules.accept(db, order)
            if accepted.replayed:
                return accepted, []
            orders.create_order(
                db,
                order_id,
                order.request,
                names.choreographed_saga_id(order_id),
                style=SagaStyle.CHOREOGRAPHY,
                timeouts=order.timeouts,
            )
            created = Event(order_id=order_id, type=EventType.ORDER_CREATED, source=Service.ORDERS)
            return accepted, [created]

        accepted = await self._publisher.write(accept)
        view = None
        if accepted.replayed:
            order_id = accepted.order_id
            view = await asyncio.to_thread(views.order_view, self._engine, self._settings, order_id)
        elif wait > 0:
            view = await self._payment_written(order_id, wait)
        return Placement(order_id, names.payment_id_for(order_id), view, accepted.replayed)

    async def _payment_written(self, order_id: str, wait: float) -> OrderView | None:
        """The order's view once PaymentService has written its payment; None if it has not
        within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            view = await asyncio.to_thread(views.order_view, self._engine, self._settings, order_id)
            if view is not None and view.payment is not None:
                return view
            await asyncio.sleep(POLL)
        return None

    async def decide_payment(
        self, payment_id: str, decision: Decision, *, order_id: str
    ) -> DecisionAccepted:
        """The customer's decision on ``order_id``'s payment, recorded by the compare-and-set
        and applied to the payment in the same transaction if it exists (else when
        PaymentService writes it)."""

        def decide(db: Session) -> tuple[payments.DecisionTaken, list[Event]]:
            # The decision row first (its compare-and-set), then the payment row: the lock
            # order of every transaction that takes both.
            taken = payments.take_decision(db, payment_id, decision)
            if not taken.applied or taken.order_id is None:
                return taken, []
            payment = db.get(PaymentRow, payment_id, with_for_update=True, populate_existing=True)
            if payment is None:
                return taken, []
            if payment.status != PaymentStatus.PENDING:
                # An order cancel undid the payment meanwhile: roll the decision back.
                raise ConflictError(
                    f"payment {payment_id} can no longer be decided: the payment is "
                    f"{payment.status}"
                )
            outcome = apply_decision(db, taken.order_id, payment_id, decision)
            return taken, list(outcome.emitted)

        async with self._publisher.in_order_trace("DecidePayment", order_id):
            taken = await self._publisher.write(decide)
        won = rules.won_for(taken, payment_id, decision)
        return DecisionAccepted(won, decision, replayed=not taken.applied)

    async def report_delivered(self, delivery_id: str, *, order_id: str) -> None:
        """The dealer's report on ``order_id``'s delivery: complete it and emit
        ``delivery_completed``, in one transaction. The same report again changes nothing."""

        def complete(db: Session) -> tuple[None, list[Event]]:
            delivery = db.get(DeliveryRow, delivery_id)
            if delivery is None:
                raise NotFoundError(f"delivery {delivery_id} does not exist")
            if not rules.to_report(delivery_id, delivery.status):
                return None, []
            order_id = delivery.order_id
            saga_id = names.choreographed_saga_id(order_id)
            _, changed = deliveries.complete_delivery(db, delivery_id, saga_id)
            if not changed:  # a concurrent report won: the same report, answered alike
                return None, []
            completed = Event(
                order_id=order_id,
                type=EventType.DELIVERY_COMPLETED,
                source=Service.DELIVERIES,
                dealer_id=delivery.dealer_id,
            )
            return None, [completed]

        async with self._publisher.in_order_trace("ReportDelivered", order_id):
            await self._publisher.write(complete)

    async def replay_dead_letter(self, dead_letter_id: str) -> None:
        """Send a dead-lettered event again: marked replayed and queued in the outbox in one
        transaction, with its event id kept (it still applies at most once).
        :class:`NotFoundError` if unknown; :class:`ConflictError` if replayed already."""

        def take(db: Session) -> tuple[None, list[Replay]]:
            row = db.get(DeadLetterRow, dead_letter_id)
            if row is None:
                raise NotFoundError(f"dead letter {dead_letter_id} does not exist")
            marked: Any = db.exec(
                update(DeadLetterRow)
                .where(
                    col(DeadLetterRow.id) == dead_letter_id,
                    col(DeadLetterRow.replayed_at).is_(None),
                )
                .values(replayed_at=utcnow())
            )
            if marked.rowcount != 1:
                raise ConflictError(f"dead letter {dead_letter_id} was replayed already")
            return None, [Replay(read_event(row.body), dead_letter_id)]

        await self._publisher.write(take)

    async def replay_dead_letters(self, chosen: ReplayFilter) -> int:
        """Replay every pending dead letter ``chosen`` matches, oldest first, as
        :meth:`replay_dead_letter` does each (marked and queued in one transaction, a batch at
        a time); returns how many this call queued. Racing calls queue each one once."""
        pending: list[ColumnElement[bool]] = [col(DeadLetterRow.replayed_at).is_(None)]
        if chosen.consumer is not None:
            pending.append(col(DeadLetterRow.consumer) == chosen.consumer)
        if chosen.type is not None:
            pending.append(col(DeadLetterRow.type) == chosen.type)
        if chosen.since is not None:
            pending.append(col(DeadLetterRow.failed_at) >= chosen.since)
        if chosen.until is not None:
            pending.append(col(DeadLetterRow.failed_at) < chosen.until)
        batch = (
            select(col(DeadLetterRow.id))
            .where(*pending)
            .order_by(col(DeadLetterRow.failed_at), col(DeadLetterRow.id))
            .limit(REPLAY_BATCH)
        )

        def take(db: Session) -> tuple[int, list[Replay]]:
            # RETURNING names the rows this transaction marked: a racing replay marks others.
            rows = (
                db.connection()
                .execute(
                    update(DeadLetterRow)
                    .where(col(DeadLetterRow.id).in_(batch.scalar_subquery()), *pending)
                    .values(replayed_at=utcnow())
                    .returning(
                        col(DeadLetterRow.id), col(DeadLetterRow.body), col(DeadLetterRow.failed_at)
                    )
                )
                .all()
            )
            marked = sorted(rows, key=lambda row: (row.failed_at, row.id))
            return len(marked), [Replay(read_event(row.body), row.id) for row in marked]

        queued = 0
        while True:
            taken = await self._publisher.write(take)
            queued += taken
            if taken < REPLAY_BATCH:
                return queued

    async def cancel(self, order_id: str) -> None:
        """Ask for the order's cancellation: recorded once, with ``order_cancel_requested``;
        DeliveryService decides (cancelled before the pivot, refused after it)."""

        def request(db: Session) -> tuple[None, list[Event]]:
            if not orders.request_cancel(db, order_id):
                raise ConflictError(f"order {order_id} can no longer be cancelled")
            requested = Event(
                order_id=order_id,
                type=EventType.ORDER_CANCEL_REQUESTED,
                source=Service.ORDERS,
                reason=names.CANCELLED_ON_REQUEST,
            )
            return None, [requested]

        async with self._publisher.in_order_trace("CancelOrder", order_id):
            await self._publisher.write(request)
