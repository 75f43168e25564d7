"""Deadlines without Temporal: each service's windows live in its own rows, and its sweeper
fires them.

- PaymentService: a PENDING payment past ``expires_at`` gets the decision TIMEOUT (the same
  compare-and-set as the customer's) and is cancelled: ``payment_expired``.
- DeliveryService: a delivery waiting for a dealer is tried again, with a growing delay, and
  cancelled past ``assign_by``: ``delivery_failed``.

Each due row is handled in its own transaction with the events it emits, by a guarded
update, so any number of sweepers fire a deadline once. A row that fails on its own is put off
with a growing delay, never holding back the rows after it. With tracing on, each firing runs
in a span of its order's trace, so the events it emits continue that trace.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session, select

from choreography.consumer import OUTAGES, Outcome
from choreography.handlers import apply_decision, try_assignment
from choreography.outbox import ROW_BACKOFF, Publisher
from domain import names
from domain.events import Event, EventType, Service
from domain.status import Decision, PaymentStatus, SagaStyle
from domain.timeouts import STEP_TRANSACTION_BUDGET
from services import deliveries, orders, payments
from store.db import read_session, session
from store.models import DeliveryRow, PaymentDecisionRow, PaymentRow, as_utc, utcnow

log = logging.getLogger("choreography.sweepers")
BATCH = 50

# What a sweeper does with one due row, and the table of the rows it sweeps.
Step = Callable[[Session, str], Outcome]
Owner = type[PaymentRow] | type[DeliveryRow]


class Sweepers:
    """Both services' sweepers, every ``interval``."""

    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        *,
        interval: timedelta = timedelta(milliseconds=250),
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._interval = interval
        # Rows that failed for a reason of their own: how often, and when to try each next.
        self._failures: dict[str, int] = {}
        self._put_off_until: dict[str, float] = {}
        self.failed_rows = 0

    async def run(self) -> None:
        """Until cancelled. A failed round (the database down) is tried again next round."""
        while True:
            try:
                await self.sweep()
            except Exception as err:
                log.warning("sweep failed, retrying: %s", err)
            await asyncio.sleep(self._interval.total_seconds())

    async def sweep(self) -> int:
        """One round of both sweepers; returns how many due rows it handled. An outage ends
        the round."""
        expired = await asyncio.to_thread(self._due_payments)
        waiting = await asyncio.to_thread(self._due_deliveries)
        handled = 0
        rounds: tuple[tuple[Step, Owner, list[str]], ...] = (
            (self.close_window, PaymentRow, expired),
            (self.try_dealer, DeliveryRow, waiting),
        )
        for step, owner, due in rounds:
            for row_id in due:
                if self._put_off_until.get(row_id, 0.0) > time.monotonic():
                    continue
                try:
                    await self._handle(step, owner, row_id)
                except OUTAGES:
                    raise
                except Exception as err:
                    self._put_off(row_id, err)
                else:
                    self._failures.pop(row_id, None)
                    self._put_off_until.pop(row_id, None)
                handled += 1
        return handled

    def _put_off(self, row_id: str, err: Exception) -> None:
        attempts = self._failures[row_id] = self._failures.get(row_id, 0) + 1
        delay = ROW_BACKOFF.delay(attempts)
        self._put_off_until[row_id] = time.monotonic() + delay.total_seconds()
        self.failed_rows += 1
        log.error(
            "sweeping %s failed (attempt %d), next try in %s: %s: %s",
            row_id,
            attempts,
            delay,
            type(err).__name__,
            err,
        )

    def _due_payments(self) -> list[str]:
        with session(self._engine) as db:
            limit = BATCH + len(self._put_off_until)  # rows put off do not crowd out the rest
            return payments.due_to_expire(db, utcnow(), SagaStyle.CHOREOGRAPHY, limit)

    def _due_deliveries(self) -> list[str]:
        with session(self._engine) as db:
            return deliveries.due_for_a_dealer(db, utcnow(), BATCH + len(self._put_off_until))

    async def _handle(self, step: Step, owner: Owner, row_id: str) -> None:
        """``step`` on one due row, in one transaction with the events it emits (with tracing
        on, in its order's trace)."""
        order_id = None
        if self._publisher.tracer is not None:
            order_id = await asyncio.to_thread(self._order_of, owner, row_id)
        async with self._publisher.in_order_trace(f"Sweep:{step.__name__}", order_id):
            await self._publisher.write(
                lambda db: (None, step(db, row_id).emitted), budget=STEP_TRANSACTION_BUDGET
            )

    def _order_of(self, owner: Owner, row_id: str) -> str | None:
        with read_session(self._engine) as db:
            return db.exec(select(owner.order_id).where(owner.id == row_id)).first()

    # --- PaymentService -----------------------------------------------------------------

    @staticmethod
    def close_window(db: Session, payment_id: str) -> Outcome:
        """The payment's window closed: TIMEOUT, unless a decision is on record already (then
        that one is applied: the customer decided in time)."""
        # The decision row, then the payment row: the lock order of a customer's decision, so
        # they wait rather than deadlock; a payment being cancelled is then seen cancelled.
        db.get(PaymentDecisionRow, payment_id, with_for_update=True)
        payment = db.get(PaymentRow, payment_id, with_for_update=True)
        if payment is None or payment.status != PaymentStatus.PENDING:
            return Outcome()
        taken = payments.take_decision(db, payment_id, Decision.TIMEOUT)
        if taken.winner is None:
            return Outcome()
        return apply_decision(db, payment.order_id, payment_id, taken.winner)

    # --- DeliveryService ----------------------------------------------------------------

    @staticmethod
    def try_dealer(db: Session, delivery_id: str) -> Outcome:
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
                db, order_id, names.choreographed_saga_id(order_id), only_before_pivot=True
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
        # Back off, but try once more as the window closes.
        backoff = orders.timeouts_of(db, order_id).dealer_retry.delay(delivery.assign_attempts + 2)
        deliveries.retry_later(db, delivery_id, min(now + backoff, assign_by))
        return Outcome(note="no dealer free yet")
