"""Simulated customers and dealers: each saga follows one scenario through the HTTP API.

Clients behave as a careful real client would: every POST /orders carries an
Idempotency-Key, and any transport error or 503 is retried with the same request. What the
API *accepted* (200/201/202) is remembered, so the checks can prove nothing accepted was
lost; what it refused with a reason (a 409 naming the payment decision that won) too, so
the checks can prove the reason true.

Half the customers wait for their payment when they order (``Prefer: wait``, 201 with the
order); the others take the 202 (the order's and its payment's ids) and decide at once,
before the saga has written the payment.
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
# How a 409 names the payment decision that won (``payment X was already confirmed
# (CONFIRM)``): the decision a customer's route asks for, and every one that can win.
DECISIONS = {"confirm": "CONFIRM", "cancel": "CANCEL"}
WINNERS = ("CONFIRM", "CANCEL", "TIMEOUT")
WAIT_FOR_PAYMENT = {"Prefer": "wait=5"}


@dataclass
class Saga:
    """One simulated order and what the API accepted for it."""

    index: int
    scenario: str
    key: str
    order_id: str | None = None
    payment_id: str | None = None
    accepted: list[str] = field(default_factory=list)
    # Payment decisions refused because another one had won: (asked for, the winner named).
    refused: list[tuple[str, str]] = field(default_factory=list)
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
        """Retry transport errors, 503s and 429s (after their Retry-After) until ``within``
        seconds pass."""
        deadline = time.monotonic() + within
        delay = 0.2
        while True:
            wait = delay
            try:
                response = await self.http.request(method, url, **kwargs)
                self.statuses[response.status_code] += 1
                if response.status_code >= 500 and response.status_code != 503:
                    self.server_errors.append(
                        f"{method} {url} -> {response.status_code}: {response.text[:200]}"
                    )
                if response.status_code == 429:
                    wait = float(response.headers["Retry-After"])
                elif response.status_code < 500:
                    return response
            except httpx.TransportError:
                self.statuses[0] += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {url} kept failing for {within}s")
            await asyncio.sleep(wait)
            delay = min(delay * 2, 3)

    async def order(self, order_id: str) -> dict[str, Any]:
        response = await self.call("GET", f"/orders/{order_id}")
        body: dict[str, Any] = response.json()
        return body


def pick_scenario(rng: random.Random) -> str:
    return rng.choices(list(SCENARIOS), weights=list(SCENARIOS.values()))[0]


async def run_saga(api: Api, saga: Saga, rng: random.Random, settle_within: float) -> None:
    """Drive one saga to its end (or to its legitimate wait), recording what was accepted."""
    wait = rng.random() < 0.5
    order_id = await place_order(api, saga, order_body(saga, rng), settle_within, wait=wait)
    if order_id is None:
        return
    await customer_move(api, saga, settle_within)
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
    api: Api, saga: Saga, body: dict[str, Any], settle_within: float, *, wait: bool
) -> str | None:
    """POST /orders (Idempotency-Key; with ``wait``, waiting for the payment), learn its
    payment's id: the order id, None if refused.

    202: accepted, with the payment's id (the payment itself may not exist yet); 201: the
    order with its payment; 200: a retry's replay, the order as it is (its payment may not
    be written yet: then it is waited for)."""
    headers = {"Idempotency-Key": saga.key, **(WAIT_FOR_PAYMENT if wait else {})}
    created = await api.call("POST", "/orders", json=body, headers=headers)
    if created.status_code not in (200, 201, 202):
        saga.problems.append(f"POST /orders answered {created.status_code}: {created.text[:200]}")
        return None
    saga.accepted.append("order")
    answer: dict[str, Any] = created.json()
    order_id: str = answer["order_id"]
    saga.order_id = order_id
    payment_id = answer.get("payment_id") or (answer.get("payment") or {}).get("payment_id")
    if payment_id is None:
        order = await wait_for(api, order_id, lambda o: o["payment"] is not None, settle_within)
        payment_id = order["payment"]["payment_id"]
    saga.payment_id = payment_id
    return order_id


async def customer_move(api: Api, saga: Saga, settle_within: float) -> None:
    """What the customer of the scenario does: confirm, cancel the payment or the order."""
    if saga.scenario in ("confirm_deliver", "confirm_keep", "contended_city", "no_dealer_city"):
        await decide(api, saga, "confirm")
    elif saga.scenario == "cancel_payment":
        await decide(api, saga, "cancel")
    elif saga.scenario == "cancel_order":
        # The order is cancelled once it is written (placed and awaiting its payment), as
        # customers see it; a cancel before the saga has written the order is a separate
        # case (tests/e2e/test_fast_answers.py).
        assert saga.order_id is not None
        await wait_for(api, saga.order_id, lambda o: o["phase"] != "CREATING", settle_within)
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
        api, order_id, lambda o: o["phase"] in ("IN_TRANSIT", *TERMINAL), settle_within
    )
    if order["phase"] == "IN_TRANSIT":
        await report_delivered(api, saga, order["delivery"]["delivery_id"], settle_within)


async def wait_for_end(api: Api, saga: Saga, order_id: str, settle_within: float) -> dict[str, Any]:
    """The order once its saga ended (``confirm_keep``: once it waits in transit)."""
    keep_waiting = saga.scenario == "confirm_keep"
    return await wait_for(
        api,
        order_id,
        lambda o: o["phase"] in TERMINAL or (keep_waiting and o["phase"] == "IN_TRANSIT"),
        settle_within,
    )


async def decide(api: Api, saga: Saga, decision: str) -> None:
    """Confirm or cancel the payment. Exactly one decision wins: a 409 names the winner.

    A 409 naming the client's own decision (a retry whose first attempt went through, its
    answer lost) means it was accepted; one naming another (the window closed first: TIMEOUT)
    is a refusal the client hears about, remembered with the winner it names. Any other 409
    (the payment or its saga is past deciding) is a refusal too.
    """
    response = await api.call("POST", f"/payments/{saga.payment_id}/{decision}")
    if response.status_code == 202:
        saga.accepted.append(decision)
    elif response.status_code == 409:
        detail = str(response.json().get("detail", ""))
        named = [w for w in WINNERS if f"({w})" in detail]
        if named == [DECISIONS[decision]]:
            saga.accepted.append(decision)
        elif named:
            saga.refused.append((DECISIONS[decision], named[0]))
    else:
        saga.problems.append(f"{decision} answered {response.status_code}: {response.text[:200]}")


async def report_delivered(api: Api, saga: Saga, delivery_id: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        response = await api.call("POST", f"/deliveries/{delivery_id}/delivered")
        if response.status_code == 202:  # the same report again is answered alike
            saga.accepted.append("delivered")
            return
        if time.monotonic() > deadline:
            saga.problems.append(f"delivered refused: {response.text[:200]}")
            return
        await asyncio.sleep(0.3)


class DeadLetteredError(Exception):
    """The order's choreographed saga stopped at a dead letter: it waits for a person (an
    operator who replays the event)."""


def dead_letter_of(order: dict[str, Any]) -> str | None:
    """What stopped a choreographed order: the first event a consumer dead-lettered."""
    for entry in order.get("events") or []:
        for dead in entry.get("dead_letters") or []:
            if dead.get("replayed_at") is None:
                return f"{dead['consumer']} could not apply {entry['type']}: {dead['error']}"
    return None


async def wait_for(api: Api, order_id: str, predicate: Any, within: float) -> dict[str, Any]:
    """The order once ``predicate`` holds. :class:`TimeoutError` after ``within`` seconds;
    :class:`DeadLetteredError` at once when its saga stopped at a dead letter."""
    deadline = time.monotonic() + within
    while True:
        order = await api.order(order_id)
        if predicate(order):
            return order
        if (dead := dead_letter_of(order)) is not None:
            raise DeadLetteredError(f"order {order_id} waits for a person: {dead}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"order {order_id} stuck in {order.get('phase')}")
        await asyncio.sleep(0.25)
