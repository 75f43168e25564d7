"""Simulated customers and dealers: each saga follows one scenario through the HTTP API.

Clients behave as a careful real client would: every POST /orders carries an
Idempotency-Key, and any transport error or 503 is retried with the same request. What the
API *accepted* (201/202) is remembered, so the checks can prove nothing accepted was lost.
"""

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

SCENARIOS: dict[str, float] = {
    "confirm_deliver": 0.35,  # confirm, then the dealer reports delivered
    "confirm_keep": 0.05,  # confirm, never report delivered (legitimately waiting)
    "contended_city": 0.10,  # confirm in a city with little dealer capacity
    "no_dealer_city": 0.12,  # confirm in a city without dealers: refund, cancel
    "cancel_payment": 0.15,  # the customer cancels the payment
    "no_answer": 0.10,  # the payment window closes
    "cancel_order": 0.13,  # the order is cancelled before its pivot
}
CITIES = {"contended_city": "Isfahan", "no_dealer_city": "Atlantis"}
TERMINAL = {"DELIVERED", "CANCELLED"}


@dataclass
class Saga:
    """One simulated order and what the API accepted for it."""

    index: int
    scenario: str
    key: str
    order_id: str | None = None
    payment_id: str | None = None
    accepted: list[str] = field(default_factory=list)
    final: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


class Api:
    """HTTP calls with retries; counts every 5xx (503 is fine, anything else is a bug)."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(30, connect=5))
        self.statuses: Counter[int] = Counter()
        self.server_errors: list[str] = []

    async def close(self) -> None:
        await self.http.aclose()

    async def call(
        self, method: str, url: str, *, within: float = 120, **kwargs: Any
    ) -> httpx.Response:
        """Retry transport errors and 503s until ``within`` seconds pass."""
        deadline = time.monotonic() + within
        delay = 0.2
        while True:
            try:
                response = await self.http.request(method, url, **kwargs)
                self.statuses[response.status_code] += 1
                if response.status_code >= 500 and response.status_code != 503:
                    self.server_errors.append(
                        f"{method} {url} -> {response.status_code}: {response.text[:200]}"
                    )
                if response.status_code < 500:
                    return response
            except httpx.TransportError:
                self.statuses[0] += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {url} kept failing for {within}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3)

    async def order(self, order_id: str) -> dict[str, Any]:
        response = await self.call("GET", f"/orders/{order_id}")
        body: dict[str, Any] = response.json()
        return body


def pick_scenario(rng: random.Random) -> str:
    return rng.choices(list(SCENARIOS), weights=list(SCENARIOS.values()))[0]


async def run_saga(api: Api, saga: Saga, rng: random.Random, settle_within: float) -> None:
    """Drive one saga to its end (or to its legitimate wait), recording what was accepted."""
    order_id = await place_order(api, saga, order_body(saga, rng), settle_within)
    if order_id is None:
        return
    await customer_move(api, saga)
    if saga.scenario in ("confirm_deliver", "contended_city"):
        await deliver_when_in_transit(api, saga, order_id, settle_within)
    saga.final = await wait_for_end(api, saga, order_id, settle_within)


def order_body(saga: Saga, rng: random.Random) -> dict[str, Any]:
    """The saga's POST /orders body: random items, in the city its scenario calls for."""
    city = CITIES.get(saga.scenario, "Tehran")
    return {
        "customer_id": f"customer-{saga.index % 37}",
        "items": [
            {
                "product_id": f"p{rng.randrange(50)}",
                "quantity": rng.randint(1, 10),
                "unit_price": f"{rng.randint(1, 99999) / 100:.2f}",
            }
            for _ in range(rng.randint(1, 4))
        ],
        "province": "Isfahan" if city == "Isfahan" else "Tehran" if city == "Tehran" else "Nowhere",
        "city": city,
    }


async def place_order(
    api: Api, saga: Saga, body: dict[str, Any], settle_within: float
) -> str | None:
    """POST /orders (Idempotency-Key), learn its payment: the order id, None if refused."""
    created = await api.call("POST", "/orders", json=body, headers={"Idempotency-Key": saga.key})
    if created.status_code not in (201, 202):
        saga.problems.append(f"POST /orders answered {created.status_code}: {created.text[:200]}")
        return None
    saga.accepted.append("order")
    order_id: str = created.json()["order_id"]
    saga.order_id = order_id
    order = (
        created.json()
        if created.status_code == 201
        else await wait_for(api, order_id, lambda o: o.get("payment") is not None, settle_within)
    )
    saga.payment_id = order["payment"]["payment_id"]
    return order_id


async def customer_move(api: Api, saga: Saga) -> None:
    """What the customer of the scenario does: confirm, cancel the payment or the order."""
    if saga.scenario in ("confirm_deliver", "confirm_keep", "contended_city", "no_dealer_city"):
        await decide(api, saga, "confirm")
    elif saga.scenario == "cancel_payment":
        await decide(api, saga, "cancel")
    elif saga.scenario == "cancel_order":
        response = await api.call("POST", f"/orders/{saga.order_id}/cancel")
        if response.status_code == 202:
            saga.accepted.append("cancel_order")
        elif response.status_code != 409:
            saga.problems.append(f"order cancel answered {response.status_code}")


async def deliver_when_in_transit(
    api: Api, saga: Saga, order_id: str, settle_within: float
) -> None:
    """Wait for the saga's pivot (or its end), then report the parcel delivered as its dealer."""
    order = await wait_for(
        api,
        order_id,
        lambda o: o["saga"] and o["saga"]["phase"] in ("IN_TRANSIT", *TERMINAL),
        settle_within,
    )
    if order["saga"]["phase"] == "IN_TRANSIT":
        await report_delivered(api, saga, order["delivery"]["delivery_id"], settle_within)


async def wait_for_end(api: Api, saga: Saga, order_id: str, settle_within: float) -> dict[str, Any]:
    """The order once its saga ended (``confirm_keep``: once it waits in transit)."""
    keep_waiting = saga.scenario == "confirm_keep"
    return await wait_for(
        api,
        order_id,
        lambda o: (
            o["saga"] is not None
            and (
                o["saga"]["phase"] in TERMINAL
                or (keep_waiting and o["saga"]["phase"] == "IN_TRANSIT")
            )
        ),
        settle_within,
    )


async def decide(api: Api, saga: Saga, decision: str) -> None:
    response = await api.call("POST", f"/payments/{saga.payment_id}/{decision}")
    if response.status_code == 202:
        saga.accepted.append(decision)
    elif response.status_code == 409:
        # A retry of a request that did go through finds the decision taken: fine. Any other
        # 409 (the window closed first) is a refusal, which the client hears about.
        if f"{decision}_payment" in response.text or (
            "COMPLETED" in response.text and decision == "confirm"
        ):
            saga.accepted.append(decision)
    else:
        saga.problems.append(f"{decision} answered {response.status_code}: {response.text[:200]}")


async def report_delivered(api: Api, saga: Saga, delivery_id: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        response = await api.call("POST", f"/deliveries/{delivery_id}/delivered")
        if response.status_code == 202:
            saga.accepted.append("delivered")
            return
        if "is DELIVERED" in response.text:
            saga.accepted.append("delivered")  # an earlier attempt went through
            return
        if time.monotonic() > deadline:
            saga.problems.append(f"delivered refused: {response.text[:200]}")
            return
        await asyncio.sleep(0.3)


async def wait_for(api: Api, order_id: str, predicate: Any, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        order = await api.order(order_id)
        if predicate(order):
            return order
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"order {order_id} stuck: {order.get('saga', {}) and order['saga']['phase']}"
            )
        await asyncio.sleep(0.25)
