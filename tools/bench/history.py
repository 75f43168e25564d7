"""The ``history`` phase: what one delivered saga in each routing, and one baseline, write to
Temporal's history, and what the server asked of its database meanwhile.

The saga is placed and confirmed through the door and delivered by the Dealer, the baseline
signalled right after its start; then each history is counted. A signal that reaches a
workflow while a task runs can add or save a task, so counts may move by one between runs.
The server's persistence requests are read from its Prometheus endpoint before and after
each workflow (nothing else runs in this phase): ``UpdateWorkflowExecution`` and
``CreateWorkflowExecution`` are its state transitions.
"""

import asyncio
import math
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from domain.payloads import SagaTimeouts
from domain.status import OrderStatus, SagaPhase
from tools.bench.baseline import STEPS, start_baseline
from tools.bench.driver import place_and_confirm, saga_handle
from tools.bench.environment import DEFAULT_ROUTING, OTHER_ROUTING, BenchStack
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


# How long after a workflow's result its server's last writes (its close, visibility) land.
SETTLE_SECONDS = 1.0
QUIET_WITHIN = 30.0
PERSISTENCE = re.compile(
    r'^persistence_requests\{[^}]*namespace="default",operation="(\w+)"[^}]*\} (\d+)', re.M
)
TRANSITIONS = ("CreateWorkflowExecution", "UpdateWorkflowExecution")


async def history_counts(
    bench: BenchStack, timeouts: SagaTimeouts, within: float
) -> list[HistoryCounts]:
    """A delivered saga in each routing, then the baseline; each with its history's counts."""
    counted = []
    for routing in (DEFAULT_ROUTING, OTHER_ROUTING):
        door = bench.doors[routing]

        async def saga(door: Any = door) -> tuple[WorkflowHandle[Any, Any], str | None]:
            order_id = await place_and_confirm(door, 0, timeouts)
            handle = saga_handle(bench, order_id)
            state = await handle.result()
            ended = (state.phase, state.order_status)
            delivered = ended == (SagaPhase.DELIVERED, OrderStatus.DELIVERED)
            return handle, None if delivered else f"order {order_id} ended {state.phase}"

        counted.append(await _one(bench, f"saga-{routing}", saga, within))

    async def baseline() -> tuple[WorkflowHandle[Any, Any], str | None]:
        handle = await start_baseline(bench.client, f"bench-history-{uuid.uuid4()}")
        steps = (await handle.result()).steps
        return handle, None if steps == STEPS else f"ran {steps} steps, not {STEPS}"

    counted.append(await _one(bench, "baseline", baseline, within))
    return counted


Run = Callable[[], Awaitable[tuple[WorkflowHandle[Any, Any], str | None]]]


async def _one(bench: BenchStack, name: str, run: Run, within: float) -> HistoryCounts:
    """Run one workflow to its end and count its history and its server's requests."""
    try:
        async with _persistence(bench) as requests:
            async with asyncio.timeout(within):
                handle, problem = await run()
        counts = await _counted(handle, name, problem)
    except Exception as err:  # counted as the phase's failure, not fatal to the run
        return HistoryCounts(name=name, problem=repr(err))
    counts.persistence_requests = requests
    counts.state_transitions = sum(requests.get(op, 0) for op in TRANSITIONS)
    return counts


@asynccontextmanager
async def _persistence(bench: BenchStack) -> AsyncIterator[dict[str, int]]:
    """The server's persistence requests of the namespace, by operation, made during the
    block (and SETTLE_SECONDS after it); empty if the server has no metrics endpoint."""
    requests: dict[str, int] = {}
    url = bench.server_metrics_url
    if url is None:
        yield requests
        return
    async with httpx.AsyncClient(timeout=10) as http:
        before = await _quiet(http, url)
        yield requests
        await asyncio.sleep(SETTLE_SECONDS)
        after = _requests((await http.get(url)).text)
    for operation, count in after.items():
        if count > before.get(operation, 0):
            requests[operation] = count - before.get(operation, 0)


async def _quiet(http: httpx.AsyncClient, url: str) -> dict[str, int]:
    """The server's requests once it has stopped making any (what the phase before left it
    to do, closing and indexing its workflows, done), or after QUIET_WITHIN seconds."""
    deadline = asyncio.get_running_loop().time() + QUIET_WITHIN
    last = _requests((await http.get(url)).text)
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(SETTLE_SECONDS)
        now = _requests((await http.get(url)).text)
        if now == last:
            break
        last = now
    return last


def _requests(exposition: str) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for operation, count in PERSISTENCE.findall(exposition):
        totals[operation] += int(count)
    return dict(totals)


async def _counted(
    handle: WorkflowHandle[Any, Any], name: str, problem: str | None
) -> HistoryCounts:
    types: Counter[int] = Counter()
    scheduled: dict[int, float] = {}  # event id -> time (ms) of a task's scheduled event
    waits: dict[int, list[float]] = {WORKFLOW_TASK_STARTED: [], ACTIVITY_STARTED: []}
    size = 0
    async for event in handle.fetch_history_events():
        types[event.event_type] += 1
        size += event.ByteSize()
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
        bytes=size,
        **{field: types[event_type] for field, event_type in COUNTED.items()},
        workflow_task_wait_ms=_mean(waits[WORKFLOW_TASK_STARTED]),
        activity_wait_ms=_mean(waits[ACTIVITY_STARTED]),
        problem=problem,
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
