"""Fast, definite answers, end to end: an order is accepted (202) as soon as Temporal has
durably started its saga, or answered with its payment (201) when the client asks to wait
(``Prefer: wait``); its payment can be decided from the first moment, before the saga has
written it; and no read or step of a customer's order costs a workflow query.
"""

import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from temporalio.client import (
    Interceptor,
    OutboundInterceptor,
    QueryWorkflowInput,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)

from api.app import create_app
from domain import names
from domain.payloads import SagaState
from tests.e2e.conftest import Stack, saga_worker, serve
from tests.e2e.test_api_saga import ORDER, WAIT, add_dealer
from tests.e2e.test_races import applied_decisions, poll
from tests.saga_harness import db_statuses


class QueryCounter(Interceptor):
    """Counts the workflow queries of the client it is given to (and lets them through)."""

    def __init__(self) -> None:
        self.queries: Counter[str] = Counter()

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _CountingOutbound(next, self.queries)


class _CountingOutbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, queries: Counter[str]) -> None:
        super().__init__(next)
        self._queries = queries

    async def query_workflow(self, input: QueryWorkflowInput) -> Any:
        self._queries[input.query] += 1
        return await super().query_workflow(input)


def order(**changes: Any) -> dict[str, Any]:
    return {**ORDER, "customer_id": f"fast-{uuid.uuid4().hex[:12]}", **changes}


ACCEPTED_FIELDS = {"order_id", "payment_id", "status", "detail", "order_url"}


def assert_accepted(response: httpx.Response) -> dict[str, Any]:
    """A 202: the saga is started; the order's and its payment's ids, where to poll."""
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ACCEPTED_FIELDS, body
    order_id = body["order_id"]
    assert (body["status"], body["order_url"]) == ("PENDING", f"/orders/{order_id}")
    assert body["payment_id"] == names.payment_id_for(order_id)
    assert response.headers["Location"] == body["order_url"]
    return body


async def test_prefer_wait_answers_201_with_the_payment_and_without_it_202_with_its_id(
    stack: Stack,
) -> None:
    waited = await stack.http.post("/orders", json=order(), headers=WAIT)
    assert waited.status_code == 201, waited.text
    assert waited.headers["Preference-Applied"] == "wait=10"
    body = waited.json()
    assert waited.headers["Location"] == f"/orders/{body['order_id']}"
    assert (body["status"], body["phase"], body["failure_type"]) == (
        "PENDING",
        "AWAITING_PAYMENT",
        None,
    )
    assert body["payment"] == {
        "payment_id": names.payment_id_for(body["order_id"]),
        "status": "PENDING",
        "amount": "28.10",
        "decision": None,
    }
    # A longer wait than the server allows is cut to its limit (ORDER_CREATE_WAIT_SECONDS).
    capped = await stack.http.post("/orders", json=order(), headers={"Prefer": "wait=3600"})
    assert capped.status_code == 201, capped.text
    assert capped.headers["Preference-Applied"] == "wait=10"

    plain = await stack.http.post("/orders", json=order())
    accepted = assert_accepted(plain)
    assert "Preference-Applied" not in plain.headers
    # A preference the server cannot read is ignored (RFC 7240): accepted, not waited for.
    # "²" (Latin-1 B2) is a digit to str.isdigit, not to float(): it answered 500.
    for prefer in (b"wait=soon", b"respond-async", b"wait=", b"wait=\xb2", b"wait=1.5", b"wait=-1"):
        unread = await stack.http.post("/orders", json=order(), headers=[(b"Prefer", prefer)])
        assert_accepted(unread)
        assert "Preference-Applied" not in unread.headers, prefer
    # The payment the 202 named is the one its saga writes.
    written = await poll(stack.http, accepted["order_id"], lambda o: o["phase"] != "CREATING")
    assert written["phase"] == "AWAITING_PAYMENT"
    assert written["payment"]["payment_id"] == accepted["payment_id"]


async def test_a_confirm_sent_right_after_the_202_counts_before_the_payment_exists(
    stack: Stack,
) -> None:
    # The saga runs on a worker of the test's own, started only after the confirm: the
    # payment certainly does not exist when the confirm is taken.
    queue = f"early-{uuid.uuid4()}"
    city = f"Early City {uuid.uuid4().hex[:8]}"
    await add_dealer(stack, city)
    settings = stack.settings.model_copy(update={"workflow_task_queue": queue})
    async with serve(create_app(settings)) as http:
        accepted = assert_accepted(await http.post("/orders", json=order(city=city)))
        order_id, payment_id = accepted["order_id"], accepted["payment_id"]
        confirm = await http.post(f"/payments/{payment_id}/confirm")
        assert confirm.status_code == 202, confirm.text
        assert confirm.json()["order_id"] == order_id
        assert db_statuses(stack.engine, order_id)["payments"] == 0
        body = (await http.get(f"/orders/{order_id}")).json()
        assert (body["phase"], body["status"], body["payment"]) == ("CREATING", None, None)
        # The decision is taken: the other one is refused, naming it.
        cancel = await http.post(f"/payments/{payment_id}/cancel")
        assert cancel.status_code == 409, cancel.text
        assert "already confirmed (CONFIRM)" in cancel.json()["detail"]

        async with saga_worker(stack, queue):
            body = await poll(http, order_id, lambda o: o["phase"] == "IN_TRANSIT")
            assert (body["status"], body["payment"]["status"]) == ("CONFIRMED", "COMPLETED")
            assert body["payment"]["decision"] == "CONFIRM"
            delivered = await http.post(f"/deliveries/{body['delivery']['delivery_id']}/delivered")
            assert delivered.status_code == 202, delivered.text
            handle = stack.client.get_workflow_handle(
                names.workflow_id_for(order_id), result_type=SagaState
            )
            result = await handle.result()
            saga = (await http.get(f"/orders/{order_id}/saga")).json()
    assert (result.phase, result.payment_status) == ("DELIVERED", "COMPLETED")
    assert len(applied_decisions(saga)) == 1, saga["signals"]
    assert "confirm" in applied_decisions(saga)[0]
    statuses = db_statuses(stack.engine, order_id)
    assert (statuses["order"], statuses["payment"], statuses["delivery"]) == (
        "DELIVERED",
        "COMPLETED",
        "DELIVERED",
    )


async def test_no_workflow_query_answers_an_order_from_placing_to_delivered(
    stack: Stack,
) -> None:
    """Everything a customer and a dealer do to an order, through an API whose Temporal
    client counts its workflow queries: none. The operator's view of the saga is one."""
    counter = QueryCounter()
    city = f"Queryless {uuid.uuid4().hex[:8]}"
    await add_dealer(stack, city)
    body = order(city=city)
    async with serve(create_app(stack.settings, temporal_interceptors=[counter])) as http:
        accepted = assert_accepted(await http.post("/orders", json=body))
        order_id, payment_id = accepted["order_id"], accepted["payment_id"]
        await poll(http, order_id, lambda o: o["phase"] == "AWAITING_PAYMENT")
        confirm = await http.post(f"/payments/{payment_id}/confirm")
        assert confirm.status_code == 202, confirm.text
        again = await http.post(f"/payments/{payment_id}/confirm")
        assert again.status_code == 202, again.text
        refused = await http.post(f"/payments/{payment_id}/cancel")
        assert refused.status_code == 409, refused.text
        in_transit = await poll(http, order_id, lambda o: o["phase"] == "IN_TRANSIT")
        delivery = in_transit["delivery"]["delivery_id"]
        delivered = await http.post(f"/deliveries/{delivery}/delivered")
        assert delivered.status_code == 202, delivered.text
        done = await poll(http, order_id, lambda o: o["phase"] == "DELIVERED")
        assert (done["status"], done["payment"]["status"]) == ("DELIVERED", "COMPLETED")
        listed = await http.get("/orders", params={"customer_id": body["customer_id"]})
        assert [(o["order_id"], o["status"]) for o in listed.json()["items"]] == [
            (order_id, "DELIVERED")
        ]
        late = await http.post(f"/orders/{order_id}/cancel")
        assert late.status_code == 409, late.text
        # The same report again: answered alike (no query, no signal either).
        again = await http.post(f"/deliveries/{delivery}/delivered")
        assert again.status_code == 202, again.text

        # Waiting for the payment (update-with-start), a replay, an order cancel.
        key = {"Idempotency-Key": f"queryless-{uuid.uuid4()}"}
        other = order(city=city)
        waited = await http.post("/orders", json=other, headers={**key, **WAIT})
        assert waited.status_code == 201, waited.text
        replay = await http.post("/orders", json=other, headers=key)
        assert replay.status_code == 200, replay.text
        other_id = waited.json()["order_id"]
        cancel = await http.post(f"/orders/{other_id}/cancel")
        assert cancel.status_code == 202, cancel.text
        await poll(http, other_id, lambda o: o["phase"] == "CANCELLED")

        assert counter.queries == Counter(), counter.queries
        # The counter does see queries: the operator's view of the saga is one.
        saga = await http.get(f"/orders/{order_id}/saga")
        assert saga.status_code == 200, saga.text
        assert saga.json()["phase"] == "DELIVERED"
        assert sum(counter.queries.values()) == 1, counter.queries


async def test_an_order_cancelled_before_its_saga_wrote_it_reads_cancelled(
    stack: Stack,
) -> None:
    queue = f"cancelled-early-{uuid.uuid4()}"
    settings = stack.settings.model_copy(update={"workflow_task_queue": queue})
    async with serve(create_app(settings)) as http:
        accepted = assert_accepted(await http.post("/orders", json=order()))
        order_id = accepted["order_id"]
        cancel = await http.post(f"/orders/{order_id}/cancel")
        assert cancel.status_code == 202, cancel.text
        handle = stack.client.get_workflow_handle(names.workflow_id_for(order_id))
        async with saga_worker(stack, queue):
            with pytest.raises(WorkflowFailureError):
                await handle.result()
        assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
        body = (await http.get(f"/orders/{order_id}")).json()
        assert (body["phase"], body["failure_type"]) == ("CANCELLED", names.CANCELLED_ON_REQUEST), (
            body
        )
