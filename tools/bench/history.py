"""The ``history`` phase: what one delivered saga, and one baseline, write to Temporal's history.

The saga is placed and confirmed through the door and delivered by the Dealer, the baseline
signalled right after its start; then each history is counted. A signal that reaches a
workflow while a task runs can add or save a task, so counts may move by one between runs.
"""

import asyncio
import math
import uuid
from collections import Counter
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

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
SCHEDULED = (
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
)
WORKFLOW_TASK_STARTED = EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
ACTIVITY_STARTED = EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED


async def history_counts(
    bench: BenchStack, timeouts: SagaTimeouts, within: float
) -> list[HistoryCounts]:
    """A delivered saga, then the baseline; each with its history's counts."""
    counted = []
    try:
        async with asyncio.timeout(within):
            order_id = await place_and_confirm(bench.sagas, 0, timeouts)
            handle = saga_handle(bench, order_id)
            state = await handle.result()
        ended = state.phase == SagaPhase.DELIVERED and state.order_status == OrderStatus.DELIVERED
        problem = None if ended else f"order {order_id} ended {state.phase}"
        counted.append(await _counted(handle, "saga", problem))
    except Exception as err:  # counted as the phase's failure, not fatal to the run
        counted.append(HistoryCounts(name="saga", problem=repr(err)))
    try:
        async with asyncio.timeout(within):
            baseline = await start_baseline(bench.client, f"bench-history-{uuid.uuid4()}")
            steps = (await baseline.result()).steps
        problem = None if steps == STEPS else f"ran {steps} steps, not {STEPS}"
        counted.append(await _counted(baseline, "baseline", problem))
    except Exception as err:
        counted.append(HistoryCounts(name="baseline", problem=repr(err)))
    return counted


async def _counted(
    handle: WorkflowHandle[Any, Any], name: str, problem: str | None
) -> HistoryCounts:
    types: Counter[int] = Counter()
    scheduled: dict[int, float] = {}  # event id -> time (ms) of a task's scheduled event
    waits: dict[int, list[float]] = {WORKFLOW_TASK_STARTED: [], ACTIVITY_STARTED: []}
    async for event in handle.fetch_history_events():
        types[event.event_type] += 1
        at = event.event_time.ToMicroseconds() / 1000
        if event.event_type in SCHEDULED:
            scheduled[event.event_id] = at
        elif event.event_type == WORKFLOW_TASK_STARTED:
            since = event.workflow_task_started_event_attributes.scheduled_event_id
            waits[WORKFLOW_TASK_STARTED].append(at - scheduled.get(since, at))
        elif event.event_type == ACTIVITY_STARTED:
            since = event.activity_task_started_event_attributes.scheduled_event_id
            waits[ACTIVITY_STARTED].append(at - scheduled.get(since, at))
    return HistoryCounts(
        name=name,
        events=sum(types.values()),
        **{field: types[event_type] for field, event_type in COUNTED.items()},
        workflow_task_wait_ms=_mean(waits[WORKFLOW_TASK_STARTED]),
        activity_wait_ms=_mean(waits[ACTIVITY_STARTED]),
        problem=problem,
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
