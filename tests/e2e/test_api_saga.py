"""End to end: the FastAPI app over HTTP, a real worker, the real Temporal dev server."""

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import httpx
from temporalio.client import WorkflowExecutionStatus

from api.app import create_app
from domain import names
from domain.names import ORDER_STATUS
from tests.e2e.conftest import Stack
from tests.saga_harness import db_statuses

# Wait (RFC 7240) for the saga to write the order and its payment: 201 with both.
WAIT = {"Prefer": "wait=10"}

ORDER: dict[str, Any] = {
    "customer_id": "e2e-customer",
    "items": [
        {"product_id": "book", "quantity": 2, "unit_price": "12.50"},
        {"product_id": "pen", "quantity": 1, "unit_price": "3.10"},
    ],
    "province": "Tehran",
    "city": "Tehran",
}


async def eventually(
    stack: Stack, order_id: str, predicate: Callable[[dict[str, Any]], bool], within: float = 20
) -> dict[str, Any]:
    """Poll GET /orders/{id} until ``predicate`` holds (deadline, not a fixed sleep)."""
    deadline = time.monotonic() + within
    while True:
        response = await stack.http.get(f"/orders/{order_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if predicate(body):
            return body
        assert time.monotonic() < deadline, f"order never reached the expected state: {body}"
        await asyncio.sleep(0.1)


async def saga_of(http: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    """The saga's own account (steps, compensations, signals): the operator's GET
    /orders/{id}/saga (in the stack, AUTH_MODE=dev, anyone's)."""
    response = await http.get(f"/orders/{order_id}/saga")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def saga_eventually(
    http: httpx.AsyncClient,
    order_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    within: float = 20,
) -> dict[str, Any]:
    """Poll the saga's own state (GET /orders/{id}/saga) until ``predicate`` holds.

    A 503 is asked again, as its Retry-After says: the query found no worker free to answer
    in time (one replaying the sagas it has just picked up, on a busy machine), which is the
    API's documented answer, not the saga's state.
    """
    deadline = time.monotonic() + within
    while True:
        response = await http.get(f"/orders/{order_id}/saga")
        if response.status_code != 503:
            assert response.status_code == 200, response.text
            saga: dict[str, Any] = response.json()
            if predicate(saga):
                return saga
        assert time.monotonic() < deadline, (
            f"saga never reached the expected state: {response.text}"
        )
        await asyncio.sleep(0.1)


class HasApi(Protocol):
    """Anything holding a client of a running API (a stack, a drill)."""

    @property
    def http(self) -> httpx.AsyncClient: ...


async def add_dealer(api: HasApi, city: str, capacity: int = 1) -> dict[str, Any]:
    response = await api.http.post(
        "/dealers",
        json={
            "name": f"Dealer of {city}",
            "phone": f"+1 {uuid.uuid4().int % 10**9}",
            "province": "Tehran",
            "city": city,
            "capacity": capacity,
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def place_order(stack: Stack, **changes: Any) -> dict[str, Any]:
    """POST /orders waiting for its payment (``Prefer: wait``): 201 with the order, its
    payment pending."""
    response = await stack.http.post("/orders", json={**ORDER, **changes}, headers=WAIT)
    assert response.status_code == 201, response.text
    assert response.headers["Preference-Applied"] == "wait=10"
    body: dict[str, Any] = response.json()
    assert body["status"] == "PENDING"
    assert body["phase"] == "AWAITING_PAYMENT"
    assert body["payment"]["status"] == "PENDING"
    assert body["payment"]["decision"] is None
    return body


async def test_confirmed_order_is_delivered_and_frees_its_dealer(stack: Stack) -> None:
    # A city of its own: the stack's database holds other tests' dealers, and the least
    # loaded one of a shared city would be picked instead.
    city = f"Delivered City {uuid.uuid4().hex[:8]}"
    dealer = await add_dealer(stack, city, capacity=1)
    order = await place_order(stack, city=city)
    assert order["total_amount"] == "28.10"
    assert order["workflow_url"].endswith(f"/workflows/{order['workflow_id']}")

    confirm = await stack.http.post(f"/payments/{order['payment']['payment_id']}/confirm")
    assert confirm.status_code == 202, confirm.text
    body = await eventually(
        stack, order["order_id"], lambda o: (o["delivery"] or {}).get("status") == "IN_TRANSIT"
    )
    assert body["status"] == "CONFIRMED"
    assert body["payment"]["status"] == "COMPLETED"
    assert body["delivery"]["dealer_id"] == dealer["id"]
    described = await stack.client.get_workflow_handle(order["workflow_id"]).describe()
    assert described.typed_search_attributes.get(ORDER_STATUS) == "CONFIRMED"
    # The customer id stays out of the search attributes, which Temporal stores in clear.
    assert "CustomerId" not in {key.name for key, _ in described.typed_search_attributes}
    summary = await described.static_summary()
    assert summary is not None
    assert "28.10" in summary

    delivered = await stack.http.post(f"/deliveries/{body['delivery']['delivery_id']}/delivered")
    assert delivered.status_code == 202, delivered.text
    body = await eventually(stack, order["order_id"], lambda o: o["status"] == "DELIVERED")
    assert body["delivery"]["status"] == "DELIVERED"
    assert body["phase"] == "DELIVERED"
    assert body["payment"]["decision"] == "CONFIRM"
    assert db_statuses(stack.engine, order["order_id"]) == {
        "order": "DELIVERED",
        "payment": "COMPLETED",
        "delivery": "DELIVERED",
        "dealer_id": dealer["id"],
        "payments": 1,
        "deliveries": 1,
    }
    dealers = (await stack.http.get("/dealers", params={"city": city.upper()})).json()
    assert {d["id"]: d["active_deliveries"] for d in dealers}[dealer["id"]] == 0
    handle = stack.client.get_workflow_handle(order["workflow_id"])
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED


async def test_order_to_a_city_without_dealers_is_refunded_and_cancelled(stack: Stack) -> None:
    order = await place_order(stack, city="Nowhere Town")
    confirm = await stack.http.post(f"/payments/{order['payment']['payment_id']}/confirm")
    assert confirm.status_code == 202
    body = await eventually(stack, order["order_id"], lambda o: o["phase"] == "CANCELLED")
    assert body["status"] == "CANCELLED"
    assert body["payment"]["status"] == "REFUNDED"
    assert body["delivery"]["status"] == "CANCELLED"
    assert body["failure_type"] == "NoDealerAvailable"
    saga = await saga_of(stack.http, order["order_id"])
    assert saga["failure_type"] == "NoDealerAvailable"
    assert [c["name"] for c in saga["compensations"]] == [
        "cancel_delivery",
        "cancel_or_refund_payment",
        "cancel_order",
    ]
    assert db_statuses(stack.engine, order["order_id"])["payment"] == "REFUNDED"
    described = await stack.client.get_workflow_handle(order["workflow_id"]).describe()
    assert described.status == WorkflowExecutionStatus.COMPLETED
    assert described.typed_search_attributes.get(ORDER_STATUS) == "CANCELLED"


async def test_cancelling_an_order_awaiting_payment_cancels_its_payment(stack: Stack) -> None:
    order = await place_order(stack)
    response = await stack.http.post(f"/orders/{order['order_id']}/cancel")
    assert response.status_code == 202, response.text
    body = await eventually(stack, order["order_id"], lambda o: o["phase"] == "CANCELLED")
    assert body["status"] == "CANCELLED"
    assert body["failure_type"] == names.CANCELLED_ON_REQUEST
    assert body["payment"]["status"] == "CANCELLED"
    handle = stack.client.get_workflow_handle(order["workflow_id"])
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    # The payment is no longer pending: a late confirm is refused, not applied.
    late = await stack.http.post(f"/payments/{order['payment']['payment_id']}/confirm")
    assert late.status_code == 409
    again = await stack.http.post(f"/orders/{order['order_id']}/cancel")
    assert again.status_code == 409


async def test_customer_cancel_cancels_payment_and_order(stack: Stack) -> None:
    order = await place_order(stack)
    response = await stack.http.post(f"/payments/{order['payment']['payment_id']}/cancel")
    assert response.status_code == 202
    body = await eventually(stack, order["order_id"], lambda o: o["phase"] == "CANCELLED")
    assert (body["status"], body["payment"]["status"]) == ("CANCELLED", "CANCELLED")
    assert body["failure_type"] == "PaymentCancelled"
    assert body["payment"]["decision"] == "CANCEL"


async def test_same_idempotency_key_gives_the_same_order_and_one_saga(stack: Stack) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = await stack.http.post("/orders", json=ORDER, headers={**key, **WAIT})
    second = await stack.http.post("/orders", json=ORDER, headers={**key, **WAIT})
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert first.json()["order_id"] == second.json()["order_id"]
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    # Without Prefer, a replay of a written order is 200 with the order as it is.
    third = await stack.http.post("/orders", json=ORDER, headers=key)
    assert third.status_code == 200, third.text
    assert third.headers["Idempotent-Replayed"] == "true"
    assert third.json()["order_id"] == first.json()["order_id"]
    assert third.json()["payment"] == first.json()["payment"]
    workflow_id = first.json()["workflow_id"]
    runs = [w async for w in stack.client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    assert len(runs) == 1
    assert db_statuses(stack.engine, first.json()["order_id"])["payments"] == 1


async def test_bad_requests_get_clear_4xx_and_change_nothing(stack: Stack) -> None:
    before = (await stack.http.get("/orders")).json()["total"]
    bad_bodies = [
        {**ORDER, "items": []},
        {**ORDER, "items": [{"product_id": "a", "quantity": 0, "unit_price": "1.00"}]},
        {**ORDER, "items": [{"product_id": "a", "quantity": 11, "unit_price": "1.00"}]},
        {**ORDER, "items": [{"product_id": "a", "quantity": 1, "unit_price": "-1.00"}]},
        {**ORDER, "items": [{"product_id": "a", "quantity": 1, "unit_price": "1.001"}]},
        {**ORDER, "city": ""},
        {**ORDER, "unexpected": 1},
    ]
    for body in bad_bodies:
        response = await stack.http.post("/orders", json=body)
        assert response.status_code == 422, (body, response.text)
    assert (await stack.http.post("/orders", content=b"not json")).status_code == 422
    assert (await stack.http.get("/orders")).json()["total"] == before

    unknown = uuid.uuid4()
    assert (await stack.http.post(f"/payments/{unknown}/confirm")).status_code == 404
    assert (await stack.http.post(f"/payments/{unknown}/cancel")).status_code == 404
    assert (await stack.http.post(f"/deliveries/{unknown}/delivered")).status_code == 404
    assert (await stack.http.get(f"/orders/{unknown}")).status_code == 404
    assert (await stack.http.post(f"/orders/{unknown}/cancel")).status_code == 404
    assert (await stack.http.post("/payments/not-a-uuid/confirm")).status_code == 422
    assert (await stack.http.get("/orders", params={"status": "NOPE"})).status_code == 422


async def test_a_phone_number_is_one_dealer_s_and_a_second_add_is_a_conflict(
    stack: Stack,
) -> None:
    city = f"Conflict {uuid.uuid4().hex[:8]}"
    first = await add_dealer(stack, city, capacity=2)
    again = {"name": "Another", "phone": first["phone"], "province": "Qom", "city": city}

    response = await stack.http.post("/dealers", json={**again, "capacity": 5})

    assert response.status_code == 409, response.text
    assert response.json() == {"detail": f"a dealer with phone {first['phone']} exists already"}
    listed = (await stack.http.get("/dealers", params={"city": city})).json()
    assert listed == [first]


async def test_readiness_reports_database_temporal_and_the_broker(stack: Stack) -> None:
    response = await stack.http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "database": "ok", "temporal": "ok", "broker": "ok"}


async def test_same_idempotency_key_with_another_body_is_refused(stack: Stack) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = await stack.http.post("/orders", json=ORDER, headers={**key, **WAIT})
    assert first.status_code == 201, first.text
    # The same order written differently is the same request...
    same = {
        **ORDER,
        "items": [{**i, "unit_price": i["unit_price"].rstrip("0")} for i in ORDER["items"]],
    }
    replayed = await stack.http.post("/orders", json=same, headers=key)
    assert replayed.status_code == 200, replayed.text
    assert replayed.headers["Idempotent-Replayed"] == "true"
    # ...another one is not, and changes nothing.
    other = {**ORDER, "city": "Isfahan"}
    refused = await stack.http.post("/orders", json=other, headers=key)
    assert refused.status_code == 422
    assert "Idempotency-Key" in refused.json()["detail"]
    body = (await stack.http.get(f"/orders/{first.json()['order_id']}")).json()
    assert body["city"] == "Tehran"


async def test_without_a_worker_an_order_is_accepted_with_202_and_can_be_polled(
    stack: Stack,
) -> None:
    # Nobody polls this task queue: the saga starts durably but no step runs yet.
    settings = stack.settings.model_copy(
        update={
            "workflow_task_queue": f"nobody-polls-{uuid.uuid4()}",
            "order_create_wait_seconds": 0.5,
            "query_timeout_seconds": 1,
        }
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
    ):
        # Even asked to wait, it answers 202 once the wait runs out.
        response = await http.post("/orders", json=ORDER, headers=WAIT)
        assert response.status_code == 202, response.text
        assert response.headers["Preference-Applied"] == "wait=0.5"
        accepted = response.json()
        order_id = accepted["order_id"]
        assert (accepted["status"], accepted["order_url"]) == ("PENDING", f"/orders/{order_id}")
        assert accepted["payment_id"]
        assert response.headers["Location"] == f"/orders/{order_id}"
        polled = await http.get(response.headers["Location"])
        assert polled.status_code == 200, polled.text
        assert (polled.json()["status"], polled.json()["phase"]) == (None, "CREATING")
        assert (polled.json()["payment"], polled.json()["customer_id"]) == (
            None,
            ORDER["customer_id"],
        )
        handle = stack.client.get_workflow_handle(polled.json()["workflow_id"])
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        await handle.terminate("test cleanup: no worker will ever run it")


async def test_while_temporal_is_unreachable_mutations_answer_503_not_500(stack: Stack) -> None:
    # Nothing listens on this port: the API still starts (lazy client) and says why it fails.
    settings = stack.settings.model_copy(update={"temporal_address": "127.0.0.1:1"})
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
    ):
        response = await http.post("/orders", json=ORDER)
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"]
        assert (await http.get("/readyz")).status_code == 503
