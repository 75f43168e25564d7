"""Deadlines without Temporal: each service's windows live in its own rows, and its sweeper
fires them.

- PaymentService: a PENDING payment whose window (``payments.expires_at``) has closed gets
  the decision TIMEOUT, by the same compare-and-set the customer's decision takes (exactly
  one of them wins), and is cancelled: ``payment_expired``.
- DeliveryService: a delivery waiting for a dealer (``deliveries.next_attempt_at``) is tried
  again, with a growing delay; when its window (``assign_by``) has closed it is cancelled:
  ``delivery_failed``.

Each due row is handled in its own transaction with the events it emits (the outbox), by a
guarded update: several sweepers at once, or one restarted after a crash, fire a deadline
once. Deadlines survive every restart, since they are rows.
"""

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from choreography.consumer import Outcome
from choreography.handlers import apply_decision, saga_id_of, try_assignment
from choreography.outbox import Publisher
from domain import names
from domain.events import Event, EventType, Service
from domain.payloads import SagaTimeouts
from domain.status import Decision, PaymentStatus, SagaStyle
from domain.timeouts import STEP_TRANSACTION_BUDGET
from services import deliveries, payments
from store.db import session
from store.models import DeliveryRow, PaymentRow, as_utc, utcnow

log = logging.getLogger("choreography.sweepers")
BATCH = 50


class Sweepers:
    """Both services' sweepers, every ``interval``."""

    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        timeouts: SagaTimeouts,
        *,
        interval: timedelta = timedelta(milliseconds=250),
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._timeouts = timeouts
        self._interval = interval

    async def run(self) -> None:
        """Until cancelled. A failed round (the database down) is tried again next round."""
        while True:
            try:
                await self.sweep()
            except Exception as err:
                log.warning("sweep failed, retrying: %s", err)
            await asyncio.sleep(self._interval.total_seconds())

    async def sweep(self) -> int:
        """One round of both sweepers; returns how many due rows it handled."""
        expired = await asyncio.to_thread(self._due_payments)
        waiting = await asyncio.to_thread(self._due_deliveries)
        for payment_id in expired:
            await self._handle(self.close_window, payment_id)
        for delivery_id in waiting:
            await self._handle(self.try_dealer, delivery_id)
        return len(expired) + len(waiting)

    def _due_payments(self) -> list[str]:
        with session(self._engine) as db:
            return payments.due_to_expire(db, utcnow(), SagaStyle.CHOREOGRAPHY, BATCH)

    def _due_deliveries(self) -> list[str]:
        with session(self._engine) as db:
            return deliveries.due_for_a_dealer(db, utcnow(), BATCH)

    async def _handle(self, step: Callable[[Session, str], Outcome], row_id: str) -> None:
        """``step`` on one due row, in one transaction with the events it emits."""
        await self._publisher.write(
            lambda db: (None, step(db, row_id).emitted), budget=STEP_TRANSACTION_BUDGET
        )

    # --- PaymentService -----------------------------------------------------------------

    @staticmethod
    def close_window(db: Session, payment_id: str) -> Outcome:
        """The payment's window closed: TIMEOUT, unless a decision is on record already (then
        that one is applied: the customer decided in time)."""
        # Locked first: a payment an order cancel is cancelling right now (which records no
        # decision) is seen cancelled, and gets no TIMEOUT.
        payment = db.get(PaymentRow, payment_id, with_for_update=True)
        if payment is None or payment.status != PaymentStatus.PENDING:
            return Outcome()
        taken = payments.take_decision(db, payment_id, Decision.TIMEOUT)
        if taken.winner is None:
            return Outcome()
        return apply_decision(db, payment.order_id, payment_id, taken.winner)

    # --- DeliveryService ----------------------------------------------------------------

    def try_dealer(self, db: Session, delivery_id: str) -> Outcome:
        """Another assignment attempt; once the window has closed, the delivery is cancelled
        (and the payment refunded next: ``delivery_failed``)."""
        delivery = db.get(DeliveryRow, delivery_id)
        if delivery is None or delivery.next_attempt_at is None:
            return Outcome()
        order_id = delivery.order_id
        outcome = try_assignment(db, delivery_id, order_id)
        if outcome.emitted:
            return outcome
        now = utcnow()
        assign_by = as_utc(delivery.assign_by) if delivery.assign_by else now
        if now >= assign_by:
            _, cancelled = deliveries.cancel_delivery(
                db, order_id, saga_id_of(order_id), only_before_pivot=True
            )
            if not cancelled:  # assigned or cancelled meanwhile: that stands
                return Outcome(note="the dealer window closed on a delivery no longer waiting")
            deliveries.stop_waiting(db, delivery_id)
            failed = Event(
                order_id=order_id,
                type=EventType.DELIVERY_FAILED,
                source=Service.DELIVERIES,
                reason=names.NO_DEALER_AVAILABLE,
            )
            return Outcome((failed,), "no dealer within the window: delivery cancelled")
        backoff = self._timeouts.dealer_retry_initial_interval * 2 ** min(
            delivery.assign_attempts + 1, 10
        )
        # Back off, but try once more as the window closes.
        deliveries.retry_later(db, delivery_id, min(now + backoff, assign_by))
        return Outcome(note="no dealer free yet")
