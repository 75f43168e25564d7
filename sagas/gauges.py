"""Gauges read from the rows and the broker, the same way for both saga styles: how many sagas
wait in each phase and for how long, the outbox's backlog, the dead letters, how late the
sweepers are, and each JetStream consumer's lag. Set on the process's SDK runtime meter
(telemetry.py serves them on ``/metrics`` beside the workflow's counters).
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from faststream.nats import NatsBroker
from sqlalchemy import Engine, func, or_
from sqlmodel import col, select
from temporalio.common import MetricMeter

from choreography.handlers import CONSUMERS
from domain.events import STREAM
from domain.status import (
    Decision,
    DeliveryStatus,
    OrderStatus,
    PaymentStatus,
    SagaPhase,
    SagaStyle,
)
from sagas.views import DECISION_FAILURES, progress
from store.db import read_session
from store.models import (
    DeadLetterRow,
    DeliveryRow,
    OrderRow,
    OutboxRow,
    PaymentDecisionRow,
    PaymentRow,
)

log = logging.getLogger("sagas.gauges")

# The phases a saga waits in; the others are where it ends.
OPEN_PHASES = (
    SagaPhase.CREATING,
    SagaPhase.AWAITING_PAYMENT,
    SagaPhase.ASSIGNING_DEALER,
    SagaPhase.IN_TRANSIT,
    SagaPhase.COMPENSATING,
)
# The gauges (docs/operations.md#metrics); the alert rules in monitoring/ read them by name.
METRIC_WAITING = "order_saga_waiting"  # style, phase
METRIC_WAITING_OLDEST = "order_saga_waiting_oldest_seconds"  # style, phase
METRIC_OUTBOX_BACKLOG = "order_saga_outbox_backlog"
METRIC_OUTBOX_OLDEST = "order_saga_outbox_oldest_seconds"
METRIC_DEAD_LETTERS = "order_saga_dead_letters"  # consumer, state: pending | replayed
METRIC_SWEEPER_OVERDUE = "order_saga_sweeper_overdue_seconds"  # sweeper
METRIC_CONSUMER_PENDING = "order_saga_consumer_pending"  # consumer
METRIC_CONSUMER_ACK_PENDING = "order_saga_consumer_ack_pending"  # consumer
METRIC_CONSUMER_REDELIVERED = "order_saga_consumer_redelivered"  # consumer


@dataclass
class Readings:
    """One look at the rows: every gauge's value, zeros included, so a phase that empties
    reads 0 instead of keeping its last value."""

    waiting: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest: dict[tuple[str, str], float] = field(default_factory=dict)
    outbox_backlog: int = 0
    outbox_oldest: float = 0.0
    dead_letters: dict[tuple[str, str], int] = field(default_factory=dict)
    sweeper_overdue: dict[str, float] = field(default_factory=dict)


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every row's is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _age(now: datetime, since: datetime | None) -> float:
    since = _aware(since)
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


def _entered(
    phase: SagaPhase,
    accepted: PaymentDecisionRow,
    payment: PaymentRow | None,
    delivery: DeliveryRow | None,
    rows: Sequence[datetime],
) -> datetime | None:
    """When the saga entered ``phase``: the write that started it (its rows change no more
    while it waits there)."""
    if phase == SagaPhase.CREATING:
        return accepted.created_at
    if phase == SagaPhase.AWAITING_PAYMENT and payment is not None:
        return payment.created_at
    if phase == SagaPhase.ASSIGNING_DEALER:
        if delivery is not None:
            return delivery.created_at
        return payment.updated_at if payment is not None else None
    if phase == SagaPhase.IN_TRANSIT and delivery is not None:
        return delivery.updated_at
    if phase == SagaPhase.COMPENSATING and accepted.decided_at is not None:
        decision = Decision(accepted.decision) if accepted.decision else None
        if decision in DECISION_FAILURES:
            return accepted.decided_at
    return max((moment.replace(tzinfo=moment.tzinfo or UTC) for moment in rows), default=None)


def read_rows(engine: Engine, now: datetime) -> Readings:
    """Every row gauge's value at ``now``, in one read transaction."""
    readings = Readings()
    for each in SagaStyle:
        for phase in OPEN_PHASES:
            readings.waiting[each.value, phase.value] = 0
            readings.oldest[each.value, phase.value] = 0.0
    with read_session(engine) as db:
        rows = db.exec(
            select(PaymentDecisionRow, OrderRow, PaymentRow, DeliveryRow)
            .join(OrderRow, col(OrderRow.id) == col(PaymentDecisionRow.order_id), isouter=True)
            .join(
                PaymentRow,
                col(PaymentRow.order_id) == col(PaymentDecisionRow.order_id),
                isouter=True,
            )
            .join(
                DeliveryRow,
                col(DeliveryRow.order_id) == col(PaymentDecisionRow.order_id),
                isouter=True,
            )
            .where(
                or_(
                    col(OrderRow.id).is_(None),
                    col(OrderRow.status).in_([OrderStatus.PENDING, OrderStatus.CONFIRMED]),
                    # Delivered, its delivery not yet: still in transit (views.progress).
                    (col(OrderRow.status) == OrderStatus.DELIVERED)
                    & (col(DeliveryRow.status) != DeliveryStatus.DELIVERED),
                )
            )
        ).all()
        for accepted, order, payment, delivery in rows:
            decision = Decision(accepted.decision) if accepted.decision else None
            phase, _ = progress(order, payment, decision, delivery)
            if phase not in OPEN_PHASES:
                continue
            style = order.saga_style if order is not None else SagaStyle.ORCHESTRATION.value
            key = (style, phase.value)
            updated = [row.updated_at for row in (order, payment, delivery) if row is not None]
            age = _age(now, _entered(phase, accepted, payment, delivery, updated))
            readings.waiting[key] = readings.waiting.get(key, 0) + 1
            readings.oldest[key] = max(readings.oldest.get(key, 0.0), age)

        backlog, oldest = db.exec(
            select(func.count(), func.min(OutboxRow.created_at)).where(
                col(OutboxRow.published_at).is_(None)
            )
        ).one()
        readings.outbox_backlog = backlog
        readings.outbox_oldest = _age(now, oldest)

        counts: dict[tuple[str, str], int] = defaultdict(int)
        for name in CONSUMERS.values():
            counts[name, "pending"] = 0
            counts[name, "replayed"] = 0
        dead = db.exec(
            select(
                DeadLetterRow.consumer, col(DeadLetterRow.replayed_at).is_(None), func.count()
            ).group_by(DeadLetterRow.consumer, col(DeadLetterRow.replayed_at).is_(None))
        ).all()
        for consumer, pending, count in dead:
            counts[consumer, "pending" if pending else "replayed"] += count
        readings.dead_letters = dict(counts)

        # A choreographed row past its deadline that its sweeper has not handled yet.
        payment_due = db.exec(
            select(func.min(PaymentRow.expires_at))
            .join(OrderRow, col(OrderRow.id) == col(PaymentRow.order_id))
            .where(
                col(PaymentRow.status) == PaymentStatus.PENDING,
                col(PaymentRow.expires_at) < now,
                col(OrderRow.saga_style) == SagaStyle.CHOREOGRAPHY,
            )
        ).one()
        dealer_due = db.exec(
            select(func.min(DeliveryRow.next_attempt_at)).where(
                col(DeliveryRow.status) == DeliveryStatus.PENDING,
                col(DeliveryRow.next_attempt_at) < now,
            )
        ).one()
        readings.sweeper_overdue = {
            "payment_window": _age(now, payment_due),
            "dealer_retry": _age(now, dealer_due),
        }
    return readings


@dataclass(frozen=True)
class ConsumerLag:
    """What JetStream says of one durable consumer."""

    pending: int  # in the stream, not yet delivered to it
    ack_pending: int  # delivered, not yet acknowledged
    redelivered: int  # delivered more than once, not yet acknowledged


async def consumer_lags(broker: NatsBroker) -> dict[str, ConsumerLag]:
    """Each choreography consumer's lag, from JetStream's consumer info; {} while the broker
    is not connected (the broker's `up` and the worker's tell that story)."""
    connection = getattr(broker, "_connection", None)
    if connection is None or not connection.is_connected:
        return {}
    js = connection.jetstream()
    lags = {}
    for name in CONSUMERS.values():
        info = await js.consumer_info(STREAM, name)
        lags[name] = ConsumerLag(
            pending=info.num_pending or 0,
            ack_pending=info.num_ack_pending or 0,
            redelivered=info.num_redelivered or 0,
        )
    return lags


class SagaGauges:
    """Reads the rows (``rows``) and, given a broker, JetStream every ``every`` seconds, and
    sets the gauges named in ``METRIC_*`` on ``meter``. One process per deployment reads the
    rows (the API); each process running the consumers reads their lag."""

    def __init__(
        self,
        engine: Engine,
        meter: MetricMeter,
        *,
        rows: bool = True,
        broker: NatsBroker | None = None,
        every: float = 15.0,
    ) -> None:
        self._engine = engine
        self._rows = rows
        self._broker = broker
        self._every = every
        self._waiting = meter.create_gauge(METRIC_WAITING, "Open sagas in each phase.", "1")
        self._oldest = meter.create_gauge_float(
            METRIC_WAITING_OLDEST, "Age of the oldest saga in each phase.", "s"
        )
        self._outbox_backlog = meter.create_gauge(
            METRIC_OUTBOX_BACKLOG, "Outbox rows not yet published.", "1"
        )
        self._outbox_oldest = meter.create_gauge_float(
            METRIC_OUTBOX_OLDEST, "Age of the oldest unpublished outbox row.", "s"
        )
        self._dead_letters = meter.create_gauge(
            METRIC_DEAD_LETTERS, "Dead-lettered events, pending or replayed.", "1"
        )
        self._sweeper_overdue = meter.create_gauge_float(
            METRIC_SWEEPER_OVERDUE, "How far past due the most overdue deadline is.", "s"
        )
        self._consumer_pending = meter.create_gauge(
            METRIC_CONSUMER_PENDING, "Events in the stream not yet delivered.", "1"
        )
        self._consumer_ack_pending = meter.create_gauge(
            METRIC_CONSUMER_ACK_PENDING, "Events delivered, not yet acknowledged.", "1"
        )
        self._consumer_redelivered = meter.create_gauge(
            METRIC_CONSUMER_REDELIVERED, "Events redelivered, not yet acknowledged.", "1"
        )

    async def run(self) -> None:
        """Collect until cancelled; a failed look (database or broker away) is logged and the
        next one tried: the gauges keep their last values meanwhile."""
        while True:
            try:
                await self.collect()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("saga gauges: this look failed, the next one is in %ss", self._every)
            await asyncio.sleep(self._every)

    async def collect(self) -> None:
        """One look: every gauge set from the rows now (and JetStream, given a broker)."""
        if self._rows:
            self._set_rows(await asyncio.to_thread(read_rows, self._engine, datetime.now(UTC)))
        if self._broker is not None:
            for consumer, lag in (await consumer_lags(self._broker)).items():
                self._consumer_pending.set(lag.pending, {"consumer": consumer})
                self._consumer_ack_pending.set(lag.ack_pending, {"consumer": consumer})
                self._consumer_redelivered.set(lag.redelivered, {"consumer": consumer})

    def _set_rows(self, readings: Readings) -> None:
        for (style, phase), count in readings.waiting.items():
            self._waiting.set(count, {"style": style, "phase": phase})
        for (style, phase), age in readings.oldest.items():
            self._oldest.set(age, {"style": style, "phase": phase})
        self._outbox_backlog.set(readings.outbox_backlog)
        self._outbox_oldest.set(readings.outbox_oldest)
        for (consumer, state), count in readings.dead_letters.items():
            self._dead_letters.set(count, {"consumer": consumer, "state": state})
        for sweeper, overdue in readings.sweeper_overdue.items():
            self._sweeper_overdue.set(overdue, {"sweeper": sweeper})
