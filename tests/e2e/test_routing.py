"""Activity routing on the real dev server: a saga routed to its own worker gets each step
in Temporal's reply to the workflow task that scheduled it (eager dispatch), never through
task queue matching; and every saga keeps the routing it started with.

Eager dispatch is shown structurally, not by timing: the saga's queue is throttled so that
matching hands out one activity per 100 s, and the saga still runs its eight steps in seconds.
The control, the same worker with eager dispatch turned off, is held by that throttle.
"""

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import RateLimit
from temporalio.api.workflowservice.v1 import UpdateTaskQueueConfigRequest
from temporalio.client import Client
from temporalio.worker import Worker

from api.app import create_app
from domain import names
from domain.status import ActivityRouting, SagaStyle
from tests.e2e.conftest import Stack, assert_routed, scheduled_steps, serve
from tests.e2e.test_api_saga import ORDER, add_dealer
from tests.e2e.test_both_styles import a_city, place
from tests.e2e.test_races import poll
from tests.saga_harness import DELIVERED_STEPS
from worker import every_step, workflow_runner, workflow_worker
from workflows import OrderProcessWorkflow

# Activities matching dispatches from a throttled queue, per second: one per 100 s.
THROTTLED = 0.01
# Long enough for a saga's eight steps on a loaded machine; through the throttle's matching
# they would take more than ten minutes.
WITHIN = 15
# How long the control watches the throttle hold its saga.
HELD_FOR = 5


async def throttle(client: Client, task_queue: str, per_second: float | None) -> None:
    """Have matching dispatch ``task_queue``'s activities at most ``per_second`` (None: lift
    the limit). Eager dispatch bypasses matching, and so this limit."""
    update = UpdateTaskQueueConfigRequest.RateLimitUpdate(reason="tests/e2e/test_routing.py")
    if per_second is not None:
        update.rate_limit.CopyFrom(RateLimit(requests_per_second=per_second))
    await client.workflow_service.update_task_queue_config(
        UpdateTaskQueueConfigRequest(
            namespace=client.namespace,
            identity="tests/e2e/test_routing.py",
            task_queue=task_queue,
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            update_queue_rate_limit=update,
        )
    )


@asynccontextmanager
async def workflow_routed_on(stack: Stack, queue: str) -> AsyncIterator[Stack]:
    """The stack with an API of its own starting workflow-routed sagas on ``queue``, which no
    worker of the stack polls: the test runs the saga's worker there."""
    settings = stack.settings.model_copy(
        update={
            "workflow_task_queue": queue,
            "saga_style": SagaStyle.ORCHESTRATION,
            "activity_routing": ActivityRouting.WORKFLOW,
        }
    )
    async with serve(create_app(settings)) as http:
        yield dataclasses.replace(
            stack,
            http=http,
            settings=settings,
            style=SagaStyle.ORCHESTRATION,
            routing=ActivityRouting.WORKFLOW,
        )


async def confirm_and_deliver(stack: Stack, placed: dict[str, Any], within: float) -> None:
    """Confirm the placed order's payment and report its parcel delivered once it moves;
    returns once the order is DELIVERED."""
    order_id = placed["order_id"]
    payment_id = names.payment_id_for(order_id)
    confirm = await stack.http.post(f"/payments/{payment_id}/confirm")
    assert confirm.status_code == 202, confirm.text
    moving = await poll(stack.http, order_id, lambda o: o["phase"] == "IN_TRANSIT", within)
    delivered = await stack.http.post(f"/deliveries/{moving['delivery']['delivery_id']}/delivered")
    assert delivered.status_code == 202, delivered.text
    await poll(stack.http, order_id, lambda o: o["phase"] == "DELIVERED", within)


async def steps_completed(client: Client, order_id: str) -> int:
    """How many of the order's saga's steps have completed."""
    history = await client.get_workflow_handle(names.workflow_id_for(order_id)).fetch_history()
    completed = EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    return sum(1 for event in history.events if event.event_type == completed)


async def test_a_workflow_routed_saga_gets_its_steps_without_task_queue_matching(
    stack: Stack,
) -> None:
    """The saga's worker as worker.py builds it, on a queue matching throttles to one
    activity per 100 s: the saga runs its eight steps to DELIVERED within seconds, so each
    step came in the reply to a workflow task (eager dispatch), past matching."""
    queue = f"eager-{uuid.uuid4()}"
    await throttle(stack.client, queue, THROTTLED)
    city = a_city()
    await add_dealer(stack, city)
    with ThreadPoolExecutor(16, thread_name_prefix="eager-steps") as executor:
        async with (
            workflow_worker(
                stack.client, queue, activities=every_step(stack.engine), executor=executor
            ),
            workflow_routed_on(stack, queue) as routed,
        ):
            started = time.monotonic()
            placed = await place(routed, city=city)  # its first steps on ``queue``
            await confirm_and_deliver(routed, placed, WITHIN)
            took = time.monotonic() - started
    assert took < WITHIN, f"{took:.1f} s"
    steps = await scheduled_steps(stack.client, placed["order_id"])
    assert steps == [(step, queue) for step in DELIVERED_STEPS]


async def test_without_eager_dispatch_the_throttled_queue_holds_the_saga(stack: Stack) -> None:
    """The control: the same worker with eager dispatch off gets its steps from matching,
    which the throttle holds (at most one step in ``HELD_FOR`` seconds). Lifted, the saga
    runs to DELIVERED."""
    queue = f"matched-{uuid.uuid4()}"
    await throttle(stack.client, queue, THROTTLED)
    city = a_city()
    await add_dealer(stack, city)
    with ThreadPoolExecutor(16, thread_name_prefix="matched-steps") as executor:
        async with (
            Worker(
                stack.client,
                task_queue=queue,
                workflows=[OrderProcessWorkflow],
                workflow_runner=workflow_runner(),
                activities=every_step(stack.engine),
                activity_executor=executor,
                disable_eager_activity_execution=True,
            ),
            workflow_routed_on(stack, queue) as routed,
        ):
            response = await routed.http.post("/orders", json={**ORDER, "city": city})
            assert response.status_code == 202, response.text
            placed = response.json()
            held_until = time.monotonic() + HELD_FOR
            while time.monotonic() < held_until:
                assert await steps_completed(stack.client, placed["order_id"]) <= 1
                await asyncio.sleep(0.5)
            await throttle(stack.client, queue, None)
            await poll(routed.http, placed["order_id"], lambda o: o["phase"] == "AWAITING_PAYMENT")
            await confirm_and_deliver(routed, placed, WITHIN)
    await assert_routed(routed, placed["order_id"])


async def test_a_saga_keeps_the_routing_it_started_with_whichever_api_steers_it(
    stack: Stack,
) -> None:
    """One saga per routing, side by side on the same workers, each decided and reported
    through the API of the other routing: each schedules all its steps as it started."""
    city = a_city()
    await add_dealer(stack, city, capacity=2)
    routed = {
        routing: stack.in_style(SagaStyle.ORCHESTRATION, routing) for routing in ActivityRouting
    }
    placed = {routing: await place(api, city=city) for routing, api in routed.items()}
    for routing, body in placed.items():
        other = next(api for r, api in routed.items() if r != routing)
        await confirm_and_deliver(other, body, WITHIN)
        await assert_routed(routed[routing], body["order_id"])
        steps = await scheduled_steps(stack.client, body["order_id"])
        assert [step for step, _ in steps] == DELIVERED_STEPS
