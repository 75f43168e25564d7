"""The shared scenarios, once per saga style: the same HTTP calls get the same answers and
leave the same rows whether the order runs as a Temporal workflow (orchestration, its steps
routed to the saga's own worker or to each service's) or as events between the services on
NATS JetStream (choreography).

Each scenario asserts what a customer and the shop see (status codes, the order view, the
rows), then what the style's own account says (the workflow's state and the queues of its
steps, or the order's event log), so a style that reached the right rows the wrong way still
fails.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import col, func, select

from api.app import create_app
from domain.status import SagaStyle
from store.db import session
from store.models import InboxRow, OutboxRow
from tests.e2e.conftest import Stack, assert_routed, serve
from tests.e2e.test_api_saga import ORDER, WAIT, add_dealer
from tests.e2e.test_races import poll
from tests.saga_harness import db_statuses, dealer_load


def order(**changes: Any) -> dict[str, Any]:
    return {**ORDER, "customer_id": f"both-{uuid.uuid4().hex[:12]}", **changes}


def a_city() -> str:
    return f"City {uuid.uuid4().hex[:10]}"


async def place(stack: Stack, **changes: Any) -> dict[str, Any]:
    """POST /orders with ``Prefer: wait``: 201, the order PENDING with its PENDING payment, in
    the stack's style (an orchestrated saga's steps so far on its routing's queues)."""
    response = await stack.http.post("/orders", json=order(**changes), headers=WAIT)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert (body["status"], body["phase"], body["style"]) == (
        "PENDING",
        "AWAITING_PAYMENT",
        stack.style,
    )
    assert (body["payment"]["status"], body["payment"]["decision"]) == ("PENDING", None)
    await assert_routed(stack, body["order_id"])
    return body


async def account(stack: Stack, order_id: str) -> Any:
    """The operator's GET /orders/{id}/saga: a workflow's state, or an order's event log."""
    response = await stack.http.get(f"/orders/{order_id}/saga")
    assert response.status_code == 200, response.text
    return response.json()


async def assert_events(stack: Stack, order_id: str, *expected: str) -> None:
    """A choreographed order's event log names ``expected`` in that order (each applied by
    every service that consumes it, none dead-lettered); an orchestrated order's saga
    scheduled every step on the queues of its routing."""
    if stack.style != SagaStyle.CHOREOGRAPHY:
        await assert_routed(stack, order_id)
        return
    log: list[dict[str, Any]] = await account(stack, order_id)
    assert [e["type"] for e in log] == list(expected), log
    assert all(e["published_at"] is not None and not e["dead_letters"] for e in log), log


async def test_a_confirmed_order_is_delivered_and_frees_its_dealer(styled: Stack) -> None:
    city = a_city()
    dealer = await add_dealer(styled, city)
    placed = await place(styled, city=city)
    confirm = await styled.http.post(f"/payments/{placed['payment']['payment_id']}/confirm")
    assert confirm.status_code == 202, confirm.text
    moving = await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "IN_TRANSIT")
    assert (moving["status"], moving["payment"]["status"]) == ("CONFIRMED", "COMPLETED")
    assert moving["delivery"]["dealer_id"] == dealer["id"]
    assert dealer_load(styled.engine, dealer["id"]) == 1
    delivery_id = moving["delivery"]["delivery_id"]
    delivered = await styled.http.post(f"/deliveries/{delivery_id}/delivered")
    assert delivered.status_code == 202, delivered.text
    body = await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "DELIVERED")
    assert (body["status"], body["delivery"]["status"], body["failure_type"]) == (
        "DELIVERED",
        "DELIVERED",
        None,
    )
    assert db_statuses(styled.engine, placed["order_id"]) == {
        "order": "DELIVERED",
        "payment": "COMPLETED",
        "delivery": "DELIVERED",
        "dealer_id": dealer["id"],
        "payments": 1,
        "deliveries": 1,
    }
    assert dealer_load(styled.engine, dealer["id"]) == 0
    # The same report again: answered alike, and nothing changes.
    again = await styled.http.post(f"/deliveries/{delivery_id}/delivered")
    assert again.status_code == 202, again.text
    if styled.style == SagaStyle.ORCHESTRATION:
        saga = await account(styled, placed["order_id"])
        assert saga["phase"] == "DELIVERED"
    await assert_events(
        styled,
        placed["order_id"],
        "order_created",
        "payment_confirmed",
        "order_confirmed",
        "delivery_assigned",
        "delivery_completed",
        "order_delivered",
    )


async def test_the_customer_cancels_the_payment_and_the_order_is_cancelled(
    styled: Stack,
) -> None:
    placed = await place(styled)
    payment_id = placed["payment"]["payment_id"]
    cancel = await styled.http.post(f"/payments/{payment_id}/cancel")
    assert cancel.status_code == 202, cancel.text
    body = await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "CANCELLED")
    assert (body["status"], body["payment"]["status"], body["payment"]["decision"]) == (
        "CANCELLED",
        "CANCELLED",
        "CANCEL",
    )
    assert body["failure_type"] == "PaymentCancelled"
    assert body["delivery"] is None
    # The same decision again: the same answer; the other one: 409 naming the winner.
    assert (await styled.http.post(f"/payments/{payment_id}/cancel")).status_code == 202
    late = await styled.http.post(f"/payments/{payment_id}/confirm")
    assert late.status_code == 409, late.text
    assert "(CANCEL)" in late.json()["detail"]
    await assert_events(
        styled, placed["order_id"], "order_created", "payment_cancelled", "order_cancelled"
    )


@pytest.fixture
async def short_window(styled: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An API placing orders as ``styled`` does, whose orders give the customer 1 s to
    decide."""
    async with serve(
        create_app(styled.settings.model_copy(update={"payment_window_seconds": 1}))
    ) as http:
        yield http


async def test_no_decision_within_the_window_cancels_and_a_late_one_is_409(
    styled: Stack, short_window: httpx.AsyncClient
) -> None:
    response = await short_window.post("/orders", json=order(), headers=WAIT)
    assert response.status_code == 201, response.text
    placed = response.json()
    assert placed["style"] == styled.style
    payment_id = placed["payment"]["payment_id"]
    body = await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "CANCELLED")
    assert (body["status"], body["payment"]["status"], body["payment"]["decision"]) == (
        "CANCELLED",
        "CANCELLED",
        "TIMEOUT",
    )
    assert body["failure_type"] == "PaymentTimedOut"
    for decision in ("confirm", "cancel"):
        late = await styled.http.post(f"/payments/{payment_id}/{decision}")
        assert late.status_code == 409, late.text
        assert "(TIMEOUT)" in late.json()["detail"]
    await assert_events(
        styled, placed["order_id"], "order_created", "payment_expired", "order_cancelled"
    )


async def test_no_dealer_within_the_window_refunds_then_cancels(styled: Stack) -> None:
    placed = await place(styled, city=a_city())  # nobody delivers there
    confirm = await styled.http.post(f"/payments/{placed['payment']['payment_id']}/confirm")
    assert confirm.status_code == 202, confirm.text
    body = await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "CANCELLED")
    assert (body["status"], body["payment"]["status"], body["delivery"]["status"]) == (
        "CANCELLED",
        "REFUNDED",
        "CANCELLED",
    )
    assert body["failure_type"] == "NoDealerAvailable"
    assert db_statuses(styled.engine, placed["order_id"])["payments"] == 1
    if styled.style == SagaStyle.ORCHESTRATION:
        saga = await account(styled, placed["order_id"])
        assert [c["name"] for c in saga["compensations"]] == [
            "cancel_delivery",
            "cancel_or_refund_payment",
            "cancel_order",
        ]
    await assert_events(
        styled,
        placed["order_id"],
        "order_created",
        "payment_confirmed",
        "order_confirmed",
        "delivery_failed",
        "payment_refunded",
        "order_cancelled",
    )


async def test_a_dealer_freed_within_the_window_takes_the_waiting_order(styled: Stack) -> None:
    city = a_city()
    dealer = await add_dealer(styled, city)
    first = await place(styled, city=city)
    await styled.http.post(f"/payments/{first['payment']['payment_id']}/confirm")
    moving = await poll(styled.http, first["order_id"], lambda o: o["phase"] == "IN_TRANSIT")
    # The only dealer is busy: the second order waits for one...
    second = await place(styled, city=city)
    await styled.http.post(f"/payments/{second['payment']['payment_id']}/confirm")
    await poll(styled.http, second["order_id"], lambda o: o["phase"] == "ASSIGNING_DEALER")
    # ...and gets them once the first parcel is delivered, within the window.
    delivered = await styled.http.post(f"/deliveries/{moving['delivery']['delivery_id']}/delivered")
    assert delivered.status_code == 202, delivered.text
    body = await poll(styled.http, second["order_id"], lambda o: o["phase"] != "ASSIGNING_DEALER")
    assert body["phase"] == "IN_TRANSIT", body
    assert body["delivery"]["dealer_id"] == dealer["id"]


async def test_an_operator_cancel_before_the_payment_cancels_it(styled: Stack) -> None:
    placed = await place(styled)
    response = await styled.http.post(f"/orders/{placed['order_id']}/cancel")
    assert response.status_code == 202, response.text
    body = await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "CANCELLED")
    assert (body["status"], body["payment"]["status"], body["failure_type"]) == (
        "CANCELLED",
        "CANCELLED",
        "CancelledOnRequest",
    )
    late = await styled.http.post(f"/payments/{placed['payment']['payment_id']}/confirm")
    assert late.status_code == 409, late.text
    assert (await styled.http.post(f"/orders/{placed['order_id']}/cancel")).status_code == 409


async def test_an_operator_cancel_while_a_dealer_is_sought_refunds_the_payment(
    styled: Stack,
) -> None:
    city = a_city()
    dealer = await add_dealer(styled, city)
    busy = await place(styled, city=city)
    await styled.http.post(f"/payments/{busy['payment']['payment_id']}/confirm")
    await poll(styled.http, busy["order_id"], lambda o: o["phase"] == "IN_TRANSIT")
    placed = await place(styled, city=city)
    await styled.http.post(f"/payments/{placed['payment']['payment_id']}/confirm")
    await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "ASSIGNING_DEALER")
    response = await styled.http.post(f"/orders/{placed['order_id']}/cancel")
    assert response.status_code == 202, response.text
    body = await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "CANCELLED")
    assert (body["payment"]["status"], body["delivery"]["status"], body["failure_type"]) == (
        "REFUNDED",
        "CANCELLED",
        "CancelledOnRequest",
    )
    assert dealer_load(styled.engine, dealer["id"]) == 1  # still the first order's parcel


async def test_an_operator_cancel_after_the_pivot_is_409_and_the_order_goes_on(
    styled: Stack,
) -> None:
    city = a_city()
    await add_dealer(styled, city)
    placed = await place(styled, city=city)
    await styled.http.post(f"/payments/{placed['payment']['payment_id']}/confirm")
    moving = await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "IN_TRANSIT")
    response = await styled.http.post(f"/orders/{placed['order_id']}/cancel")
    assert response.status_code == 409, response.text
    delivered = await styled.http.post(f"/deliveries/{moving['delivery']['delivery_id']}/delivered")
    assert delivered.status_code == 202, delivered.text
    body = await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "DELIVERED")
    assert body["payment"]["status"] == "COMPLETED"


async def test_of_racing_confirms_and_cancels_exactly_one_wins(styled: Stack) -> None:
    """20 races, confirm first and cancel first, on payments written: one 202 each, the
    other a 409 naming the winner; the order ends as the winner says."""
    outcomes = set()
    for i in range(20):
        placed = await place(styled, city=a_city())  # no dealer: a confirm ends refunded
        payment_id = placed["payment"]["payment_id"]
        calls = [
            styled.http.post(f"/payments/{payment_id}/confirm"),
            styled.http.post(f"/payments/{payment_id}/cancel"),
        ]
        if i % 2:
            calls.reverse()
        answers = await asyncio.gather(*calls)
        won = [a for a in answers if a.status_code == 202]
        lost = [a for a in answers if a.status_code != 202]
        assert (len(won), [a.status_code for a in lost]) == (1, [409]), [a.text for a in answers]
        winner = won[0].request.url.path.rsplit("/", 1)[1].upper()
        assert f"({winner})" in lost[0].json()["detail"]
        body = await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "CANCELLED")
        expected = (
            ("REFUNDED", "NoDealerAvailable")
            if winner == "CONFIRM"
            else (
                "CANCELLED",
                "PaymentCancelled",
            )
        )
        assert (body["payment"]["status"], body["failure_type"]) == expected
        assert body["payment"]["decision"] == winner
        outcomes.add(winner)
    assert outcomes == {"CONFIRM", "CANCEL"}


async def test_one_idempotency_key_is_one_order_and_one_saga(styled: Stack) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    body = order()
    answers = await asyncio.gather(
        *(styled.http.post("/orders", json=body, headers=key) for _ in range(10))
    )
    assert {a.status_code for a in answers} <= {200, 202}, [a.text for a in answers]
    assert len({a.json()["order_id"] for a in answers}) == 1
    order_id = answers[0].json()["order_id"]
    # One request placed the order; the others are replays of it (202 while it is being
    # written, 200 once it is).
    replayed = [a.headers.get("Idempotent-Replayed") == "true" for a in answers]
    assert replayed.count(False) == 1, [(a.status_code, a.headers) for a in answers]
    await poll(styled.http, order_id, lambda o: o["phase"] == "AWAITING_PAYMENT")
    replay = await styled.http.post("/orders", json=body, headers=key)
    assert (replay.status_code, replay.headers["Idempotent-Replayed"]) == (200, "true")
    assert replay.json()["style"] == styled.style
    other = await styled.http.post("/orders", json={**body, "city": "Isfahan"}, headers=key)
    assert other.status_code == 422, other.text
    assert db_statuses(styled.engine, order_id)["payments"] == 1
    await assert_routed(styled, order_id)
    if styled.style == SagaStyle.CHOREOGRAPHY:
        with session(styled.engine) as db:
            created = db.exec(
                select(func.count())
                .select_from(OutboxRow)
                .where(OutboxRow.order_id == order_id, OutboxRow.type == "order_created")
            ).one()
        assert created == 1


async def test_bad_input_is_a_clear_4xx_and_changes_nothing(styled: Stack) -> None:
    before = (await styled.http.get("/orders")).json()["total"]
    for body in (
        {**ORDER, "items": []},
        {**ORDER, "items": [{"product_id": "a", "quantity": True, "unit_price": "1.00"}]},
        {**ORDER, "items": [{"product_id": "a", "quantity": 1, "unit_price": "1.001"}]},
        {**ORDER, "city": ""},
        {**ORDER, "unexpected": 1},
    ):
        response = await styled.http.post("/orders", json=body)
        assert response.status_code == 422, (body, response.text)
    unknown = uuid.uuid4()
    for path in (
        f"/payments/{unknown}/confirm",
        f"/payments/{unknown}/cancel",
        f"/deliveries/{unknown}/delivered",
        f"/orders/{unknown}/cancel",
    ):
        assert (await styled.http.post(path)).status_code == 404, path
    assert (await styled.http.get("/orders")).json()["total"] == before


async def test_orders_of_both_styles_live_side_by_side(stack: Stack) -> None:
    """Each order keeps its style: the API of either style steers and reads both."""
    placed = {style: await place(stack.in_style(style)) for style in SagaStyle}
    for style, body in placed.items():
        for reader in SagaStyle:
            read = await stack.apis[reader].get(f"/orders/{body['order_id']}")
            assert read.json()["style"] == style
        # Decided through the API of the other style: still applied in its own.
        other = stack.apis[next(s for s in SagaStyle if s != style)]
        response = await other.post(f"/payments/{body['payment']['payment_id']}/cancel")
        assert response.status_code == 202, response.text
        done = await poll(other, body["order_id"], lambda o: o["phase"] == "CANCELLED")
        assert done["failure_type"] == "PaymentCancelled"
    orchestrated = placed[SagaStyle.ORCHESTRATION]
    choreographed = placed[SagaStyle.CHOREOGRAPHY]
    assert orchestrated["workflow_id"]
    assert choreographed["workflow_id"] is None
    assert choreographed["events"] is not None
    with session(stack.engine) as db:
        consumed = db.exec(
            select(func.count())
            .select_from(InboxRow)
            .where(col(InboxRow.order_id) == orchestrated["order_id"])
        ).one()
    assert consumed == 0  # no event ever concerned the orchestrated order
