"""The invariants a chaos run must leave intact: in SQL for both saga styles, in Temporal
for the orchestrated saga, in the outbox, the inboxes, the dead letters and the broker for
the choreographed one."""

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Collection
from typing import Any

import nats
from nats.js.errors import NotFoundError
from sqlalchemy import Engine, func
from sqlmodel import col, select
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory

from choreography.handlers import CONSUMERS
from domain import names
from domain.events import STREAM, EventType
from domain.payloads import SagaState
from store.db import session
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
    RefundRow,
)
from tools.chaos.customers import Saga
from worker import replay_failures_at_every_task

# What the saga's failure must be once each payment decision has won (None: no failure of
# the payment; a confirmed order may still be cancelled for want of a dealer).
DECIDED_FAILURE = {"CANCEL": "PaymentCancelled", "TIMEOUT": "PaymentTimedOut"}
MONEY_TAKEN = ("COMPLETED", "REFUNDED")

# The events an order may emit more than once: a customer may ask for a cancel again after
# one was refused (the parcel was on its way). Every other event reports a step, taken once.
REPEATABLE = {EventType.ORDER_CANCEL_REQUESTED, EventType.ORDER_CANCEL_REFUSED}
# Who consumes each event type: its durable consumers' names.
CONSUMERS_OF: dict[str, list[str]] = {
    type: [name for (_, consumed), name in CONSUMERS.items() if consumed == type]
    for type in EventType
}

BAD_RUN_STATUSES = {
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
    WorkflowExecutionStatus.CONTINUED_AS_NEW,
}


def check_database(engine: Engine) -> list[str]:
    """Every order consistent with its payment, delivery, refunds and its payment's one
    decision; dealers' load exact."""
    violations: list[str] = []
    with session(engine) as db:
        orders = db.exec(select(OrderRow)).all()
        items: dict[str, int] = defaultdict(int)
        for item in db.exec(select(OrderItemRow)).all():
            items[item.order_id] += item.quantity * item.unit_price_cents
        payments: dict[str, list[PaymentRow]] = defaultdict(list)
        for p in db.exec(select(PaymentRow)).all():
            payments[p.order_id].append(p)
        deliveries: dict[str, list[DeliveryRow]] = defaultdict(list)
        for d in db.exec(select(DeliveryRow)).all():
            deliveries[d.order_id].append(d)
        refunds = Counter(r.payment_id for r in db.exec(select(RefundRow)).all())
        dealers = db.exec(select(DealerRow)).all()
        decisions = {d.order_id: d for d in db.exec(select(PaymentDecisionRow)).all()}

    for order in orders:
        oid, pays, dels = order.id, payments[order.id], deliveries[order.id]
        if len(pays) > 1 or len(dels) > 1:
            violations.append(f"{oid}: {len(pays)} payments, {len(dels)} deliveries")
            continue
        if items[oid] != order.total_cents:
            violations.append(f"{oid}: total {order.total_cents} != items {items[oid]}")
        pay = pays[0] if pays else None
        dlv = dels[0] if dels else None
        if pay is not None and pay.amount_cents != order.total_cents:
            violations.append(f"{oid}: payment amount {pay.amount_cents} != {order.total_cents}")
        if pay is not None and refunds[pay.id] != (1 if pay.status == "REFUNDED" else 0):
            violations.append(f"{oid}: payment {pay.status} with {refunds[pay.id]} refunds")
        if order.status in ("CONFIRMED", "DELIVERED"):
            want = "IN_TRANSIT" if order.status == "CONFIRMED" else "DELIVERED"
            if pay is None or pay.status != "COMPLETED":
                violations.append(f"{oid}: {order.status} but payment {pay and pay.status}")
            if dlv is None or dlv.status != want or dlv.dealer_id is None:
                violations.append(f"{oid}: {order.status} but delivery {dlv and dlv.status}")
        elif order.status == "CANCELLED":
            if pay is not None and pay.status not in ("CANCELLED", "REFUNDED"):
                violations.append(f"{oid}: CANCELLED but payment {pay.status}")
            if dlv is not None and dlv.status != "CANCELLED":
                violations.append(f"{oid}: CANCELLED but delivery {dlv.status}")
        else:
            violations.append(f"{oid}: left {order.status} (payment {pay and pay.status})")
        violations += _check_decision(order, pay, decisions.get(oid))

    in_transit = Counter(
        d.dealer_id for ds in deliveries.values() for d in ds if d.status == "IN_TRANSIT"
    )
    for dealer in dealers:
        if dealer.active_deliveries != in_transit[dealer.id]:
            violations.append(
                f"dealer {dealer.id}: load {dealer.active_deliveries} but "
                f"{in_transit[dealer.id]} parcels in transit"
            )
    return violations


def _check_decision(
    order: OrderRow, pay: PaymentRow | None, decided: PaymentDecisionRow | None
) -> list[str]:
    """Exactly one decision per payment, and the money and the order follow it: only a
    confirmed payment is ever taken; a cancelled or expired one cancels its order, for that
    reason."""
    oid = order.id
    if decided is None:
        return [f"{oid}: no payment decision opened (every accepted order has one)"]
    if pay is not None and decided.payment_id != pay.id:
        return [f"{oid}: decision of payment {decided.payment_id}, but payment {pay.id}"]
    violations = []
    if pay is not None and pay.status in MONEY_TAKEN and decided.decision != "CONFIRM":
        violations.append(f"{oid}: payment {pay.status} but decision {decided.decision}")
    if decided.decision in DECIDED_FAILURE:
        reason = DECIDED_FAILURE[decided.decision]
        if (order.status, order.cancel_reason) != ("CANCELLED", reason):
            violations.append(
                f"{oid}: decision {decided.decision} but order {order.status} "
                f"({order.cancel_reason}), not CANCELLED ({reason})"
            )
    return violations


def check_intent(sagas: list[Saga], orders_in_db: set[str]) -> list[str]:
    """What the API accepted took effect: nothing a client was told 'yes' to was lost."""
    violations: list[str] = []
    for saga in sagas:
        where = f"saga {saga.index} ({saga.scenario}, order {saga.order_id})"
        violations += [f"{where}: {p}" for p in saga.problems]
        if "order" in saga.accepted and saga.order_id not in orders_in_db:
            violations.append(f"{where}: accepted order missing from the database")
        if saga.final is None:
            if "order" in saga.accepted and not saga.problems:
                violations.append(f"{where}: never settled")
            continue
        final = saga.final
        phase, failure = final["phase"], final["failure_type"]
        decision = (final["payment"] or {}).get("decision")
        if "confirm" in saga.accepted and failure in ("PaymentTimedOut", "PaymentCancelled"):
            violations.append(f"{where}: confirm accepted but the saga ended {failure}")
        for asked in ("confirm", "cancel"):
            if asked in saga.accepted and decision != asked.upper():
                violations.append(f"{where}: {asked} accepted but the decision is {decision}")
        for asked, winner in saga.refused:
            # The refusal named the decision that won: it is the one on record, and the
            # saga ended as that decision says.
            if decision != winner:
                violations.append(f"{where}: {asked} refused for {winner}, but {decision} won")
            if failure != DECIDED_FAILURE.get(winner, failure):
                violations.append(f"{where}: {asked} refused for {winner}, but saga {failure}")
        if "cancel" in saga.accepted and (phase, failure) != ("CANCELLED", "PaymentCancelled"):
            violations.append(f"{where}: cancel accepted but the saga ended {phase}/{failure}")
        if "cancel_order" in saga.accepted and phase != "CANCELLED":
            violations.append(f"{where}: order cancel accepted but the saga ended {phase}")
        if "delivered" in saga.accepted and phase != "DELIVERED":
            violations.append(f"{where}: delivery report accepted but the saga ended {phase}")
    return violations


async def check_temporal(
    client: Client, sagas: list[Saga], step_queues: Collection[str]
) -> tuple[list[str], Counter[str]]:
    """No run failed or was terminated; running ones legitimately wait; histories replay;
    every step was scheduled on one of ``step_queues`` (the run's routing)."""
    violations: list[str] = []
    statuses: Counter[str] = Counter()
    for saga in sagas:
        if saga.order_id is None:
            continue
        handle = client.get_workflow_handle(names.workflow_id_for(saga.order_id))
        described = await handle.describe()
        status = described.status
        statuses[status.name if status else "?"] += 1
        if status in BAD_RUN_STATUSES:
            violations.append(f"workflow {handle.id} is {status.name}")
        if status == WorkflowExecutionStatus.RUNNING:
            state = await handle.query(names.QUERY_STATE, result_type=SagaState)
            if state.phase != "IN_TRANSIT" or saga.scenario != "confirm_keep":
                violations.append(f"workflow {handle.id} still running in {state.phase}")
        # Open or closed, the saga must replay at every workflow task: what a worker
        # rebuilding it at that moment (crash, eviction, query) would replay.
        history = await handle.fetch_history()
        for failure in await replay_failures_at_every_task(history, client.data_converter):
            violations.append(f"workflow {handle.id} does not replay at {failure}")
        for step, queue in steps_scheduled(history):
            if queue not in step_queues:
                violations.append(f"workflow {handle.id} scheduled {step} on task queue {queue}")
    return violations, statuses


def steps_scheduled(history: WorkflowHistory) -> list[tuple[str, str]]:
    """Each step the saga of ``history`` scheduled, in order: its name and task queue."""
    scheduled = [
        event.activity_task_scheduled_event_attributes
        for event in history.events
        if event.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    return [(step.activity_type.name, step.task_queue.name) for step in scheduled]


def check_style(engine: Engine, style: str) -> list[str]:
    """Every order of the run was placed in the run's saga style."""
    with session(engine) as db:
        others = db.exec(select(OrderRow.id, OrderRow.saga_style)).all()
    return [f"{oid}: placed as {got}, not {style}" for oid, got in others if got != style]


async def wait_until_events_settle(engine: Engine, nats_url: str, within: float) -> None:
    """Give the relay and the consumers up to ``within`` seconds to finish what the last
    sagas left in flight (events emitted at a saga's end, redeliveries), so the checks
    judge the outcome, not a snapshot of work still going on."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        unpublished = await asyncio.to_thread(_unpublished, engine)
        if not unpublished and not await check_consumers(nats_url):
            return
        await asyncio.sleep(0.5)


def _unpublished(engine: Engine) -> int:
    with session(engine) as db:
        query = select(func.count()).where(col(OutboxRow.published_at).is_(None))
        return int(db.exec(query).one())


def check_events(engine: Engine) -> list[str]:
    """The choreographed saga's own records: every event published; applied by each of its
    consumers, once; each step's event emitted once per order; no dead letter left."""
    with session(engine) as db:
        outbox = db.exec(select(OutboxRow).order_by(col(OutboxRow.id))).all()
        inbox = db.exec(select(InboxRow)).all()
        dead = db.exec(select(DeadLetterRow)).all()
    applied = Counter((row.consumer, row.event_id) for row in inbox)
    dead_letters = {(row.consumer, row.event_id) for row in dead}
    violations = [
        f"inbox of {consumer}: event {event_id} recorded {n} times"
        for (consumer, event_id), n in applied.items()
        if n > 1
    ]
    emitted: Counter[tuple[str, str]] = Counter()
    for row in outbox:
        where = f"{row.order_id}: {row.type} {row.event_id}"
        emitted[row.order_id, row.type] += 1
        if row.published_at is None:
            violations.append(f"{where} never published")
        for consumer in CONSUMERS_OF[row.type]:
            if (consumer, row.event_id) not in applied and (
                consumer,
                row.event_id,
            ) not in dead_letters:
                violations.append(f"{where} never applied by {consumer}")
    violations += [
        f"{order_id}: {type} emitted {n} times"
        for (order_id, type), n in emitted.items()
        if n > 1 and type not in REPEATABLE
    ]
    violations += [
        f"{row.order_id}: dead letter (waits for a person): {row.consumer} could not apply "
        f"{row.type} {row.event_id} in {row.deliveries} deliveries: {row.error}"
        for row in dead
    ]
    return violations


def event_summary(engine: Engine) -> str:
    """How much event traffic the run had: emitted, applied, redelivered, dead-lettered."""
    with session(engine) as db:
        emitted = db.exec(select(func.count()).select_from(OutboxRow)).one()
        applied = db.exec(select(func.count()).select_from(InboxRow)).one()
        redelivered = db.exec(
            select(func.count()).select_from(InboxRow).where(col(InboxRow.deliveries) > 1)
        ).one()
        dead = db.exec(select(func.count()).select_from(DeadLetterRow)).one()
    return (
        f"events: {emitted} emitted, {applied} applied ({redelivered} after a redelivery), "
        f"{dead} dead letters"
    )


async def check_consumers(nats_url: str) -> list[str]:
    """Every durable consumer exists and has nothing left: no event pending, none delivered
    and not yet acknowledged."""
    connection = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        jetstream = connection.jetstream()
        violations = []
        for name in CONSUMERS.values():
            try:
                info = await jetstream.consumer_info(STREAM, name)
            except NotFoundError:
                violations.append(f"consumer {name} does not exist on {STREAM}")
                continue
            if info.num_pending or info.num_ack_pending:
                violations.append(
                    f"consumer {name}: {info.num_pending} events pending, "
                    f"{info.num_ack_pending} unacknowledged"
                )
        return violations
    finally:
        await connection.close()


def outcome_table(sagas: list[Saga]) -> str:
    """Scenario by final outcome, as a readable table."""
    rows: dict[str, Counter[str]] = defaultdict(Counter)
    for saga in sagas:
        final: dict[str, Any] = saga.final or {}
        outcome = f"{final.get('phase', 'UNSETTLED')}"
        if final.get("failure_type"):
            outcome += f"/{final['failure_type']}"
        rows[saga.scenario][outcome] += 1
    columns = sorted({o for r in rows.values() for o in r})
    width = max(len(c) for c in columns) if columns else 10
    lines = [f"{'scenario':<16}" + "".join(f"{c:>{width + 2}}" for c in columns)]
    for scenario in sorted(rows):
        lines.append(
            f"{scenario:<16}" + "".join(f"{rows[scenario][c]:>{width + 2}}" for c in columns)
        )
    return "\n".join(lines)
