"""The saga decides from history events (activity results, timers), never from clock
arithmetic on task timestamps: a replay must take the same decisions whatever the
timestamps of its workflow tasks say.

Found by the chaos run: the dealer-assignment window used to be ``deadline - now()``, and a
worker rebuilding a saga after a crash took a different branch than the original run
(nondeterminism error, the saga stuck). The window is now a durable timer.

Remote step mode only: the skew is placed after assign_dealer's activity events, and the
decisions under test (timers, not the step mode) are the same in both modes.
"""

import json
from datetime import datetime, timedelta

from temporalio.client import WorkflowHistory

from domain import names
from domain.status import SagaPhase
from tests.saga_harness import confirm_payment, order_request, saga_workers, start_saga
from worker import saga_replayer

SKEW = timedelta(hours=1)


def skew_tasks_after_first_assignment(history_json: str) -> str:
    """Move every workflow task that follows the first assign_dealer result an hour later."""
    history = json.loads(history_json)
    assign_scheduled: set[str] = set()
    skewing = False
    for event in history["events"]:
        kind = event["eventType"]
        if kind == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED":
            attrs = event["activityTaskScheduledEventAttributes"]
            if attrs["activityType"]["name"] == names.ASSIGN_DEALER:
                assign_scheduled.add(event["eventId"])
        elif kind == "EVENT_TYPE_ACTIVITY_TASK_COMPLETED":
            attrs = event["activityTaskCompletedEventAttributes"]
            skewing = skewing or attrs["scheduledEventId"] in assign_scheduled
        elif kind == "EVENT_TYPE_WORKFLOW_TASK_STARTED" and skewing:
            when = datetime.fromisoformat(event["eventTime"].replace("Z", "+00:00"))
            event["eventTime"] = (when + SKEW).isoformat().replace("+00:00", "Z")
    assert skewing, "the history has no assign_dealer result to skew after"
    return json.dumps(history)


async def test_no_dealer_decisions_follow_history_events_not_task_timestamps(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, engine, task_queue_suffix, order_request(city="Nowhere"))
        await confirm_payment(handle)
        result = await handle.result()
        history = await handle.fetch_history()
    assert result.phase == SagaPhase.CANCELLED
    assert result.failure_type == names.NO_DEALER_AVAILABLE

    skewed = WorkflowHistory.from_json(
        handle.id, skew_tasks_after_first_assignment(history.to_json())
    )
    replay = await saga_replayer().replay_workflow(skewed, raise_on_replay_failure=False)
    assert replay.replay_failure is None, replay.replay_failure
