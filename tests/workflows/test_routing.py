"""The saga's worker alone (``worker.py --queue order-process``) runs a saga whose steps are
routed to its own queue, on the time-skipping server: no service worker is needed."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack

from sqlalchemy import Engine
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from domain import names
from domain.payloads import ServiceQueues
from domain.status import ActivityRouting, OrderStatus, RecordStatus, SagaPhase
from tests.saga_harness import (
    DELIVERED_STEPS,
    add_dealer,
    confirm_payment,
    db_statuses,
    start_saga,
    wait_for_phase,
)
from tests.workflows.scenarios import mark_delivered
from tools.chaos.checks import steps_scheduled
from worker import build_workers


async def test_the_sagas_worker_alone_runs_a_workflow_routed_saga_to_its_end(
    time_skipping_env: WorkflowEnvironment, engine: Engine, executor: ThreadPoolExecutor
) -> None:
    client = time_skipping_env.client
    dealer = add_dealer(engine, capacity=1)
    # The saga's real queue, as the door starts a saga on it: build_workers serves it alone,
    # as `worker.py --queue order-process` does. No other test polls it on this server.
    queue = names.WORKFLOW_TASK_QUEUE
    # A step no worker serves would hold the saga for ever: fail instead.
    async with asyncio.timeout(30), AsyncExitStack() as running:
        for worker in build_workers(client, engine, executor, queues=[queue]):
            await running.enter_async_context(worker)
        handle = await start_saga(
            client, engine, "", queues=ServiceQueues.routed(ActivityRouting.WORKFLOW, queue)
        )
        await confirm_payment(handle)
        in_transit = await wait_for_phase(handle, SagaPhase.IN_TRANSIT)
        result = await mark_delivered(handle, in_transit)

    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert (result.phase, result.dealer_id) == (SagaPhase.DELIVERED, dealer)
    assert [(s.name, s.status, s.attempts) for s in result.steps] == [
        (step, RecordStatus.COMPLETED, 1) for step in DELIVERED_STEPS
    ]
    assert db_statuses(engine, result.order_id)["order"] == OrderStatus.DELIVERED
    steps = steps_scheduled(await handle.fetch_history())
    assert steps == [(step, queue) for step in DELIVERED_STEPS]
