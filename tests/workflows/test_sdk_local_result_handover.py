"""The SDK behaviour that keeps the saga's steps off local activities, reproduced on a tiny
workflow of its own (scripts/repro_local_activity_handover.py, the reproduction attached to
the upstream report; docs/design.md, "Steps are regular activities").

A local activity that returns while the worker answers a query is recorded with the query's
answer, but its result reaches the workflow only in the next workflow task, after a signal
that came meanwhile; a replay hands it over in the marker's own task, so the workflow takes
the other path and its history does not replay. Without the query, the same run replays.
"""

from collections.abc import AsyncIterator
from importlib.metadata import version

import pytest
from temporalio.testing import WorkflowEnvironment

from scripts.repro_local_activity_handover import RESULT_FIRST, reproduce, start_dev_server
from tests.conftest import temporal_binary


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's dev server: it buffers one query per workflow and refuses a second at once,
    which tells the reproduction when its query waits in the server (no sleep)."""
    env = await start_dev_server(temporal_binary("temporal"))
    yield env
    await env.shutdown()


async def test_a_signal_sent_while_a_local_activity_runs_replays_when_no_query_came(
    dev_server: WorkflowEnvironment,
) -> None:
    """The control: the result is handed over in the task that records it, before the signal,
    and the history replays at every workflow task."""
    repro = await reproduce(dev_server.client, query=False)
    assert repro.result == RESULT_FIRST
    assert repro.replay_failures == []


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason=(
        "temporalio 1.35.0 (Temporal CLI 1.9.1, Server 1.32.0): the result of a local activity "
        "that returns while the worker answers a query is handed to the workflow one workflow "
        "task after its marker, after a signal that came meanwhile, while a replay hands it "
        "over in the marker's task: the history fails to replay (nondeterminism). Expected: it "
        "replays at every task. An XPASS means the SDK fixed it: reconsider local steps "
        "(docs/design.md, 'Steps are regular activities')."
    ),
)
async def test_a_local_activity_that_returns_while_a_query_is_answered_replays(
    dev_server: WorkflowEnvironment,
) -> None:
    """Fails (xfail) while the SDK hands the result over late; a run that could not set up the
    interleaving is an error, never an XPASS (``SetUpError`` is no AssertionError)."""
    repro = await reproduce(dev_server.client)
    assert repro.replay_failures == [], (
        f"temporalio {version('temporalio')}: workflow {repro.workflow_id} returned "
        f"{repro.result!r}; its history ({', '.join(repro.events)}) fails to replay: "
        f"{repro.replay_failures}"
    )
