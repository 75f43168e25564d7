"""The command line (``python cli.py``), run as a user runs it, against the real stack's API.

It lists orders of both styles; shows one order with its saga's account (an orchestrated
saga's steps, a choreographed order's event log with who applied each event); follows an
order until it ends; lists and replays dead letters, one by id (a second replay fails, saying
409) or in bulk by filters; lists stuck orders with why; cancels an order before its pivot;
says why the API refused a call (401, 404, 422) instead of failing with a traceback; and its
``demo`` drives one order down each of the four paths in either style, ending each as the
saga says it must.
"""

import asyncio
import os
import re
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from domain.status import SagaStyle
from tests.e2e.conftest import OPERATOR_KEY, SecuredApi, Stack, poison_event
from tests.e2e.test_api_saga import add_dealer
from tests.e2e.test_both_styles import a_city, place
from tests.e2e.test_dead_letters import fix_the_missing_order
from tests.e2e.test_races import poll
from tests.saga_harness import DELIVERED_STEPS

ROOT = Path(__file__).resolve().parents[2]


def cli_env(stack: Stack, **changes: str) -> dict[str, str]:
    """The environment of a user of this stack: its API, and for ``demo`` its services."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("ORDERSAGA_API_KEY", "CHAOS_FAULT_DIR")
    }
    return {
        **env,
        "ORDERSAGA_API": str(stack.http.base_url).rstrip("/"),
        "DATABASE_URL": stack.settings.database_url_value,
        "NATS_URL": stack.nats.url,
        "TEMPORAL_ADDRESS": stack.settings.temporal_address,
        "AUTH_MODE": "dev",
        # The CLI talks to the stack's Temporal: it needs the stack's payload keys.
        "PAYLOAD_KEYS": ",".join(key.get_secret_value() for key in stack.settings.payload_keys),
        "PYTHONUNBUFFERED": "1",  # --follow's output is read as it is printed
        **changes,
    }


async def spawn(stack: Stack, *args: str, **env: str) -> asyncio.subprocess.Process:
    """``python cli.py *args``. The API runs in this event loop: the CLI must run beside it,
    never waited for by a blocking call."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "cli.py",
        *args,
        cwd=ROOT,
        env=cli_env(stack, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(process: asyncio.subprocess.Process, within: float) -> tuple[int, str, str]:
    """Its exit code, stdout and stderr once it exits (killed if it has not ``within``)."""
    try:
        async with asyncio.timeout(within):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def cli(stack: Stack, *args: str, within: float = 60, **env: str) -> tuple[int, str, str]:
    return await finished(await spawn(stack, *args, **env), within)


def table(output: str) -> list[list[str]]:
    """The rows of a table the CLI printed (columns are two or more spaces apart)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"})
    return [re.split(r"\s{2,}", line.strip()) for line in lines[start + 1 :] if line.strip()]


async def delivered_order(stack: Stack) -> dict[str, Any]:
    """An order of the stack's style, delivered."""
    city = a_city()
    await add_dealer(stack, city)
    placed = await place(stack, city=city)
    confirm = await stack.http.post(f"/payments/{placed['payment']['payment_id']}/confirm")
    assert confirm.status_code == 202, confirm.text
    moving = await poll(stack.http, placed["order_id"], lambda o: o["phase"] == "IN_TRANSIT")
    delivered = await stack.http.post(f"/deliveries/{moving['delivery']['delivery_id']}/delivered")
    assert delivered.status_code == 202, delivered.text
    return await poll(stack.http, placed["order_id"], lambda o: o["phase"] == "DELIVERED")


async def test_orders_lists_orders_of_both_styles(stack: Stack) -> None:
    placed = {style: await place(stack.in_style(style)) for style in SagaStyle}
    code, out, err = await cli(stack, "orders", "--limit", "10")
    assert code == 0, err
    rows = {row[0]: row for row in table(out)}
    for style, body in placed.items():
        assert rows[body["order_id"]][1:3] == ["PENDING", style], out
    assert re.search(r"^\d+ of \d+ order\(s\)$", out, re.MULTILINE), out


async def test_order_shows_an_orchestrated_sagas_steps(stack: Stack) -> None:
    body = await delivered_order(stack.in_style(SagaStyle.ORCHESTRATION))
    code, out, err = await cli(stack, "order", body["order_id"])
    assert code == 0, err
    assert f"order {body['order_id']} (orchestration): DELIVERED" in out, out
    assert "order DELIVERED  payment COMPLETED (decision CONFIRM)  delivery DELIVERED" in out, out
    assert f"Temporal Web UI: {body['workflow_url']}" in out, out
    assert f"steps: {' -> '.join(DELIVERED_STEPS)}" in out, out


async def test_order_shows_a_choreographed_orders_event_log(stack: Stack) -> None:
    body = await delivered_order(stack.in_style(SagaStyle.CHOREOGRAPHY))
    code, out, err = await cli(stack, "order", body["order_id"])
    assert code == 0, err
    assert f"order {body['order_id']} (choreography): DELIVERED" in out, out
    events = [(row[1], row[2], row[3], row[4] if len(row) > 4 else "") for row in table(out)]
    assert [(type, published) for type, _, published, _ in events] == [
        (type, "published")
        for type in (
            "order_created",
            "payment_confirmed",
            "order_confirmed",
            "delivery_assigned",
            "delivery_completed",
            "order_delivered",
        )
    ], out
    applied_by = {type: consumers for type, _, _, consumers in events}
    assert applied_by["order_created"].startswith("payments-order_created"), out
    assert applied_by["order_confirmed"].startswith("deliveries-order_confirmed"), out
    assert applied_by["order_delivered"] == "", out  # the saga's end: nobody consumes it


async def test_order_follow_shows_each_change_and_ends_with_the_order(stack: Stack) -> None:
    choreographed = stack.in_style(SagaStyle.CHOREOGRAPHY)
    placed = await place(choreographed)
    follow = await spawn(stack, "order", placed["order_id"], "--follow")
    try:
        assert follow.stdout is not None
        async with asyncio.timeout(30):
            first = await follow.stdout.readline()
        assert b"AWAITING_PAYMENT" in first, first
        cancel = await stack.http.post(f"/payments/{placed['payment']['payment_id']}/cancel")
        assert cancel.status_code == 202, cancel.text
        code, out, err = await finished(follow, within=30)
    finally:
        if follow.returncode is None:
            follow.kill()
            await follow.wait()
    assert code == 0, err
    headings = [line for line in out.splitlines() if line.startswith("order ")]
    assert headings[-1] == (
        f"order {placed['order_id']} (choreography): CANCELLED / PaymentCancelled"
    ), out


async def test_order_of_an_unknown_or_malformed_id_fails_saying_why(stack: Stack) -> None:
    code, _, err = await cli(stack, "order", str(uuid.uuid4()))
    assert (code, err.split(":")[0]) == (1, "404"), err
    code, _, err = await cli(stack, "order", "not-an-order-id")
    assert (code, err.split(":")[0]) == (1, "422"), err
    assert "order_id: Input should be a valid UUID" in err, err


async def test_a_call_the_api_refuses_fails_saying_why_not_with_a_traceback(
    stack: Stack, secured: SecuredApi
) -> None:
    api = str(secured.http.base_url).rstrip("/")
    for command in (["orders"], ["dealers", "list"], ["dead-letters", "list"]):
        code, _, err = await cli(stack, "--api", api, *command)
        assert (code, err.split(":")[0]) == (1, "401"), (command, err)
        assert "Traceback" not in err, err
    code, out, err = await cli(stack, "--api", api, "--api-key", OPERATOR_KEY, "dealers", "list")
    assert code == 0, err
    assert out.splitlines()[0].split() == ["id", "name", "phone", "province", "city", "load"]


async def test_dead_letters_are_listed_and_replayed_once(stack: Stack) -> None:
    dead = await poison_event(stack)
    code, out, err = await cli(stack, "dead-letters", "list")
    assert code == 0, err
    rows = {row[0]: row for row in table(out)}
    assert rows[dead.id][2:6] == [dead.consumer, dead.order_id, "3", "waiting"], out

    fix_the_missing_order(stack.engine, dead.order_id)
    code, out, err = await cli(stack, "dead-letters", "replay", dead.id)
    assert (code, out.strip()) == (0, f"dead letter {dead.id} queued for replay"), err
    await poll(stack.http, dead.order_id, lambda o: o["payment"] is not None)
    code, out, err = await cli(stack, "dead-letters", "replay", dead.id)
    assert code == 1
    assert err.startswith("409"), err
    code, out, err = await cli(stack, "dead-letters", "list")
    assert dead.id not in out, out
    code, out, err = await cli(stack, "dead-letters", "list", "--all")
    assert {row[0]: row for row in table(out)}[dead.id][5] == "replayed", out


# What each path of the demo ends with: order, payment, delivery, failure.
DEMO_OUTCOMES = {
    "delivered": ["DELIVERED", "COMPLETED", "DELIVERED", "-"],
    "customer cancel": ["CANCELLED", "CANCELLED", "-", "PaymentCancelled"],
    "payment timeout": ["CANCELLED", "CANCELLED", "-", "PaymentTimedOut"],
    "no dealer": ["CANCELLED", "REFUNDED", "CANCELLED", "NoDealerAvailable"],
}


@pytest.mark.parametrize("style", list(SagaStyle), ids=str)
async def test_the_demo_ends_each_path_as_the_saga_says(stack: Stack, style: SagaStyle) -> None:
    code, out, err = await cli(stack, "demo", within=120, SAGA_STYLE=style)
    assert code == 0, f"{out}\n{err}"
    rows = {row[0]: row for row in table(out)}
    assert {path: row[1:5] for path, row in rows.items()} == DEMO_OUTCOMES, out
    for row in rows.values():
        where = row[5]
        if style == SagaStyle.ORCHESTRATION:
            assert where.startswith(stack.settings.temporal_ui_url), out
        else:
            assert where.startswith("ordersaga order "), out


async def test_dead_letters_are_replayed_in_bulk_by_filters(stack: Stack) -> None:
    since = datetime.now(UTC).isoformat()
    dead = await poison_event(stack)
    fix_the_missing_order(stack.engine, dead.order_id)
    code, out, err = await cli(stack, "dead-letters", "replay")
    assert (code, err.strip()) == (2, "give a dead letter's id, filters, or --all"), err
    code, out, err = await cli(stack, "dead-letters", "replay", "--since", "last tuesday")
    assert (code, err.split(":")[0]) == (1, "422"), err
    filters = ["--consumer", dead.consumer, "--type", dead.type, "--since", since]
    code, out, err = await cli(stack, "dead-letters", "replay", *filters)
    assert (code, out.strip()) == (0, "1 dead letter(s) queued"), err
    await poll(stack.http, dead.order_id, lambda o: o["payment"] is not None)
    code, out, err = await cli(stack, "dead-letters", "replay", *filters)
    assert (code, out.strip()) == (0, "0 dead letter(s) queued"), err


async def test_stuck_lists_an_order_waiting_on_a_dead_letter_with_its_error(
    stack: Stack,
) -> None:
    dead = await poison_event(stack)
    fix_the_missing_order(stack.engine, dead.order_id)
    code, out, err = await cli(stack, "stuck")
    assert code == 0, err
    rows = {row[0]: row for row in table(out.split("\n\n")[0])}
    # Its order written, its payment not: the saga waits at its first event.
    assert rows[dead.order_id][1:3] == ["choreography", "CREATING"], out
    assert rows[dead.order_id][-1] == f"the replay of dead letter {dead.id}", out
    assert f"{dead.order_id}: {dead.consumer} could not apply order_created" in out, out
    assert re.search(r"last error \(attempt 3\): .*does not exist", out), out
    replay = await stack.http.post(f"/dead-letters/{dead.id}/replay")
    assert replay.status_code == 202, replay.text


@pytest.mark.parametrize("style", list(SagaStyle), ids=str)
async def test_cancel_cancels_an_order_before_its_pivot(stack: Stack, style: SagaStyle) -> None:
    styled = stack.in_style(style)
    placed = await place(styled)
    code, out, err = await cli(stack, "cancel", placed["order_id"])
    assert (code, out.strip()) == (
        0,
        f"order {placed['order_id']}: cancel requested; its saga compensates",
    ), err
    body = await poll(stack.http, placed["order_id"], lambda o: o["phase"] == "CANCELLED")
    assert (body["status"], body["payment"]["status"]) == ("CANCELLED", "CANCELLED"), body
    code, out, err = await cli(stack, "cancel", placed["order_id"])
    assert (code, err.split(":")[0]) == (1, "409"), err
