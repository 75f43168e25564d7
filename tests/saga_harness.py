"""Helpers to run the saga against real workers: real activities, a real database.

Fakes, where a test needs a fault, are registered under the real activity name
(``with_overrides``), never patched in.
"""

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlmodel import select
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from domain import names
from domain.payloads import (
    OrderItem,
    OrderProcessInput,
    OrderRequest,
    SagaState,
    SagaTimeouts,
    ServiceQueues,
)
from store.db import session
from store.models import DealerRow, DeliveryRow, OrderRow, PaymentRow
from store.seed import new_dealer
from worker import service_activities, workflow_runner
from workflows import OrderProcessWorkflow

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
    engine: Engine, *, city: str = "Tehran", province: str = "Tehran", capacity: int = 2
) -> int:
    with session(engine) as db:
        dealer = new_dealer("Dealer", f"+1-{uuid.uuid4().hex[:12]}", province, city, capacity)
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
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(
            Worker(
                client,
                task_queue=names.WORKFLOW_TASK_QUEUE + suffix,
                workflows=[OrderProcessWorkflow],
                workflow_runner=workflow_runner(),
            )
        )
        for queue, fns in service_activities(engine).items():
            await stack.enter_async_context(
                Worker(
                    client,
                    task_queue=queue + suffix,
                    activities=[by_name.get(activity_name(fn), fn) for fn in fns],
                    activity_executor=executor,
                )
            )
        yield


async def start_saga(
    client: Client,
    suffix: str,
    request: OrderRequest | None = None,
    timeouts: SagaTimeouts = FAST_DEALER_RETRY,
) -> WorkflowHandle[OrderProcessWorkflow, SagaState]:
    order_id = str(uuid.uuid4())
    return await client.start_workflow(
        OrderProcessWorkflow.run,
        OrderProcessInput(
            order_id=order_id,
            request=request or order_request(),
            timeouts=timeouts,
            queues=ServiceQueues.with_suffix(suffix),
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


def dealer_load(engine: Engine, dealer_id: int) -> int:
    with session(engine) as db:
        dealer = db.get(DealerRow, dealer_id)
        assert dealer is not None
        return dealer.active_deliveries
