"""Replay the recorded history of every saga path against today's workflow code, cut at
every workflow task (what a worker rebuilding the saga gets, after a crash or an eviction).

The histories in ``tests/histories/`` are recorded by ``make histories`` with the code of
one build (``tests/histories/BUILD``). Each saga is pinned to the build it started on (Worker
Versioning), so a change of the saga's shape is a new build and never meets the old build's
sagas; but until its histories are recorded anew, a change that breaks them fails here, so
no shape changes unnoticed (docs/changing-the-saga.md). Replay runs in-process: no server.
"""

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.workflow import NondeterminismError

from tests.saga_harness import BUILD_FILE, HISTORIES_DIR, recorded_workflow_id
from tests.workflows.altered_saga import PaymentFirstSaga
from versions import code_build_id
from worker import replay_failures_at_every_task, saga_replayer

# Every saga path keeps a recorded history, ``<path>.json``.
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
)
HISTORY_FILES = sorted(HISTORIES_DIR.glob("*.json"))
RECORDED_BUILD = (HISTORIES_DIR / BUILD_FILE).read_text().strip()


def load_history(file: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(recorded_workflow_id(file.stem), file.read_text())


def test_every_saga_path_has_a_recorded_history_and_no_other_is_kept():
    assert sorted(file.stem for file in HISTORY_FILES) == sorted(PATHS), "make histories"


@pytest.mark.parametrize("file", HISTORY_FILES, ids=[file.name for file in HISTORY_FILES])
async def test_recorded_history_replays_at_every_workflow_task(file: Path):
    history = load_history(file)
    assert history.events, f"{file.name} holds no events"
    failures = await replay_failures_at_every_task(history)
    assert not failures, (
        f"{file.name}, recorded with build {RECORDED_BUILD}, does not replay on this code "
        f"(build {code_build_id()}): the saga's shape changed. If that is meant, record the "
        "histories anew (make histories) and deploy this build as a new Worker Deployment "
        f"Version (docs/changing-the-saga.md): {failures[:3]}"
    )


async def test_replay_fails_on_a_workflow_that_reorders_its_activities():
    """The replay test can fail: a run() that creates the payment before the order does not
    match any recorded history."""
    history = load_history(HISTORIES_DIR / "delivered.json")
    with pytest.raises(NondeterminismError, match=r"create_order"):
        await saga_replayer(PaymentFirstSaga).replay_workflow(history)
