"""The ``history`` phase: what one delivered saga writes to Temporal's history, in each shape.

One saga of shape 1 (the shape before this one: its steps one after the other, the dealer
window's timer always started) and one of the latest shape, both remote, both driven as the
closed loops drive theirs (started through the Temporal client, confirmed right after the
start, reported delivered by the Dealer), then the baseline workflow (remote) for the round
trips it mirrors; each one's history counted: events, workflow tasks (completed), activity
tasks, timers, search-attribute upserts, signals, and how long a task waited on average from
scheduled to started (the hop through the server's queues). One of each, in this run: a signal that
reaches a saga while a workflow task runs can add or save a task, so the counts may move by
one or two between runs.
"""

import asyncio
import math
import time
import uuid
from collections import Counter
from typing import Any, TypeVar

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from domain import names
from domain.payloads import LATEST_SHAPE, OrderProcessInput, PaymentDecision, SagaTimeouts, StepMode
from domain.status import OrderStatus, SagaPhase
from sagas.orchestration import saga_start_options
from tools.bench.baseline import BASELINE_TASK_QUEUE, STEPS, BaselineInput, BaselineWorkflow
from tools.bench.driver import order_request
from tools.bench.report import HistoryShape
from workflows import OrderProcessWorkflow

SHAPES = (1, LATEST_SHAPE)
COUNTED = {
    "workflow_tasks": EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    "activities": EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    "timers": EventType.EVENT_TYPE_TIMER_STARTED,
    "upserts": EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
    "signals": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
}
WORKFLOW_TASK_SCHEDULED = EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
WORKFLOW_TASK_STARTED = EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
ACTIVITY_SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
ACTIVITY_STARTED = EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
T = TypeVar("T")


async def history_shapes(
    client: Client, timeouts: SagaTimeouts, within: float
) -> list[HistoryShape]:
    """A delivered saga of each shape, then the baseline; each with its history's counts."""
    found = [await _saga(client, shape, timeouts, within) for shape in SHAPES]
    found.append(await _baseline(client, within))
    return found


async def _saga(client: Client, shape: int, timeouts: SagaTimeouts, within: float) -> HistoryShape:
    order_id = str(uuid.uuid4())
    request = order_request(0)
    label = f"saga shape {shape}" + (" (latest)" if shape == LATEST_SHAPE else "")
    started = time.perf_counter()
    try:
        handle = await client.start_workflow(
            OrderProcessWorkflow.run,
            OrderProcessInput(
                order_id=order_id,
                request=request,
                timeouts=timeouts,
                step_mode=StepMode.REMOTE,
                shape=shape,
            ),
            **saga_start_options(order_id, request, task_queue=names.WORKFLOW_TASK_QUEUE),
        )
        await handle.signal(
            OrderProcessWorkflow.confirm_payment,
            PaymentDecision(payment_id=names.payment_id_for(order_id)),
        )
        state = await _result(handle, within)
    except Exception as err:  # counted as the phase's failure, not fatal to the run
        return HistoryShape(name=label, shape=shape, problem=f"order {order_id}: {err!r}")
    seconds = time.perf_counter() - started
    problem = None
    if state.phase != SagaPhase.DELIVERED or state.order_status != OrderStatus.DELIVERED:
        problem = f"order {order_id} ended {state.phase}: {state.failure_type}"
    return await _counted(handle, label, shape, seconds, problem)


async def _baseline(client: Client, within: float) -> HistoryShape:
    label = "baseline (remote)"
    started = time.perf_counter()
    try:
        handle = await client.start_workflow(
            BaselineWorkflow.run,
            BaselineInput(mode=StepMode.REMOTE),
            id=f"bench-baseline-history-{uuid.uuid4()}",
            task_queue=BASELINE_TASK_QUEUE,
        )
        await handle.signal(BaselineWorkflow.confirm)
        await handle.signal(BaselineWorkflow.delivered)
        result = await _result(handle, within)
    except Exception as err:
        return HistoryShape(name=label, problem=repr(err))
    seconds = time.perf_counter() - started
    problem = None if result.steps == STEPS else f"ran {result.steps} steps, not {STEPS}"
    return await _counted(handle, label, None, seconds, problem)


async def _result(handle: WorkflowHandle[Any, T], within: float) -> T:
    async with asyncio.timeout(within):
        return await handle.result()


async def _counted(
    handle: WorkflowHandle[Any, Any],
    label: str,
    shape: int | None,
    seconds: float,
    problem: str | None,
) -> HistoryShape:
    types: Counter[int] = Counter()
    scheduled: dict[int, float] = {}  # event id -> time, of task scheduled events
    waits: dict[str, list[float]] = {"workflow": [], "activity": []}
    events = 0
    async for event in handle.fetch_history_events():
        events += 1
        types[event.event_type] += 1
        at = event.event_time.ToMicroseconds() / 1000
        if event.event_type in (WORKFLOW_TASK_SCHEDULED, ACTIVITY_SCHEDULED):
            scheduled[event.event_id] = at
        elif event.event_type == WORKFLOW_TASK_STARTED:
            since = event.workflow_task_started_event_attributes.scheduled_event_id
            waits["workflow"].append(at - scheduled.get(since, at))
        elif event.event_type == ACTIVITY_STARTED:
            since = event.activity_task_started_event_attributes.scheduled_event_id
            waits["activity"].append(at - scheduled.get(since, at))
    return HistoryShape(
        name=label,
        shape=shape,
        seconds=seconds,
        events=events,
        **{field: types[event_type] for field, event_type in COUNTED.items()},
        workflow_task_wait_ms=_mean(waits["workflow"]),
        activity_wait_ms=_mean(waits["activity"]),
        problem=problem,
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
