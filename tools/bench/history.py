"""The ``history`` phase: what one delivered saga writes to Temporal's history.

One saga, driven as the closed loops drive theirs (started through the Temporal client as the
door starts it, confirmed right after the start, reported delivered by the Dealer), then the
baseline workflow for the round trips it mirrors; each one's history counted: events,
workflow tasks (completed), activity tasks, timers, search-attribute upserts, signals, and
how long a task waited on average from scheduled to started (the hop through the server's
queues). One of each, in this run: a signal that reaches a saga while a workflow task runs
can add or save a task, so the counts may move by one or two between runs.
"""

import asyncio
import math
import time
import uuid
from collections import Counter
from typing import Any, TypeVar

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from domain.payloads import SagaTimeouts
from domain.status import OrderStatus, SagaPhase
from tools.bench.baseline import STEPS, start_baseline
from tools.bench.driver import place_and_confirm, saga_handle
from tools.bench.environment import BenchStack
from tools.bench.report import HistoryCounts

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


async def history_counts(
    bench: BenchStack, timeouts: SagaTimeouts, within: float
) -> list[HistoryCounts]:
    """A delivered saga, then the baseline; each with its history's counts."""
    return [await _saga(bench, timeouts, within), await _baseline(bench.client, within)]


async def _saga(bench: BenchStack, timeouts: SagaTimeouts, within: float) -> HistoryCounts:
    order_id = "?"
    label = "saga"
    started = time.perf_counter()
    try:
        order_id = await place_and_confirm(bench.sagas, 0, timeouts)
        handle = saga_handle(bench, order_id)
        state = await _result(handle, within)
    except Exception as err:  # counted as the phase's failure, not fatal to the run
        return HistoryCounts(name=label, problem=f"order {order_id}: {err!r}")
    seconds = time.perf_counter() - started
    problem = None
    if state.phase != SagaPhase.DELIVERED or state.order_status != OrderStatus.DELIVERED:
        problem = f"order {order_id} ended {state.phase}: {state.failure_type}"
    return await _counted(handle, label, seconds, problem)


async def _baseline(client: Client, within: float) -> HistoryCounts:
    label = "baseline"
    started = time.perf_counter()
    try:
        handle = await start_baseline(client, f"bench-baseline-history-{uuid.uuid4()}")
        result = await _result(handle, within)
    except Exception as err:
        return HistoryCounts(name=label, problem=repr(err))
    seconds = time.perf_counter() - started
    problem = None if result.steps == STEPS else f"ran {result.steps} steps, not {STEPS}"
    return await _counted(handle, label, seconds, problem)


async def _result(handle: WorkflowHandle[Any, T], within: float) -> T:
    async with asyncio.timeout(within):
        return await handle.result()


async def _counted(
    handle: WorkflowHandle[Any, Any],
    label: str,
    seconds: float,
    problem: str | None,
) -> HistoryCounts:
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
    return HistoryCounts(
        name=label,
        seconds=seconds,
        events=events,
        **{field: types[event_type] for field, event_type in COUNTED.items()},
        workflow_task_wait_ms=_mean(waits["workflow"]),
        activity_wait_ms=_mean(waits["activity"]),
        problem=problem,
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
