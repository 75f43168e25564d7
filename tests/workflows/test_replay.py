"""Replay the recorded history of every saga path against today's workflow code.

A change to ``workflows/`` that would break sagas already running (a step added, removed
or reordered, a timer changed, without ``workflow.patched``) makes these replays fail.
The histories in ``tests/histories/`` are recorded by ``python -m tests.workflows.record_histories``
(``make histories``); refresh them only for a deliberately incompatible change. Replay
runs in-process: no server.
"""

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.workflow import NondeterminismError

from tests.saga_harness import HISTORIES_DIR, recorded_workflow_id
from tests.workflows.altered_saga import PaymentFirstSaga
from worker import saga_replayer
from workflows import OrderProcessWorkflow

# Every saga path must keep at least one recorded history (``<path>.json``, or
# ``<path>-<anything>.json`` for histories kept from older versions of the workflow).
PATHS = (
    "delivered",
    "customer_cancel",
    "payment_timeout",
    "no_dealer",
    "workflow_cancelled_awaiting_payment",
    "workflow_cancelled_assigning_dealer",
    "cancel_ignored_after_pivot",
    "compensation_retried",
    "late_and_duplicate_signals",
    # The same saga in local step mode (markers instead of activity events).
    "local_delivered",
    "local_customer_cancel",
    "local_no_dealer",
    "local_workflow_cancelled_assigning_dealer",
    "local_late_and_duplicate_signals",
)
HISTORY_FILES = sorted(HISTORIES_DIR.glob("*.json"))


def load_history(file: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(recorded_workflow_id(file.stem), file.read_text())


def test_every_saga_path_has_a_recorded_history():
    stems = {file.stem for file in HISTORY_FILES}
    missing = [
        path
        for path in PATHS
        if not any(stem == path or stem.startswith(f"{path}-") for stem in stems)
    ]
    assert not missing, f"no history in {HISTORIES_DIR} for: {missing} (make histories)"


@pytest.mark.parametrize("file", HISTORY_FILES, ids=[file.name for file in HISTORY_FILES])
async def test_recorded_history_replays_deterministically(file: Path):
    history = load_history(file)
    assert history.events, f"{file.name} holds no events"
    await saga_replayer(OrderProcessWorkflow).replay_workflow(history)


async def test_replay_fails_on_a_workflow_that_reorders_its_activities():
    """The replay test can fail: a run() that creates the payment before the order does not
    match any recorded history."""
    history = load_history(HISTORIES_DIR / "delivered.json")
    with pytest.raises(NondeterminismError, match=r"create_order"):
        await saga_replayer(PaymentFirstSaga).replay_workflow(history)
