"""The read side: orders, payments, deliveries and dealers as the views show them, read from
the services' rows (sync: callers in an event loop run them in a thread)."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, bindparam, func
from sqlmodel import Session, col, or_, select

from choreography.handlers import CONSUMERS
from domain import names
from domain.events import read_event
from domain.names import workflow_id_for
from domain.payloads import from_cents
from domain.status import (
    Decision,
    DeliveryStatus,
    OrderStatus,
    PaymentStatus,
    SagaPhase,
    SagaStyle,
)
from domain.views import (
    Consumption,
    DeadLetterView,
    DealerView,
    DeliveryView,
    EventLogEntry,
    ItemView,
    OrderEvent,
    OrderSummary,
    OrderView,
    PaymentView,
    StuckOrder,
)
from settings import Settings
from store.db import read_session
from store.models import (
    DeadLetterRow,
    DealerRow,
    DeliveryRow,
    InboxRow,
    OrderItemRow,
    OrderRow,
    OutboxRow,
    PaymentDecisionRow,
    PaymentRow,
    as_utc,
    place_key,
)

# A delivery with its dealer, or delivered by it: the saga is past its pivot.
PAST_THE_PIVOT = (DeliveryStatus.IN_TRANSIT, DeliveryStatus.DELIVERED)
# The saga's failure that each recorded decision stands for.
DECISION_FAILURES = {
    Decision.CANCEL: names.PAYMENT_CANCELLED,
    Decision.TIMEOUT: names.PAYMENT_TIMED_OUT,
}


def progress(
    order: OrderRow | None,
    payment: PaymentRow | None,
    decision: Decision | None,
    delivery: DeliveryRow | None,
) -> tuple[SagaPhase, str | None]:
    """Where the saga of these rows is, and why it is cancelling (when known), from the rows
    alone: each step writes its rows before the saga moves on, so they never lag the saga."""
    if order is not None and order.status == OrderStatus.CANCELLED:
        return SagaPhase.CANCELLED, order.cancel_reason
    if order is None or payment is None:
        return SagaPhase.CREATING, None
    delivery_done = delivery is None or delivery.status == DeliveryStatus.DELIVERED
    if order.status == OrderStatus.DELIVERED and delivery_done:
        return SagaPhase.DELIVERED, None
    if delivery is not None and delivery.status in PAST_THE_PIVOT:
        # DELIVERED promises the order and its delivery both delivered: until then, in transit.
        return SagaPhase.IN_TRANSIT, None
    undone = (
        payment.status in (PaymentStatus.CANCELLED, PaymentStatus.REFUNDED)
        or (delivery is not None and delivery.status == DeliveryStatus.CANCELLED)
        or decision in DECISION_FAILURES
    )
    if undone:
        return SagaPhase.COMPENSATING, DECISION_FAILURES.get(decision) if decision else None
    if payment.status == PaymentStatus.PENDING:
        return SagaPhase.AWAITING_PAYMENT, None
    return SagaPhase.ASSIGNING_DEALER, None


def order_view(engine: Engine, settings: Settings, order_id: str) -> OrderView | None:
    """The order with its items, payment, delivery and saga phase (and a choreographed
    order's event log); None if it was never accepted."""
    with read_session(engine) as db:
        # An order is accepted (its decision opened) before its saga writes it.
        accepted = db.exec(
            select(PaymentDecisionRow).where(PaymentDecisionRow.order_id == order_id)
        ).first()
        if accepted is None:
            return None
        order = db.get(OrderRow, order_id)
        items = db.exec(
            select(OrderItemRow)
            .where(OrderItemRow.order_id == order_id)
            .order_by(col(OrderItemRow.id))
        ).all()
        payment = db.exec(select(PaymentRow).where(PaymentRow.order_id == order_id)).first()
        delivery = db.exec(select(DeliveryRow).where(DeliveryRow.order_id == order_id)).first()
        style = _accepted_style(order.saga_style if order else None)
        events = order_events(db, order_id) if style == SagaStyle.CHOREOGRAPHY else None
    decision = Decision(accepted.decision) if accepted.decision else None
    phase, failure = progress(order, payment, decision, delivery)
    view = OrderView(
        order_id=order_id,
        style=style,
        phase=phase,
        failure_type=failure,
        status=OrderStatus(order.status) if order else None,
        customer_id=accepted.customer_id,
        payment=PaymentView(
            payment_id=payment.id,
            status=PaymentStatus(payment.status),
            amount=from_cents(payment.amount_cents),
            decision=decision,
        )
        if payment
        else None,
        delivery=DeliveryView(
            delivery_id=delivery.id,
            status=DeliveryStatus(delivery.status),
            dealer_id=delivery.dealer_id,
        )
        if delivery
        else None,
        events=events,
    )
    if style == SagaStyle.ORCHESTRATION:
        view.workflow_id = workflow_id_for(order_id)
        view.workflow_url = settings.workflow_url(view.workflow_id)
    if order is not None:
        view.total_amount = from_cents(order.total_cents)
        view.province, view.city = order.province, order.city
        view.items = [
            ItemView(
                product_id=i.product_id,
                quantity=i.quantity,
                unit_price=from_cents(i.unit_price_cents),
            )
            for i in items
        ]
    return view


def _emitted(db: Session, order_id: str) -> list[OutboxRow]:
    """The order's events as written (a dead letter's replay is shown by its dead letter)."""
    rows = db.exec(
        select(OutboxRow).where(OutboxRow.order_id == order_id).order_by(col(OutboxRow.id))
    ).all()
    return [row for row in rows if row.message_id == row.event_id]


def order_events(db: Session, order_id: str) -> list[OrderEvent]:
    """What happened to a choreographed order, as its customer may see it."""
    events = [read_event(row.body) for row in _emitted(db, order_id)]
    return [OrderEvent(type=e.type, occurred_at=e.occurred_at, reason=e.reason) for e in events]


def event_log(engine: Engine, order_id: str) -> list[EventLogEntry]:
    """Every event of a choreographed order, as written, with who applied it and who could not."""
    with read_session(engine) as db:
        emitted = _emitted(db, order_id)
        consumed = db.exec(select(InboxRow).where(InboxRow.order_id == order_id)).all()
        dead = db.exec(select(DeadLetterRow).where(DeadLetterRow.order_id == order_id)).all()
    log = []
    for row in emitted:
        event = read_event(row.body)
        log.append(
            EventLogEntry(
                event_id=row.event_id,
                type=row.type,
                source=row.source,
                occurred_at=event.occurred_at,
                published_at=row.published_at,
                publish_attempts=row.attempts,
                publish_error=row.last_error,
                reason=event.reason,
                consumed=[
                    Consumption(
                        consumer=c.consumer,
                        consumed_at=c.consumed_at,
                        deliveries=c.deliveries,
                        note=c.note,
                    )
                    for c in consumed
                    if c.event_id == row.event_id
                ],
                dead_letters=[dead_letter_view(d) for d in dead if d.event_id == row.event_id],
            )
        )
    return log


def dead_letter_view(row: DeadLetterRow) -> DeadLetterView:
    assert row.id is not None
    return DeadLetterView(
        id=row.id,
        consumer=row.consumer,
        event_id=row.event_id,
        order_id=row.order_id,
        type=row.type,
        error=row.error,
        deliveries=row.deliveries,
        failed_at=row.failed_at,
        replayed_at=row.replayed_at,
    )


def dead_letters(engine: Engine, *, pending_only: bool, limit: int) -> list[DeadLetterView]:
    """Dead letters, newest first; ``pending_only``: those not replayed yet."""
    query = select(DeadLetterRow)
    if pending_only:
        query = query.where(col(DeadLetterRow.replayed_at).is_(None))
    with read_session(engine) as db:
        rows = db.exec(query.order_by(col(DeadLetterRow.failed_at).desc()).limit(limit)).all()
    return [dead_letter_view(r) for r in rows]


def style_of(engine: Engine, order_id: str) -> SagaStyle | None:
    """The style of the order; None for an order never accepted."""
    with read_session(engine) as db:
        order = db.get(OrderRow, order_id)
        if order is None:
            opened = select(PaymentDecisionRow.payment_id).where(
                PaymentDecisionRow.order_id == order_id
            )
            if db.exec(opened).first() is None:  # its decision opens when it is accepted
                return None
    return _accepted_style(order.saga_style if order is not None else None)


def _accepted_style(recorded: str | None) -> SagaStyle:
    """The style of an accepted order: its row's, or orchestration while it has no row (a
    choreographed order is written when accepted)."""
    return SagaStyle(recorded) if recorded is not None else SagaStyle.ORCHESTRATION


@dataclass(frozen=True)
class PaymentParty:
    """Whose payment it is and how its order's saga runs, as a decision needs it."""

    order_id: str
    customer_id: str
    style: SagaStyle


# A payment's decision row and its order's style: one statement, read by every decision.
_PARTY = (
    select(
        col(PaymentDecisionRow.order_id),
        col(PaymentDecisionRow.customer_id),
        col(OrderRow.saga_style),
    )
    .outerjoin(OrderRow, col(OrderRow.id) == col(PaymentDecisionRow.order_id))
    .where(col(PaymentDecisionRow.payment_id) == bindparam("payment_id"))
)


def payment_party(engine: Engine, payment_id: str) -> PaymentParty | None:
    """The order, customer and saga style of the payment, from the moment its order was
    accepted (its decision row); None if unknown."""
    with read_session(engine) as db:
        accepted = db.connection().execute(_PARTY, {"payment_id": payment_id}).first()
    if accepted is None:
        return None
    order_id, customer_id, style = accepted
    return PaymentParty(order_id, customer_id, _accepted_style(style))


def delivery_and_style(engine: Engine, delivery_id: str) -> tuple[DeliveryRow, SagaStyle] | None:
    """The delivery's row and its order's saga style, read at once; None if unknown."""
    with read_session(engine) as db:
        delivery = db.get(DeliveryRow, delivery_id)
        if delivery is None:
            return None
        order = db.get(OrderRow, delivery.order_id)  # a delivery's order is written
        assert order is not None
    return delivery, SagaStyle(order.saga_style)


def list_orders(
    engine: Engine,
    settings: Settings,
    *,
    status: OrderStatus | None,
    customer_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[OrderSummary], int]:
    """A page of orders, newest first, and the total matching the filters."""
    filters = []
    if status is not None:
        filters.append(col(OrderRow.status) == status)
    if customer_id is not None:
        filters.append(col(OrderRow.customer_id) == customer_id)
    with read_session(engine) as db:
        total = db.exec(select(func.count()).select_from(OrderRow).where(*filters)).one()
        rows = db.exec(
            select(OrderRow)
            .where(*filters)
            .order_by(col(OrderRow.created_at).desc(), col(OrderRow.id))
            .limit(limit)
            .offset(offset)
        ).all()
    return [
        OrderSummary(
            order_id=r.id,
            customer_id=r.customer_id,
            status=OrderStatus(r.status),
            total_amount=from_cents(r.total_cents),
            province=r.province,
            city=r.city,
            created_at=r.created_at,
            style=SagaStyle(r.saga_style),
            **_workflow_link(settings, r.id, SagaStyle(r.saga_style)),
        )
        for r in rows
    ], total


def _workflow_link(settings: Settings, order_id: str, style: SagaStyle) -> dict[str, str]:
    if style != SagaStyle.ORCHESTRATION:
        return {}
    workflow_id = workflow_id_for(order_id)
    return {"workflow_id": workflow_id, "workflow_url": settings.workflow_url(workflow_id)}


def customer_of(engine: Engine, order_id: str) -> str | None:
    """The customer who placed the order, from the moment it was accepted; None if
    unknown."""
    with read_session(engine) as db:
        return db.exec(
            select(PaymentDecisionRow.customer_id).where(
                col(PaymentDecisionRow.order_id) == order_id
            )
        ).first()


def dealer_view(row: DealerRow) -> DealerView:
    assert row.id is not None
    return DealerView(
        id=row.id,
        name=row.name,
        phone=row.phone,
        province=row.province,
        city=row.city,
        capacity=row.capacity,
        active_deliveries=row.active_deliveries,
    )


def list_dealers(
    engine: Engine, *, province: str | None, city: str | None, limit: int, offset: int
) -> list[DealerView]:
    """A page of dealers, optionally of one province and city (matched case-insensitively)."""
    filters = []
    if province is not None:
        filters.append(col(DealerRow.province_key) == place_key(province))
    if city is not None:
        filters.append(col(DealerRow.city_key) == place_key(city))
    with read_session(engine) as db:
        rows = db.exec(
            select(DealerRow)
            .where(*filters)
            .order_by(col(DealerRow.id))
            .limit(limit)
            .offset(offset)
        ).all()
    return [dealer_view(r) for r in rows]


def ping(engine: Engine) -> None:
    """A read of the orders table: the database answers and its schema is in place."""
    with read_session(engine) as db:
        db.exec(select(OrderRow.id).limit(1)).first()


# Past its window by this much, an order waits longer than it should (a sweeper or a timer
# fires within a second of a window's close).
WINDOW_GRACE = timedelta(minutes=1)
# A step, an event or a compensation not done in this long is stuck.
NO_PROGRESS = timedelta(minutes=10)
# A parcel with its dealer waits for a person's report: expected to take longer.
IN_TRANSIT_EXPECTED = timedelta(days=1)
UNFINISHED = (OrderStatus.PENDING, OrderStatus.CONFIRMED)


def stuck_orders(
    engine: Engine,
    settings: Settings,
    *,
    now: datetime,
    older_than: timedelta | None,
    limit: int,
    offset: int = 0,
) -> list[StuckOrder]:
    """Unfinished orders that wait longer than expected, longest first, with why as their
    rows tell it. ``older_than``: every unfinished order without progress for that long;
    None: past its window, or without progress for longer than its phase should take. A
    choreographed order with a pending dead letter is always listed. An orchestrated saga's
    why is the phase's wait here; the door asks Temporal for the rest."""
    with read_session(engine) as db:
        accepted = db.exec(
            select(PaymentDecisionRow, OrderRow, PaymentRow, DeliveryRow)
            .outerjoin(OrderRow, col(OrderRow.id) == col(PaymentDecisionRow.order_id))
            .outerjoin(PaymentRow, col(PaymentRow.order_id) == col(PaymentDecisionRow.order_id))
            .outerjoin(DeliveryRow, col(DeliveryRow.order_id) == col(PaymentDecisionRow.order_id))
            .where(or_(col(OrderRow.id).is_(None), col(OrderRow.status).in_(UNFINISHED)))
        ).all()
        dead: dict[str, list[DeadLetterRow]] = defaultdict(list)
        for letter in db.exec(
            select(DeadLetterRow)
            .where(col(DeadLetterRow.replayed_at).is_(None))
            .order_by(col(DeadLetterRow.failed_at))
        ).all():
            dead[letter.order_id].append(letter)
        waiting = []
        for decision, order, payment, delivery in accepted:
            since = _last_progress(decision, order, payment, delivery)
            taken = Decision(decision.decision) if decision.decision else None
            phase, _ = progress(order, payment, taken, delivery)
            if decision.order_id in dead or _waits_too_long(
                phase, since, payment, delivery, now=now, older_than=older_than
            ):
                waiting.append((since, phase, decision.order_id, order, payment, delivery))
        # Why, for the page asked for only: a choreographed order's costs two reads.
        waiting.sort(key=lambda found: (found[0], found[2]))
        page = []
        for since, phase, order_id, order, payment, delivery in waiting[offset : offset + limit]:
            style = _accepted_style(order.saga_style if order else None)
            entry = StuckOrder(
                order_id=order_id,
                style=style,
                phase=phase,
                since=since,
                **_phase_wait(phase, style, payment, delivery, now),
            )
            if style == SagaStyle.ORCHESTRATION:
                entry.workflow_id = workflow_id_for(order_id)
                entry.workflow_url = settings.workflow_url(entry.workflow_id)
            elif order_id in dead:
                _dead_letter_wait(entry, dead[order_id][0])
            else:
                _event_wait(db, entry)
            page.append(entry)
    return page


def _last_progress(
    decision: PaymentDecisionRow,
    order: OrderRow | None,
    payment: PaymentRow | None,
    delivery: DeliveryRow | None,
) -> datetime:
    """When the order's rows last changed: each step of either style writes one of them."""
    times = [decision.created_at, decision.decided_at]
    times += [row.updated_at for row in (order, payment, delivery) if row is not None]
    return max(as_utc(t) for t in times if t is not None)


def _waits_too_long(
    phase: SagaPhase,
    since: datetime,
    payment: PaymentRow | None,
    delivery: DeliveryRow | None,
    *,
    now: datetime,
    older_than: timedelta | None,
) -> bool:
    if older_than is not None:
        return now - since >= older_than
    if phase == SagaPhase.AWAITING_PAYMENT and payment is not None and payment.expires_at:
        # The customer has until the window closes: only its close left unacted is stuck.
        return now - as_utc(payment.expires_at) >= WINDOW_GRACE
    dealer_window = delivery.assign_by if delivery is not None else None
    past_dealer_window = dealer_window is not None and now - as_utc(dealer_window) >= WINDOW_GRACE
    if phase == SagaPhase.ASSIGNING_DEALER and past_dealer_window:
        return True
    expected = IN_TRANSIT_EXPECTED if phase == SagaPhase.IN_TRANSIT else NO_PROGRESS
    return now - since >= expected


def _phase_wait(
    phase: SagaPhase,
    style: SagaStyle,
    payment: PaymentRow | None,
    delivery: DeliveryRow | None,
    now: datetime,
) -> dict[str, str]:
    """What a saga in ``phase`` waits for, as its rows tell it."""
    orchestrated = style == SagaStyle.ORCHESTRATION
    if phase == SagaPhase.AWAITING_PAYMENT and payment is not None:
        closes = as_utc(payment.expires_at) if payment.expires_at else None
        if closes is not None and closes <= now:
            closer = "its workflow's timer" if orchestrated else "the payments sweeper"
            return {
                "waiting_for": "the payment window's close",
                "why": f"the payment window closed at {closes.isoformat()}, and {closer} has "
                "not expired the payment yet: is the worker running?",
            }
        return {
            "waiting_for": (
                f"signal {names.SIGNAL_CONFIRM_PAYMENT} or {names.SIGNAL_CANCEL_PAYMENT}"
                if orchestrated
                else "the customer's decision"
            ),
            "why": f"waiting for the customer to confirm or cancel payment {payment.id}"
            + (f" until {closes.isoformat()}" if closes else ""),
        }
    if phase == SagaPhase.ASSIGNING_DEALER and delivery is not None:
        where = f"{delivery.city}, {delivery.province}"
        if orchestrated:
            return {
                "waiting_for": f"the next {names.ASSIGN_DEALER} attempt",
                "why": f"no dealer with free capacity in {where} yet; the saga tries again "
                "until its dealer window closes",
            }
        window = f" until {as_utc(delivery.assign_by).isoformat()}" if delivery.assign_by else ""
        next_try = (
            f", next at {as_utc(delivery.next_attempt_at).isoformat()}"
            if delivery.next_attempt_at
            else ""
        )
        return {
            "waiting_for": "a free dealer",
            "why": f"no dealer with free capacity in {where} after "
            f"{delivery.assign_attempts} attempt(s){next_try}; the deliveries sweeper tries "
            f"again{window}",
        }
    if phase == SagaPhase.IN_TRANSIT and delivery is not None:
        return {
            "waiting_for": f"signal {names.SIGNAL_MARK_DELIVERED}"
            if orchestrated
            else "the dealer's report",
            "why": f"in transit with dealer {delivery.dealer_id}: waiting for the report "
            f"POST /deliveries/{delivery.id}/delivered",
        }
    return {"waiting_for": "the saga's next step", "why": f"the saga is {phase}"}


def _dead_letter_wait(entry: StuckOrder, letter: DeadLetterRow) -> None:
    assert letter.id is not None
    entry.waiting_for = f"the replay of dead letter {letter.id}"
    entry.why = (
        f"{letter.consumer} could not apply {letter.type} on any of its {letter.deliveries} "
        "deliveries: fix the cause, then replay it"
    )
    entry.error, entry.attempts = letter.error, letter.deliveries
    entry.consumer, entry.dead_letter_id = letter.consumer, letter.id


def _event_wait(db: Session, entry: StuckOrder) -> None:
    """An event of the order not yet published, or not yet applied by a consumer of its
    type, if any: what the choreographed saga waits for then."""
    emitted = _emitted(db, entry.order_id)
    applied = {
        (row.consumer, row.event_id)
        for row in db.exec(select(InboxRow).where(InboxRow.order_id == entry.order_id)).all()
    }
    for row in emitted:
        if row.published_at is None:
            entry.waiting_for = f"the publishing of {row.type}"
            entry.why = (
                f"{row.type} is in the outbox, not published yet: the relay publishes it "
                "once the broker takes it"
            )
            entry.error, entry.attempts = row.last_error, row.attempts
            return
        for (_, kind), consumer in CONSUMERS.items():
            if kind == row.type and (consumer, row.event_id) not in applied:
                entry.waiting_for = f"{consumer} to apply {row.type}"
                entry.why = (
                    f"{row.type} was published at {as_utc(row.published_at).isoformat()}; "
                    f"{consumer} has not applied it: is its consumer running?"
                )
                entry.consumer = consumer
                return
