"""Helpers to run the saga against real workers: real activities, a real database.

Fakes, where a test needs a fault, are registered under the real activity name
(``saga_workers(..., overrides=[fake])``), never patched in.
"""

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import select
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities._defn import service_activity
from activities.payments import PaymentActivities
from domain import names
from domain.names import ORDER_STATUS
from domain.payloads import (
    CompensationOutcome,
    CreatePaymentInput,
    OrderItem,
    OrderProcessInput,
    OrderRef,
    OrderRequest,
    PaymentDecision,
    PaymentSnapshot,
    SagaState,
    SagaTimeouts,
    ServiceQueues,
)
from domain.status import RecordStatus, SagaPhase
from services import payments
from store.db import session, transaction
from store.models import DealerRow, DeliveryRow, OrderRow, PaymentRow, new_dealer
from worker import service_activities, workflow_worker
from workflows import OrderProcessWorkflow

SagaHandle = WorkflowHandle[OrderProcessWorkflow, SagaState]

# Recorded histories of every saga path, replayed by tests/workflows/test_replay.py and
# refreshed by ``python -m tests.workflows.record_histories`` (``make histories``).
HISTORIES_DIR = Path(__file__).resolve().parent / "histories"
# In HISTORIES_DIR: the build id of the code its histories were recorded with.
BUILD_FILE = "BUILD"
_RECORDED_ORDER_IDS = uuid.UUID("0b6f3f1e-5c2a-4d7e-8f19-2a4c6e8b0d13")


def recorded_order_id(path: str) -> str:
    """The fixed order id of the recorded saga path ``path`` (``histories/<path>.json``)."""
    return str(uuid.uuid5(_RECORDED_ORDER_IDS, path))


def recorded_workflow_id(path: str) -> str:
    """The workflow id the history of ``path`` was recorded under."""
    return names.workflow_id_for(recorded_order_id(path))


# The saga's forward steps up to its pivot, and its whole delivered path, in order.
FORWARD_STEPS = [*names.STEPS_BEFORE_DECISION, *names.STEPS_TO_PIVOT]
DELIVERED_STEPS = [*FORWARD_STEPS, *names.STEPS_AFTER_DELIVERED]

FAST_DEALER_RETRY = SagaTimeouts(
    payment_window=timedelta(minutes=30),
    dealer_assignment_window=timedelta(seconds=30),
    dealer_retry_initial_interval=timedelta(seconds=2),
)


def order_request(city: str = "Tehran", province: str = "Tehran", **kw: Any) -> OrderRequest:
    items = [
        OrderItem(product_id="book-1", quantity=2, unit_price=Decimal("12.50")),
        OrderItem(product_id="pen-7", quantity=1, unit_price=Decimal("3.10")),
    ]
    return OrderRequest(
        customer_id=kw.get("customer_id", "customer-1"),
        items=kw.get("items", items),
        province=province,
        city=city,
    )


def add_dealer(
    engine: Engine,
    *,
    city: str = "Tehran",
    province: str = "Tehran",
    capacity: int = 2,
    active_deliveries: int = 0,
) -> int:
    with session(engine) as db:
        dealer = new_dealer("Dealer", f"+1-{uuid.uuid4().hex[:12]}", province, city, capacity)
        dealer.active_deliveries = active_deliveries
        db.add(dealer)
        db.commit()
        assert dealer.id is not None
        return dealer.id


def activity_name(fn: Callable[..., Any]) -> str:
    definition = activity._Definition.must_from_callable(fn)
    assert definition.name is not None
    return definition.name


@asynccontextmanager
async def saga_workers(
    client: Client,
    engine: Engine,
    executor: ThreadPoolExecutor,
    suffix: str,
    overrides: Sequence[Callable[..., Any]] = (),
) -> AsyncIterator[None]:
    """Run the workflow worker and the three service workers on suffixed task queues.

    ``overrides`` replace the real activity of the same name (fault injection).
    """
    by_name = {activity_name(fn): fn for fn in overrides}
    queues = {
        queue: [by_name.get(activity_name(fn), fn) for fn in fns]
        for queue, fns in service_activities(engine).items()
    }
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(workflow_worker(client, names.WORKFLOW_TASK_QUEUE + suffix))
        for queue, fns in queues.items():
            await stack.enter_async_context(
                Worker(
                    client,
                    task_queue=queue + suffix,
                    activities=fns,
                    activity_executor=executor,
                )
            )
        yield


async def start_saga(
    client: Client,
    engine: Engine,
    suffix: str,
    request: OrderRequest | None = None,
    timeouts: SagaTimeouts = FAST_DEALER_RETRY,
    *,
    order_id: str | None = None,
    queues: ServiceQueues | None = None,
) -> SagaHandle:
    """Start a saga on the suffixed task queues, its order accepted first as the door accepts
    it (its payment's decision opened); a fresh order id unless one is given. ``queues``: its
    steps' task queues (default: the suffixed service queues)."""
    order_id = order_id or str(uuid.uuid4())
    request = request or order_request()
    with transaction(engine) as db:
        payments.open_decision(db, names.payment_id_for(order_id), order_id, request.customer_id)
    return await client.start_workflow(
        OrderProcessWorkflow.run,
        OrderProcessInput(
            order_id=order_id,
            request=request,
            timeouts=timeouts,
            queues=queues or ServiceQueues.with_suffix(suffix),
        ),
        id=names.workflow_id_for(order_id),
        task_queue=names.WORKFLOW_TASK_QUEUE + suffix,
    )


def db_statuses(engine: Engine, order_id: str) -> dict[str, Any]:
    """What the database says about one order: statuses, dealer, and counts of rows."""
    with session(engine) as db:
        order = db.get(OrderRow, order_id)
        payments = db.exec(select(PaymentRow).where(PaymentRow.order_id == order_id)).all()
        deliveries = db.exec(select(DeliveryRow).where(DeliveryRow.order_id == order_id)).all()
    return {
        "order": order.status if order else None,
        "payment": payments[0].status if payments else None,
        "delivery": deliveries[0].status if deliveries else None,
        "dealer_id": deliveries[0].dealer_id if deliveries else None,
        "payments": len(payments),
        "deliveries": len(deliveries),
    }


def set_dealer_load(engine: Engine, dealer_id: int, active_deliveries: int) -> None:
    """Set how many parcels a dealer carries (another order finished or took one)."""
    with session(engine) as db:
        dealer = db.get(DealerRow, dealer_id)
        assert dealer is not None
        dealer.active_deliveries = active_deliveries
        db.add(dealer)
        db.commit()


def dealer_load(engine: Engine, dealer_id: int) -> int:
    with session(engine) as db:
        dealer = db.get(DealerRow, dealer_id)
        assert dealer is not None
        return dealer.active_deliveries


async def wait_for_phase(
    handle: SagaHandle,
    phase: SagaPhase,
    *,
    until: Callable[[SagaState], bool] = lambda _: True,
    within: float = 10.0,
) -> SagaState:
    """Poll the ``state`` query until the saga is in ``phase`` and ``until(state)`` holds.

    Fails the test, showing the last state seen, after ``within`` seconds of real time.
    """
    last: SagaState | None = None
    try:
        async with asyncio.timeout(within):
            while True:
                last = await handle.query(OrderProcessWorkflow.state)
                if last.phase == phase and until(last):
                    return last
                await asyncio.sleep(0.02)
    except TimeoutError:
        shown = last.model_dump_json(indent=1) if last else None
        raise AssertionError(f"saga not in {phase} within {within}s; last state: {shown}") from None


async def wait_until_seeking_a_dealer(handle: SagaHandle) -> SagaState:
    """Wait until assign_dealer found no free dealer and the saga is between attempts."""
    return await wait_for_phase(
        handle,
        SagaPhase.ASSIGNING_DEALER,
        until=lambda s: (
            s.steps[-1].name == names.ASSIGN_DEALER and s.steps[-1].status == RecordStatus.RETRYING
        ),
    )


async def confirm_payment(handle: SagaHandle) -> SagaState:
    """Wait until the payment exists, then confirm it as the customer would."""
    # By name: mypy types the async update method's result as a coroutine of the state.
    state: SagaState = await handle.execute_update(
        names.UPDATE_WAIT_FOR_PAYMENT, result_type=SagaState
    )
    assert state.payment_id is not None
    await handle.signal(
        OrderProcessWorkflow.confirm_payment, PaymentDecision(payment_id=state.payment_id)
    )
    return state


async def order_status_attribute(handle: SagaHandle) -> str | None:
    """The OrderStatus search attribute of the saga's run."""
    description = await handle.describe()
    return description.typed_search_attributes.get(ORDER_STATUS)


class FailingRefund:
    """Fake ``cancel_or_refund_payment``: fails, then runs the real compensation.

    It fails on its first ``failures`` calls, or, with ``failures=None``, until
    :meth:`release` is called. ``calls`` counts every call.
    """

    def __init__(self, engine: Engine, failures: int | None = None) -> None:
        self._real = PaymentActivities(engine)
        self._failures = failures
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.calls = 0

    def release(self) -> None:
        self._released.set()

    @service_activity(names.CANCEL_OR_REFUND_PAYMENT)
    def cancel_or_refund_payment(self, ref: OrderRef) -> CompensationOutcome:
        with self._lock:
            self.calls += 1
            call = self.calls
        failing = not self._released.is_set() if self._failures is None else call <= self._failures
        if failing:
            raise RuntimeError(f"payment provider unavailable (call {call})")
        return self._real.cancel_or_refund_payment(ref)


class HeldCreatePayment:
    """Fake ``create_payment``: waits until released, then runs the real one (a step still
    running while something reaches the saga)."""

    def __init__(self, engine: Engine) -> None:
        self._real = PaymentActivities(engine)
        self.started = threading.Event()
        self.release = threading.Event()

    @service_activity(names.CREATE_PAYMENT)
    def create_payment(self, params: CreatePaymentInput) -> PaymentSnapshot:
        self.started.set()
        assert self.release.wait(10)
        return self._real.create_payment(params)
