"""docs/recovery.md's Temporal commands, run as the page shows them: the real ``temporal``
CLI from the venv against the stack's dev server.

An orchestrated saga awaiting its payment is terminated by mistake (as a batch terminate
with too wide a query would): ``GET /orders/stuck`` says its workflow is TERMINATED,
``temporal workflow describe`` shows it, ``temporal workflow reset --type LastWorkflowTask``
starts it again from its last workflow task, and the saga then completes: the payment
confirmed, the parcel delivered, the same saga id on its rows.
"""

import asyncio
import json
from typing import Any

from domain import names
from domain.status import SagaStyle
from tests.conftest import temporal_binary
from tests.e2e.conftest import Stack
from tests.e2e.test_api_saga import add_dealer
from tests.e2e.test_both_styles import a_city, place
from tests.e2e.test_races import poll
from tests.e2e.test_stuck_orders import until_listed


async def temporal(stack: Stack, *args: str, within: float = 60) -> str:
    """``temporal *args`` against the stack's server; its stdout (it must succeed)."""
    process = await asyncio.create_subprocess_exec(
        temporal_binary("temporal"),
        *args,
        "--address",
        stack.settings.temporal_address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(within):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, f"temporal {' '.join(args)}: {err.decode()}"
    return out.decode()


async def described(stack: Stack, workflow_id: str) -> dict[str, Any]:
    """``temporal workflow describe --output json`` of the workflow's latest run."""
    out = await temporal(stack, "workflow", "describe", "--workflow-id", workflow_id, "-o", "json")
    found: dict[str, Any] = json.loads(out)
    return found


async def test_a_saga_terminated_by_mistake_is_reset_and_then_completes(stack: Stack) -> None:
    styled = stack.in_style(SagaStyle.ORCHESTRATION)
    city = a_city()
    await add_dealer(styled, city)
    body = await place(styled, city=city)
    order_id = body["order_id"]
    workflow_id = names.workflow_id_for(order_id)
    await temporal(
        stack,
        "workflow",
        "terminate",
        "--workflow-id",
        workflow_id,
        "--reason",
        "a batch terminate with too wide a query",
    )

    # Found: the order waits for a workflow that no longer runs.
    entry = await until_listed(
        stack, order_id, lambda e: "TERMINATED" in e["why"], older_than_seconds=0
    )
    assert entry["phase"] == "AWAITING_PAYMENT", entry
    terminated = await described(stack, workflow_id)
    info = terminated["workflowExecutionInfo"]
    assert info["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED", info

    out = await temporal(
        stack,
        "workflow",
        "reset",
        "--workflow-id",
        workflow_id,
        "--type",
        "LastWorkflowTask",
        "--reason",
        "terminated by mistake",
    )
    # The new run is running, waiting for the customer again.
    running = await described(stack, workflow_id)
    info = running["workflowExecutionInfo"]
    assert info["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING", (out, info)
    assert info["execution"]["runId"] != terminated["workflowExecutionInfo"]["execution"]["runId"]
    await until_listed(
        stack,
        order_id,
        lambda e: e["waiting_for"] == "signal confirm_payment or cancel_payment",
        older_than_seconds=0,
    )

    confirm = await styled.http.post(f"/payments/{body['payment']['payment_id']}/confirm")
    assert confirm.status_code == 202, confirm.text
    moving = await poll(styled.http, order_id, lambda o: o["phase"] == "IN_TRANSIT", within=60)
    report = await styled.http.post(f"/deliveries/{moving['delivery']['delivery_id']}/delivered")
    assert report.status_code == 202, report.text
    done = await poll(styled.http, order_id, lambda o: o["phase"] == "DELIVERED", within=60)
    assert (done["status"], done["payment"]["status"], done["delivery"]["status"]) == (
        "DELIVERED",
        "COMPLETED",
        "DELIVERED",
    ), done
    handle = stack.client.get_workflow_handle(workflow_id)
    result = await asyncio.wait_for(handle.result(), timeout=60)
    assert result["phase"] == "DELIVERED", result
