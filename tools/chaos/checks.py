"""The invariants a chaos run must leave intact, checked in SQL and in Temporal."""

from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import Engine
from sqlmodel import select
from temporalio.client import Client, WorkflowExecutionStatus

from domain import names
from domain.payloads import SagaState
from store.db import session
from store.models import DealerRow, DeliveryRow, OrderItemRow, OrderRow, PaymentRow, RefundRow
from tools.chaos.customers import Saga
from worker import replay_failures_at_every_task
from workflows import OrderProcessWorkflow

BAD_RUN_STATUSES = {
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
    WorkflowExecutionStatus.CONTINUED_AS_NEW,
}


def check_database(engine: Engine) -> list[str]:
    """Every order consistent with its payment, delivery, refunds; dealers' load exact."""
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
        state = saga.final["saga"]
        phase, failure = state["phase"], state["failure_type"]
        if "confirm" in saga.accepted and failure in ("PaymentTimedOut", "PaymentCancelled"):
            violations.append(f"{where}: confirm accepted but the saga ended {failure}")
        if "cancel" in saga.accepted and (phase, failure) != ("CANCELLED", "PaymentCancelled"):
            violations.append(f"{where}: cancel accepted but the saga ended {phase}/{failure}")
        if "cancel_order" in saga.accepted and phase != "CANCELLED":
            violations.append(f"{where}: order cancel accepted but the saga ended {phase}")
        if "delivered" in saga.accepted and phase != "DELIVERED":
            violations.append(f"{where}: delivery report accepted but the saga ended {phase}")
    return violations


async def check_temporal(client: Client, sagas: list[Saga]) -> tuple[list[str], Counter[str]]:
    """No run failed or was terminated; running ones legitimately wait; histories replay."""
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
            state: SagaState = await handle.query(OrderProcessWorkflow.state)
            if state.phase != "IN_TRANSIT" or saga.scenario != "confirm_keep":
                violations.append(f"workflow {handle.id} still running in {state.phase}")
        # Open or closed, the saga must replay at every workflow task: what a worker
        # rebuilding it at that moment (crash, eviction, query) would replay.
        for failure in await replay_failures_at_every_task(await handle.fetch_history()):
            violations.append(f"workflow {handle.id} does not replay at {failure}")
    return violations, statuses


def outcome_table(sagas: list[Saga]) -> str:
    """Scenario by final outcome, as a readable table."""
    rows: dict[str, Counter[str]] = defaultdict(Counter)
    for saga in sagas:
        final: dict[str, Any] = saga.final or {}
        state = final.get("saga") or {}
        outcome = f"{state.get('phase', 'UNSETTLED')}"
        if state.get("failure_type"):
            outcome += f"/{state['failure_type']}"
        rows[saga.scenario][outcome] += 1
    columns = sorted({o for r in rows.values() for o in r})
    width = max(len(c) for c in columns) if columns else 10
    lines = [f"{'scenario':<16}" + "".join(f"{c:>{width + 2}}" for c in columns)]
    for scenario in sorted(rows):
        lines.append(
            f"{scenario:<16}" + "".join(f"{rows[scenario][c]:>{width + 2}}" for c in columns)
        )
    return "\n".join(lines)
