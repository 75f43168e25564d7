"""Stuck orders, in both styles, on the real stack: ``GET /orders/stuck`` finds an order held
at each waiting point (awaiting the customer's payment, seeking a dealer, in transit awaiting
the dealer's report) and says what it waits for; a step that keeps failing shows its last
error and attempt; a choreographed order whose event was dead-lettered shows the dead letter
and its error. Bad input is a 422, and a customer may not list them.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from temporalio import activity
from temporalio.worker import Worker

from choreography.outbox import Publisher
from choreography.runtime import connect_broker
from domain import names
from domain.payloads import (
    DeliveryRef,
    OrderItem,
    OrderProcessInput,
    OrderRequest,
    SagaTimeouts,
    ServiceQueues,
)
from domain.status import SagaStyle
from sagas import rules
from sagas.door import Sagas
from sagas.orchestration import saga_start_options
from sagas.rules import NewOrder
from store.db import transaction
from tests.e2e.conftest import SecuredApi, Stack, poison_event
from tests.e2e.test_api_saga import add_dealer
from tests.e2e.test_both_styles import a_city, place
from tests.e2e.test_dead_letters import fix_the_missing_order
from tests.e2e.test_races import poll
from workflows import OrderProcessWorkflow

# A dealer window long enough to hold an order seeking a dealer for the whole test.
HELD = SagaTimeouts(
    dealer_assignment_window=timedelta(minutes=10),
    dealer_retry_initial_interval=timedelta(seconds=30),
)
PAGE = 500


async def stuck(stack: Stack, **params: Any) -> dict[str, dict[str, Any]]:
    """Every order ``GET /orders/stuck`` lists (page by page), by order id."""
    found: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        response = await stack.http.get(
            "/orders/stuck", params={**params, "limit": PAGE, "offset": offset}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        found |= {o["order_id"]: o for o in page}
        if len(page) < PAGE:
            return found
        offset += PAGE


async def until_listed(
    stack: Stack,
    order_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    within: float = 60,
    **params: Any,
) -> dict[str, Any]:
    """The order's entry in the stuck listing once ``predicate`` holds of it."""
    deadline = time.monotonic() + within
    while True:
        entry = (await stuck(stack, **params)).get(order_id)
        if entry is not None and predicate(entry):
            return entry
        assert time.monotonic() < deadline, f"never listed as expected: {entry}"
        await asyncio.sleep(0.5)


def waiting(phase: str, what: str) -> Callable[[dict[str, Any]], bool]:
    """An entry of an order in ``phase`` waiting for ``what``."""
    return lambda entry: (entry["phase"], entry["waiting_for"]) == (phase, what)


@asynccontextmanager
async def door(stack: Stack) -> AsyncIterator[Sagas]:
    """The door of the stack's style with its own broker connection (for windows of a
    test's own, which the API does not take)."""
    broker = connect_broker(stack.settings)
    await broker.start()
    try:
        yield Sagas(
            stack.engine,
            stack.settings,
            client=stack.client,
            publisher=Publisher(stack.engine, broker),
        )
    finally:
        await broker.stop()


def request(city: str) -> OrderRequest:
    return OrderRequest(
        customer_id="stuck-customer",
        items=[OrderItem(product_id="book", quantity=1, unit_price=Decimal("9.90"))],
        province="Tehran",
        city=city,
    )


async def confirm(stack: Stack, body: dict[str, Any]) -> None:
    response = await stack.http.post(f"/payments/{body['payment']['payment_id']}/confirm")
    assert response.status_code == 202, response.text


# What each style's saga waits for at each waiting point.
WAITS = {
    SagaStyle.ORCHESTRATION: {
        "AWAITING_PAYMENT": "signal confirm_payment or cancel_payment",
        "ASSIGNING_DEALER": "the next assign_dealer attempt",
        "IN_TRANSIT": "signal mark_delivered",
    },
    SagaStyle.CHOREOGRAPHY: {
        "AWAITING_PAYMENT": "the customer's decision",
        "ASSIGNING_DEALER": "a free dealer",
        "IN_TRANSIT": "the dealer's report",
    },
}


@pytest.mark.parametrize("style", list(SagaStyle), ids=str)
async def test_an_order_held_at_each_waiting_point_is_listed_with_what_it_waits_for(
    stack: Stack, style: SagaStyle
) -> None:
    styled = stack.in_style(style)
    awaiting = await place(styled)
    # Seeking a dealer in a city no dealer serves, with a window that outlasts the test.
    async with door(styled) as sagas:
        placed = await sagas.place(request(a_city()), None, timeouts=HELD)
    seeking = await poll(styled.http, placed.order_id, lambda o: o["payment"] is not None)
    await confirm(styled, seeking)
    city = a_city()
    await add_dealer(styled, city)
    moving = await place(styled, city=city)
    await confirm(styled, moving)
    await poll(styled.http, moving["order_id"], lambda o: o["phase"] == "IN_TRANSIT")

    for body, phase in (
        (awaiting, "AWAITING_PAYMENT"),
        (seeking, "ASSIGNING_DEALER"),
        (moving, "IN_TRANSIT"),
    ):
        order_id = body["order_id"]
        entry = await until_listed(
            stack, order_id, waiting(phase, WAITS[style][phase]), older_than_seconds=0
        )
        assert entry["style"] == style, entry
        assert entry["error"] is None, entry
        if style == SagaStyle.ORCHESTRATION:
            assert entry["workflow_id"] == names.workflow_id_for(order_id), entry
    # What each why says an operator can act on: the payment, the city, the delivery.
    listed = await stuck(stack, older_than_seconds=0)
    assert awaiting["payment"]["payment_id"] in listed[awaiting["order_id"]]["why"]
    assert "no dealer with free capacity" in listed[seeking["order_id"]]["why"]
    delivery = (await stack.http.get(f"/orders/{moving['order_id']}")).json()["delivery"]
    assert f"/deliveries/{delivery['delivery_id']}/delivered" in listed[moving["order_id"]]["why"]
    # By default (no older_than_seconds), none of them is stuck yet: each is within its window.
    default = await stuck(stack)
    assert not {awaiting["order_id"], seeking["order_id"], moving["order_id"]} & set(default)

    cancelled = await stack.http.post(f"/orders/{seeking['order_id']}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    await poll(styled.http, seeking["order_id"], lambda o: o["phase"] == "CANCELLED")
    assert seeking["order_id"] not in await stuck(stack, older_than_seconds=0)


DEALERS_DOWN = "the dealers' database is read-only"


@activity.defn(name=names.ASSIGN_DEALER)
def assign_dealer_failing(_ref: DeliveryRef) -> None:
    """assign_dealer while the dealers' database refuses writes: fails on every attempt."""
    raise RuntimeError(DEALERS_DOWN)


async def test_an_orchestrated_step_that_keeps_failing_shows_its_last_error(
    stack: Stack,
) -> None:
    """A saga whose assign_dealer fails on every attempt (its deliveries run on a task queue
    of the test's own, whose worker fails it): listed as waiting for the activity, with its
    attempt and error."""
    from worker import service_activities

    queue = f"deliveries-{uuid.uuid4()}"
    real = service_activities(stack.engine)[names.DELIVERIES_TASK_QUEUE]
    activities = [a for a in real if a.__name__ != "assign_dealer"]
    order_id = str(uuid.uuid4())
    placed = request(a_city())
    with transaction(stack.engine) as db:
        rules.accept(
            db,
            NewOrder(
                order_id=order_id,
                request=placed,
                idempotency_key=None,
                fingerprint=placed.fingerprint(),
                timeouts=SagaTimeouts(),
            ),
        )
    with ThreadPoolExecutor(4) as executor:
        async with Worker(
            stack.client,
            task_queue=queue,
            activities=[*activities, assign_dealer_failing],
            activity_executor=executor,
        ):
            handle = await stack.client.start_workflow(
                OrderProcessWorkflow.run,
                OrderProcessInput(
                    order_id=order_id, request=placed, queues=ServiceQueues(deliveries=queue)
                ),
                **saga_start_options(
                    order_id, placed, task_queue=stack.settings.workflow_task_queue
                ),
            )
            try:
                body = await poll(stack.http, order_id, lambda o: o["payment"] is not None)
                await confirm(stack, body)
                entry = await until_listed(
                    stack,
                    order_id,
                    # The rows are read before Temporal is asked: both past the payment.
                    lambda e: (
                        (e["phase"], e["waiting_for"])
                        == ("ASSIGNING_DEALER", "activity assign_dealer")
                        and e["attempts"] >= 2
                    ),
                    older_than_seconds=0,
                )
            finally:
                await handle.terminate("the test is over")
    assert entry["error"] == DEALERS_DOWN, entry
    assert "has failed" in entry["why"], entry


async def test_a_choreographed_order_with_a_dead_letter_shows_it_and_its_error(
    stack: Stack,
) -> None:
    dead = await poison_event(stack)
    # Its order written afterwards, as an operator's fix would: the order waits on the event.
    fix_the_missing_order(stack.engine, dead.order_id)
    # Listed by default, however recent: a dead letter waits for an operator.
    entry = (await stuck(stack))[dead.order_id]
    assert (entry["style"], entry["dead_letter_id"], entry["consumer"]) == (
        "choreography",
        dead.id,
        dead.consumer,
    ), entry
    assert entry["waiting_for"] == f"the replay of dead letter {dead.id}", entry
    assert "does not exist" in entry["error"], entry
    assert entry["attempts"] == dead.deliveries, entry

    replay = await stack.http.post(f"/dead-letters/{dead.id}/replay")
    assert replay.status_code == 202, replay.text
    await poll(stack.http, dead.order_id, lambda o: o["payment"] is not None)
    assert dead.order_id not in await stuck(stack)


@pytest.mark.parametrize(
    "params",
    [
        {"older_than_seconds": "-1"},
        {"older_than_seconds": "soon"},
        {"older_than_seconds": "1e400"},
        {"limit": "0"},
        {"limit": "501"},
        {"offset": "-3"},
    ],
    ids=str,
)
async def test_bad_input_to_the_stuck_listing_is_a_422(
    stack: Stack, params: dict[str, str]
) -> None:
    response = await stack.http.get("/orders/stuck", params=params)
    assert response.status_code == 422, response.text


async def test_only_an_operator_lists_stuck_orders(stack: Stack, secured: SecuredApi) -> None:
    assert (await secured.http.get("/orders/stuck")).status_code == 401
    customer = await secured.http.get("/orders/stuck", headers=secured.customer("someone"))
    assert customer.status_code == 403, customer.text
    operator = await secured.http.get("/orders/stuck", headers=secured.operator())
    assert operator.status_code == 200, operator.text
