"""The baseline workflow: the saga's delivered path with every step a no-op.

It runs the activities OrderProcessWorkflow runs on its delivered path, in the same order and
the same way (regular activities, one after the other or side by side), and waits for the
same two decisions: the two steps before the decision one after the other, the ``confirm``
signal, the three steps after it side by side, then ``assign_dealer``, the ``delivered``
signal, the last two steps side by side (the groups of ``domain/names.py``, so it follows
them). It leaves out everything else the saga does: its steps' database work, its state, its
search attribute updates. So the saga against this workflow, with the same Temporal round
trips, is the cost of the saga itself.

This module is loaded into the workflow sandbox: it imports only the standard library,
temporalio and, passed through, the shared names and the saga's activity timeout.
"""

import asyncio
from dataclasses import dataclass

from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle

with workflow.unsafe.imports_passed_through():
    from domain import names
    from domain.timeouts import STEP_START_TO_CLOSE

BASELINE_TASK_QUEUE = "bench-baseline"
# The steps go to a queue of their own, as the saga's go to its services' queues.
BASELINE_ACTIVITY_TASK_QUEUE = "bench-baseline-activities"
WORKFLOW_NAME = "BenchBaselineWorkflow"
NOOP_ACTIVITY = "bench_noop"
SIGNAL_CONFIRM = "confirm"
SIGNAL_DELIVERED = "delivered"

# The saga's delivered path, step for step (names only label the no-op calls).
STEPS = (
    len(names.STEPS_BEFORE_DECISION)
    + len(names.STEPS_AFTER_DECISION)
    + 1  # assign_dealer
    + len(names.STEPS_AFTER_DELIVERED)
)


@dataclass(frozen=True)
class BaselineResult:
    """What the run did: the number of steps that completed (8 on success)."""

    steps: int


@activity.defn(name=NOOP_ACTIVITY)
def noop(step: str) -> str:
    """Does nothing; returns the step's name (a payload each way, as a real step has).

    Synchronous, as the saga's steps are: it runs on the worker's thread pool like them, so
    the comparison leaves out only their database work.
    """
    return step


@workflow.defn(name=WORKFLOW_NAME)
class BaselineWorkflow:
    """Steps one after the other, ``confirm``, steps side by side, ``assign_dealer``,
    ``delivered``, steps side by side. Both signals are taken at any time, before the
    workflow waits for them too (the driver sends them right after the start)."""

    def __init__(self) -> None:
        self._confirmed = False
        self._delivered = False
        self._steps = 0

    @workflow.run
    async def run(self) -> BaselineResult:
        for step in names.STEPS_BEFORE_DECISION:
            await self._run_step(step)
        await workflow.wait_condition(lambda: self._confirmed)
        await self._side_by_side(names.STEPS_AFTER_DECISION)
        await self._run_step(names.ASSIGN_DEALER)
        await workflow.wait_condition(lambda: self._delivered)
        await self._side_by_side(names.STEPS_AFTER_DELIVERED)
        return BaselineResult(steps=self._steps)

    @workflow.signal(name=SIGNAL_CONFIRM)
    def confirm(self) -> None:
        self._confirmed = True

    @workflow.signal(name=SIGNAL_DELIVERED)
    def delivered(self) -> None:
        self._delivered = True

    async def _side_by_side(self, steps: tuple[str, ...]) -> None:
        """``steps`` scheduled together (in one workflow task), as the saga runs them."""
        await asyncio.gather(*(self._run_step(step) for step in steps))

    async def _run_step(self, step: str) -> None:
        """One no-op step: a regular activity on the baseline's activity queue."""
        await workflow.execute_activity(
            noop,
            step,
            task_queue=BASELINE_ACTIVITY_TASK_QUEUE,
            start_to_close_timeout=STEP_START_TO_CLOSE,
        )
        self._steps += 1


async def start_baseline(
    client: Client, workflow_id: str
) -> WorkflowHandle[BaselineWorkflow, BaselineResult]:
    """Start a baseline workflow and send both its signals at once (as the bench confirms a
    saga right after placing it)."""
    handle = await client.start_workflow(
        BaselineWorkflow.run, id=workflow_id, task_queue=BASELINE_TASK_QUEUE
    )
    await handle.signal(BaselineWorkflow.confirm)
    await handle.signal(BaselineWorkflow.delivered)
    return handle
