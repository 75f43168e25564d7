"""Money and identity beyond the saga's lifetime, end to end (dev server, worker, API).

Temporal keeps a closed saga only for the namespace's retention period (7 days in compose);
``temporal workflow delete`` drops it at once. What the system promises must not depend on
it: a replayed ``POST /orders`` answers its order from the database and starts nothing, and
a saga started again for an existing order (by hand, from the Web UI or the CLI) never moves
money. A reset saga keeps its identity and carries on with its own rows.
"""

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import (
    DeleteWorkflowExecutionRequest,
    ResetWorkflowExecutionRequest,
)
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from domain import names
from domain.payloads import OrderProcessInput, OrderRequest
from domain.status import SagaStyle
from sagas import rules
from sagas.rules import NewOrder
from services.orders import mark_key_saga_started
from services.retention import delete_expired
from store.db import session
from store.models import IdempotencyKeyRow, OutboxRow, RefundRow, utcnow
from tests.activities.support import all_rows
from tests.e2e.conftest import Stack
from tests.e2e.test_api_saga import ORDER, WAIT, add_dealer, eventually, saga_eventually
from tests.saga_harness import db_statuses
from workflows import OrderProcessWorkflow


def record_key(stack: Stack, request: OrderRequest, key: str, *, saga_started: bool) -> str:
    """What a first request with ``key`` left behind when it died: what the door accepts in
    one transaction (the key, the payment's decision opened)."""
    order_id = names.order_id_for_idempotency_key(
        stack.settings.order_id_key, request.customer_id, key
    )
    order = NewOrder(
        order_id=order_id,
        request=request,
        idempotency_key=key,
        fingerprint=request.fingerprint(),
        timeouts=stack.settings.saga_timeouts,
    )
    with session(stack.engine) as db:
        rules.accept(db, order)
        if saga_started:
            mark_key_saga_started(db, request.customer_id, key)
        db.commit()
    return order_id


def order_in(city: str) -> dict[str, Any]:
    return {**ORDER, "customer_id": f"idem-{uuid.uuid4().hex[:8]}", "city": city}


async def deliver(stack: Stack, body: dict[str, Any], key: str) -> dict[str, Any]:
    """Place ``body`` with ``key``, confirm, report delivered: the order when DELIVERED."""
    placed = await stack.http.post("/orders", json=body, headers={"Idempotency-Key": key, **WAIT})
    assert placed.status_code == 201, placed.text
    order = placed.json()
    confirm = await stack.http.post(f"/payments/{order['payment']['payment_id']}/confirm")
    assert confirm.status_code == 202, confirm.text
    in_transit = await eventually(stack, order["order_id"], lambda o: o["phase"] == "IN_TRANSIT")
    delivery_id = in_transit["delivery"]["delivery_id"]
    reported = await stack.http.post(f"/deliveries/{delivery_id}/delivered")
    assert reported.status_code == 202, reported.text
    return await eventually(stack, order["order_id"], lambda o: o["phase"] == "DELIVERED")


async def saga_exists(stack: Stack, workflow_id: str) -> bool:
    try:
        await stack.client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return False
    return True


async def delete_saga(stack: Stack, workflow_id: str, within: float = 20) -> None:
    """What the namespace's retention does to a closed saga (``temporal workflow delete``)."""
    await stack.client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=stack.client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=workflow_id),
        )
    )
    deadline = time.monotonic() + within
    while await saga_exists(stack, workflow_id):  # deletion is asynchronous on the server
        assert time.monotonic() < deadline, f"{workflow_id} was not deleted"
        await asyncio.sleep(0.1)


async def test_a_replay_after_the_saga_was_deleted_answers_the_order_and_moves_no_money(
    stack: Stack,
) -> None:
    city = f"Retention {uuid.uuid4().hex[:6]}"
    await add_dealer(stack, city)
    body, key = order_in(city), f"retention-{uuid.uuid4()}"
    delivered = await deliver(stack, body, key)
    order_id, workflow_id = delivered["order_id"], delivered["workflow_id"]
    await delete_saga(stack, workflow_id)

    replay = await stack.http.post("/orders", json=body, headers={"Idempotency-Key": key})

    assert replay.status_code == 200, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Location"] == f"/orders/{order_id}"
    answered = replay.json()
    assert answered["order_id"] == order_id
    assert (answered["status"], answered["phase"]) == ("DELIVERED", "DELIVERED")
    assert (answered["payment"]["status"], answered["payment"]["decision"]) == (
        "COMPLETED",
        "CONFIRM",
    )
    assert not await saga_exists(stack, workflow_id)  # it started nothing
    # Asked to wait, it answers the written order at once (201), and starts nothing either.
    waited = await stack.http.post("/orders", json=body, headers={"Idempotency-Key": key, **WAIT})
    assert waited.status_code == 201, waited.text
    assert waited.headers["Idempotent-Replayed"] == "true"
    assert waited.json() == answered
    assert not await saga_exists(stack, workflow_id)
    # The same key with another body is still refused, from the database alone.
    other = await stack.http.post(
        "/orders", json={**body, "province": "Isfahan"}, headers={"Idempotency-Key": key}
    )
    assert other.status_code == 422, other.text
    assert not await saga_exists(stack, workflow_id)

    # Someone starts a saga for the order by hand (Web UI, CLI): it touches nothing.
    handle = await stack.client.start_workflow(
        OrderProcessWorkflow.run,
        OrderProcessInput(order_id=order_id, request=OrderRequest.model_validate(body)),
        id=names.workflow_id_for(order_id),
        task_queue=stack.settings.workflow_task_queue,
    )
    result = await handle.result()
    assert (result.phase, result.failure_type) == ("CANCELLED", names.OWNED_BY_ANOTHER_SAGA)

    statuses = db_statuses(stack.engine, order_id)
    assert (statuses["order"], statuses["payment"], statuses["delivery"]) == (
        "DELIVERED",
        "COMPLETED",
        "DELIVERED",
    )
    refunds = await asyncio.to_thread(all_rows, stack.engine, RefundRow)
    assert [r for r in refunds if r.payment_id == names.payment_id_for(order_id)] == []
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED  # none running


async def test_a_reset_saga_keeps_its_identity_and_finishes_with_its_own_rows(
    stack: Stack,
) -> None:
    city = f"Reset {uuid.uuid4().hex[:6]}"
    await add_dealer(stack, city)
    placed = await stack.http.post("/orders", json=order_in(city), headers=WAIT)
    assert placed.status_code == 201, placed.text
    order = placed.json()
    confirm = await stack.http.post(f"/payments/{order['payment']['payment_id']}/confirm")
    assert confirm.status_code == 202, confirm.text
    await eventually(stack, order["order_id"], lambda o: o["phase"] == "IN_TRANSIT")
    handle = stack.client.get_workflow_handle(order["workflow_id"])
    history = await handle.fetch_history()
    first_task = next(
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )

    # Reset to the saga's first workflow task: a new run re-runs every step from the start
    # (with the confirm signal re-applied) over the rows its earlier run wrote.
    reset = await stack.client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=stack.client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=order["workflow_id"]),
            reason="test: a reset keeps the saga's identity",
            workflow_task_finish_event_id=first_task,
            request_id=str(uuid.uuid4()),
        )
    )
    assert reset.run_id != history.run_id
    # The database shows the first run's progress: the new run's own is its saga's state.
    saga = await saga_eventually(
        stack.http, order["order_id"], lambda s: s["phase"] in ("IN_TRANSIT", "CANCELLED")
    )
    assert (saga["phase"], saga["failure_type"]) == ("IN_TRANSIT", None), saga
    in_transit = (await stack.http.get(f"/orders/{order['order_id']}")).json()
    assert (in_transit["phase"], in_transit["failure_type"]) == ("IN_TRANSIT", None), in_transit
    reported = await stack.http.post(
        f"/deliveries/{in_transit['delivery']['delivery_id']}/delivered"
    )
    assert reported.status_code == 202, reported.text
    done = await eventually(stack, order["order_id"], lambda o: o["phase"] == "DELIVERED")
    assert (done["status"], done["payment"]["status"]) == ("DELIVERED", "COMPLETED")
    assert db_statuses(stack.engine, order["order_id"])["payments"] == 1


async def test_a_key_whose_first_request_died_before_starting_the_saga_starts_it(
    stack: Stack,
) -> None:
    body, key = order_in("Tehran"), f"died-{uuid.uuid4()}"
    request = OrderRequest.model_validate(body)
    # The first request recorded its key, then its process died before it started the saga.
    order_id = await asyncio.to_thread(record_key, stack, request, key, saga_started=False)

    retried = await stack.http.post("/orders", json=body, headers={"Idempotency-Key": key, **WAIT})

    assert retried.status_code == 201, retried.text
    assert (retried.json()["phase"], retried.json()["payment"]["status"]) == (
        "AWAITING_PAYMENT",
        "PENDING",
    )
    assert retried.json()["order_id"] == order_id
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert await saga_exists(stack, names.workflow_id_for(order_id))


async def test_a_key_whose_saga_ended_before_writing_its_order_is_409_and_starts_nothing(
    stack: Stack,
) -> None:
    body, key = order_in("Tehran"), f"gone-{uuid.uuid4()}"
    request = OrderRequest.model_validate(body)
    # Its saga started, was cancelled before it wrote the order, and is gone now.
    order_id = await asyncio.to_thread(record_key, stack, request, key, saga_started=True)

    replay = await stack.http.post("/orders", json=body, headers={"Idempotency-Key": key})

    assert replay.status_code == 409, replay.text
    assert "new key" in replay.json()["detail"]
    assert not await saga_exists(stack, names.workflow_id_for(order_id))


def forget_keys(stack: Stack) -> int:
    """What the retention job does once an order has ended long enough ago (here: at once):
    its Idempotency-Key is deleted."""
    with session(stack.engine) as db:
        deleted = delete_expired(
            db,
            utcnow() + timedelta(seconds=1),
            event_log=None,
            idempotency_keys=timedelta(0),
        )
        db.commit()
    return deleted["idempotency_keys"]


async def test_a_replay_after_its_key_was_deleted_still_answers_its_order(
    styled: Stack,
) -> None:
    """Past the key's retention (and the saga's), the order id derived from the key with
    ORDER_ID_SECRET still leads to the order: the same request is answered as a replay and
    starts nothing, another body is refused, in either style."""
    city = f"Forgotten {uuid.uuid4().hex[:6]}"
    await add_dealer(styled, city)
    body, key = order_in(city), f"forgotten-{uuid.uuid4()}"
    delivered = await deliver(styled, body, key)
    order_id = delivered["order_id"]
    if styled.style == SagaStyle.ORCHESTRATION:
        await delete_saga(styled, delivered["workflow_id"])
    assert await asyncio.to_thread(forget_keys, styled) >= 1
    with session(styled.engine) as db:
        assert db.get(IdempotencyKeyRow, (body["customer_id"], key)) is None
    before = await asyncio.to_thread(all_rows, styled.engine, OutboxRow)

    replay = await styled.http.post("/orders", json=body, headers={"Idempotency-Key": key})

    assert replay.status_code == 200, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert (replay.json()["order_id"], replay.json()["status"]) == (order_id, "DELIVERED")
    other = await styled.http.post(
        "/orders", json={**body, "city": "Elsewhere"}, headers={"Idempotency-Key": f"{key}"}
    )
    assert other.status_code == 422, other.text
    if styled.style == SagaStyle.ORCHESTRATION:
        assert not await saga_exists(styled, delivered["workflow_id"])  # it started nothing
    assert len(await asyncio.to_thread(all_rows, styled.engine, OutboxRow)) == len(before)
    statuses = db_statuses(styled.engine, order_id)
    assert (statuses["order"], statuses["payment"], statuses["payments"]) == (
        "DELIVERED",
        "COMPLETED",
        1,
    )
    with session(styled.engine) as db:  # the key is on record again
        assert db.get(IdempotencyKeyRow, (body["customer_id"], key)) is not None
