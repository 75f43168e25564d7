"""Duplicates and races over HTTP against the real stack: concurrent requests on one
Idempotency-Key, a confirm racing a cancel, decisions after the payment window or the saga
has ended. Every answer is a 2xx or a clear 4xx, and exactly one outcome is applied.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from api.app import create_app
from domain import names
from tests.e2e.conftest import Stack, serve
from tests.e2e.test_api_saga import ORDER, add_dealer, place_order
from tests.saga_harness import db_statuses
from worker import replay_failures_at_every_task

DECISIONS = (names.SIGNAL_CONFIRM_PAYMENT, names.SIGNAL_CANCEL_PAYMENT)


def order(**changes: Any) -> dict[str, Any]:
    return {**ORDER, "customer_id": f"race-{uuid.uuid4().hex[:12]}", **changes}


async def poll(
    http: httpx.AsyncClient,
    order_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    within: float = 20,
) -> dict[str, Any]:
    """GET /orders/{id} until ``predicate`` holds (a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + within
    while True:
        response = await http.get(f"/orders/{order_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["saga"] is not None and predicate(body):
            return body
        assert time.monotonic() < deadline, f"order never reached the expected state: {body}"
        await asyncio.sleep(0.05)


async def workflows_with_id(stack: Stack, workflow_id: str, within: float = 10) -> int:
    """How many runs the server lists under this id (waits until visibility lists one)."""
    deadline = time.monotonic() + within
    while True:
        runs = [w async for w in stack.client.list_workflows(f"WorkflowId = '{workflow_id}'")]
        if runs or time.monotonic() > deadline:
            return len(runs)
        await asyncio.sleep(0.05)


def applied_decisions(body: dict[str, Any]) -> list[str]:
    return [s["name"] for s in body["saga"]["signals"] if s["name"] in DECISIONS and s["applied"]]


def decisions_received(body: dict[str, Any]) -> int:
    return sum(1 for s in body["saga"]["signals"] if s["name"] in DECISIONS)


def settled(body: dict[str, Any]) -> bool:
    """At rest: cancelled, or past the pivot waiting for the delivery report."""
    return body["saga"]["phase"] in ("CANCELLED", "IN_TRANSIT", "DELIVERED")


# --- one Idempotency-Key ---------------------------------------------------------------


async def test_20_concurrent_posts_with_one_key_start_one_saga(stack: Stack) -> None:
    key = {"Idempotency-Key": f"race-{uuid.uuid4()}"}
    body = order()
    responses = await asyncio.gather(
        *(stack.http.post("/orders", json=body, headers=key) for _ in range(20))
    )
    assert {r.status_code for r in responses} <= {201, 202}, [r.text for r in responses]
    assert len({r.json()["order_id"] for r in responses}) == 1
    # Exactly one request started the saga; the other 19 are replays of it.
    replayed = [r.headers.get("Idempotent-Replayed") == "true" for r in responses]
    assert replayed.count(False) == 1
    order_id = responses[0].json()["order_id"]
    assert await workflows_with_id(stack, names.workflow_id_for(order_id)) == 1
    statuses = db_statuses(stack.engine, order_id)
    assert (statuses["order"], statuses["payment"], statuses["payments"]) == (
        "PENDING",
        "PENDING",
        1,
    ), ([(r.status_code, r.text[:300]) for r in responses], statuses)


async def test_one_key_raced_with_different_bodies_keeps_exactly_one(stack: Stack) -> None:
    for _ in range(3):
        key = {"Idempotency-Key": f"race-{uuid.uuid4()}"}
        tehran = order()
        # The same request written differently ("12.5" for "12.50") is the same request.
        tehran_again = {
            **tehran,
            "items": [{**i, "unit_price": i["unit_price"].rstrip("0")} for i in tehran["items"]],
        }
        isfahan = {**tehran, "city": "Isfahan"}
        bodies = [tehran, isfahan, tehran_again] * 6
        responses = await asyncio.gather(
            *(stack.http.post("/orders", json=b, headers=key) for b in bodies)
        )
        accepted = [b["city"] for b, r in zip(bodies, responses, strict=True) if r.is_success]
        assert accepted, [r.text for r in responses]
        winner = accepted[0]
        for body, response in zip(bodies, responses, strict=True):
            if body["city"] == winner:
                assert response.status_code in (201, 202), response.text
            else:
                assert response.status_code == 422, response.text
                assert "Idempotency-Key" in response.json()["detail"]
        order_ids = {r.json()["order_id"] for r in responses if r.is_success}
        assert len(order_ids) == 1
        order_id = order_ids.pop()
        stored = (await stack.http.get(f"/orders/{order_id}")).json()
        assert stored["city"] == winner
        assert await workflows_with_id(stack, names.workflow_id_for(order_id)) == 1
        assert db_statuses(stack.engine, order_id)["payments"] == 1


# --- confirm racing cancel -------------------------------------------------------------


async def test_confirm_racing_cancel_applies_exactly_one_decision(stack: Stack) -> None:
    city = f"Race City {uuid.uuid4().hex[:8]}"
    await add_dealer(stack, city, capacity=5)
    orders = await asyncio.gather(*(place_order(stack, **order(city=city)) for _ in range(5)))
    outcomes = set()
    for placed in orders:
        payment = placed["payment"]["payment_id"]
        confirm, cancel = await asyncio.gather(
            stack.http.post(f"/payments/{payment}/confirm"),
            stack.http.post(f"/payments/{payment}/cancel"),
        )
        answers = (confirm.status_code, cancel.status_code)
        assert set(answers) <= {202, 409}, (confirm.text, cancel.text)
        assert 202 in answers
        body = await poll(stack.http, placed["order_id"], settled)
        # Every decision sent was received; exactly one was applied.
        assert decisions_received(body) == answers.count(202), body["saga"]["signals"]
        applied = applied_decisions(body)
        assert len(applied) == 1, body["saga"]["signals"]
        statuses = db_statuses(stack.engine, placed["order_id"])
        if applied == [names.SIGNAL_CONFIRM_PAYMENT]:
            assert confirm.status_code == 202
            assert (statuses["payment"], statuses["order"]) == ("COMPLETED", "CONFIRMED")
            assert statuses["delivery"] == "IN_TRANSIT"
            assert body["saga"]["phase"] == "IN_TRANSIT"
        else:
            assert cancel.status_code == 202
            assert (statuses["payment"], statuses["order"]) == ("CANCELLED", "CANCELLED"), (
                statuses,
                body["saga"],
            )
            assert statuses["delivery"] is None
            assert body["saga"]["failure_type"] == "PaymentCancelled"
        assert statuses["payments"] == 1
        outcomes.add(applied[0])
    # Free the dealer's capacity for later tests: deliver what was confirmed.
    for placed in orders:
        body = (await stack.http.get(f"/orders/{placed['order_id']}")).json()
        if body["saga"]["phase"] == "IN_TRANSIT":
            delivery = body["delivery"]["delivery_id"]
            assert (await stack.http.post(f"/deliveries/{delivery}/delivered")).status_code == 202
            await poll(stack.http, placed["order_id"], lambda o: o["status"] == "DELIVERED")


async def assert_each_is_409(stack: Stack, *paths: str) -> list[httpx.Response]:
    """POST to each path: every one is a clear 409 (the saga can no longer take it)."""
    responses = []
    for path in paths:
        response = await stack.http.post(path)
        assert response.status_code == 409, (path, response.text)
        responses.append(response)
    return responses


def decisions_and_cancel(payment: str, order_id: str) -> tuple[str, ...]:
    """The calls a customer can make on an order: confirm, cancel, cancel the order."""
    payment_path = f"/payments/{payment}"
    return (f"{payment_path}/confirm", f"{payment_path}/cancel", f"/orders/{order_id}/cancel")


async def race_the_end_of_a_saga(stack: Stack) -> str:
    """Cancel, confirms and order cancels at once on a saga that cannot find a dealer.

    Every request first reads the saga (a query), so queries reach it while its steps run.
    """
    placed = await place_order(stack, **order(city="Nowhere"))
    payment, order_id = placed["payment"]["payment_id"], str(placed["order_id"])
    calls = [
        stack.http.post(f"/payments/{payment}/cancel"),
        *(stack.http.post(f"/payments/{payment}/confirm") for _ in range(3)),
        *(stack.http.post(f"/orders/{order_id}/cancel") for _ in range(3)),
    ]
    responses = await asyncio.gather(*calls)
    assert {r.status_code for r in responses} <= {202, 409}, [r.text for r in responses]
    body = await poll(stack.http, order_id, lambda o: o["saga"]["phase"] == "CANCELLED")
    assert len(applied_decisions(body)) <= 1
    # Whichever won (a confirm ends in a refund: nobody delivers to Nowhere).
    shown = ([(r.request.url.path, r.status_code) for r in responses], body)
    assert body["status"] == "CANCELLED", shown
    assert body["payment"]["status"] in ("CANCELLED", "REFUNDED"), shown
    await assert_each_is_409(stack, *decisions_and_cancel(payment, order_id))
    return order_id


async def test_decisions_racing_the_end_of_the_saga_are_never_a_5xx_and_replay(
    stack: Stack,
) -> None:
    """Customer and order cancels, and late confirms, fired while the saga unwinds and ends,
    eight sagas at a time; then every saga's history replays at every workflow task.

    In local step mode a few sagas in a hundred failed here: a query answered while a local
    step ran moved the step's result into the next workflow task, next to a cancel, and the
    replay took another path (domain.payloads.StepMode).
    """
    order_ids: list[str] = []
    for _ in range(3):
        order_ids += await asyncio.gather(*(race_the_end_of_a_saga(stack) for _ in range(8)))
    failures = {}
    for order_id in order_ids:
        handle = stack.client.get_workflow_handle(names.workflow_id_for(order_id))
        if found := await replay_failures_at_every_task(await handle.fetch_history()):
            failures[order_id] = found
    assert not failures, failures


# --- after the window, after the end ---------------------------------------------------


@pytest.fixture(scope="module")
async def short_window(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A second API on the same stack whose sagas wait 1 s for the payment decision."""
    settings = stack.settings.model_copy(update={"payment_window_seconds": 1})
    async with serve(create_app(settings)) as http:
        yield http


async def test_confirm_after_the_payment_window_closed_is_409(
    stack: Stack, short_window: httpx.AsyncClient
) -> None:
    response = await short_window.post("/orders", json=order())
    assert response.status_code == 201, response.text
    placed = response.json()
    payment, order_id = placed["payment"]["payment_id"], placed["order_id"]
    # The window closes after 1 s: the saga stops waiting and unwinds.
    await poll(stack.http, order_id, lambda o: o["saga"]["phase"] != "AWAITING_PAYMENT", within=10)
    for decision in ("confirm", "cancel"):
        late = await stack.http.post(f"/payments/{payment}/{decision}")
        assert late.status_code == 409, late.text
    body = await poll(stack.http, order_id, lambda o: o["saga"]["phase"] == "CANCELLED")
    assert body["saga"]["failure_type"] == "PaymentTimedOut"
    assert applied_decisions(body) == []
    assert (body["status"], body["payment"]["status"]) == ("CANCELLED", "CANCELLED")
    await assert_each_is_409(stack, *decisions_and_cancel(payment, order_id))
    assert db_statuses(stack.engine, order_id)["payment"] == "CANCELLED"


async def test_every_call_on_a_delivered_order_is_409(stack: Stack) -> None:
    city = f"Done City {uuid.uuid4().hex[:8]}"
    await add_dealer(stack, city)
    placed = await place_order(stack, **order(city=city))
    payment, order_id = placed["payment"]["payment_id"], placed["order_id"]
    assert (await stack.http.post(f"/payments/{payment}/confirm")).status_code == 202
    body = await poll(stack.http, order_id, lambda o: o["saga"]["phase"] == "IN_TRANSIT")
    delivery = body["delivery"]["delivery_id"]
    # Concurrent reports of the same delivery: one applied, the rest recorded or refused.
    reports = await asyncio.gather(
        *(stack.http.post(f"/deliveries/{delivery}/delivered") for _ in range(5))
    )
    assert {r.status_code for r in reports} <= {202, 409}, [r.text for r in reports]
    assert 202 in {r.status_code for r in reports}
    body = await poll(stack.http, order_id, lambda o: o["saga"]["phase"] == "DELIVERED")
    applied = [s for s in body["saga"]["signals"] if s["name"] == "mark_delivered" and s["applied"]]
    assert len(applied) == 1
    handle = stack.client.get_workflow_handle(names.workflow_id_for(order_id))
    await handle.result()  # the workflow has finished
    await assert_each_is_409(
        stack, *decisions_and_cancel(payment, order_id), f"/deliveries/{delivery}/delivered"
    )
    assert db_statuses(stack.engine, order_id)["delivery"] == "DELIVERED"


async def test_every_call_on_an_order_cancelled_for_want_of_a_dealer_is_409(stack: Stack) -> None:
    placed = await place_order(stack, **order(city="Atlantis"))
    payment, order_id = placed["payment"]["payment_id"], placed["order_id"]
    assert (await stack.http.post(f"/payments/{payment}/confirm")).status_code == 202
    body = await poll(stack.http, order_id, lambda o: o["saga"]["phase"] == "CANCELLED")
    assert body["saga"]["failure_type"] == "NoDealerAvailable"
    delivery = body["delivery"]["delivery_id"]
    await assert_each_is_409(
        stack, *decisions_and_cancel(payment, order_id), f"/deliveries/{delivery}/delivered"
    )


async def test_calls_on_a_saga_terminated_by_an_operator_are_409(stack: Stack) -> None:
    """An operator terminated the saga while it waited for payment: its last state still
    reads AWAITING_PAYMENT and the payment PENDING, but nothing can be sent to it any more."""
    placed = await place_order(stack, **order())
    payment, order_id = placed["payment"]["payment_id"], placed["order_id"]
    handle = stack.client.get_workflow_handle(names.workflow_id_for(order_id))
    await handle.terminate(reason="operator")
    for late in await assert_each_is_409(stack, *decisions_and_cancel(payment, order_id)):
        assert "ended" in late.json()["detail"]
    body = (await stack.http.get(f"/orders/{order_id}")).json()
    assert body["payment"]["status"] == "PENDING"

    # The same past the pivot: the parcel can no longer be reported delivered.
    city = f"Terminated City {uuid.uuid4().hex[:8]}"
    await add_dealer(stack, city)
    placed = await place_order(stack, **order(city=city))
    confirm = await stack.http.post(f"/payments/{placed['payment']['payment_id']}/confirm")
    assert confirm.status_code == 202, confirm.text
    body = await poll(stack.http, placed["order_id"], lambda o: o["saga"]["phase"] == "IN_TRANSIT")
    await stack.client.get_workflow_handle(body["workflow_id"]).terminate(reason="operator")
    late = await stack.http.post(f"/deliveries/{body['delivery']['delivery_id']}/delivered")
    assert late.status_code == 409, late.text
    assert "ended" in late.json()["detail"]
