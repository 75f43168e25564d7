"""The HTTP phase: orders placed and confirmed through the API at a fixed rate (open loop).

Each tick posts ``/orders`` (with an Idempotency-Key) and, as soon as the order is there
with its payment, ``/payments/{id}/confirm``; the :class:`~bench.driver.Dealer` reports the
delivery over HTTP (``POST /deliveries/{id}/delivered``). The phase ends when every
accepted order is DELIVERED in the database. A request that does not get a 2xx is counted,
and its saga is a failure.
"""

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from sqlmodel import col, select

from bench.driver import order_request
from bench.environment import BenchStack, compile_query, read_rows
from domain import names
from domain.status import OrderStatus
from store.models import OrderRow

PAYMENT_WAIT_SECONDS = 30.0
PAYMENT_RETRY_SECONDS = 0.2
DB_POLL_SECONDS = 0.1


@dataclass
class HttpLoad:
    """What the phase measured (latencies in seconds, as taken)."""

    requested: int = 0
    order_seconds: list[float] = field(default_factory=list)
    confirm_seconds: list[float] = field(default_factory=list)
    e2e_seconds: list[float] = field(default_factory=list)  # POST /orders .. DELIVERED seen
    non_2xx: Counter[str] = field(default_factory=Counter)
    answered_202: int = 0
    confirm_404: int = 0  # confirms of a 202's payment before it existed (retried)
    problems: list[str] = field(default_factory=list)
    delivered: int = 0
    seconds: float = 0.0  # first request .. last order seen DELIVERED


async def http_load(
    bench: BenchStack,
    http: httpx.AsyncClient,
    *,
    rate: float,
    seconds: float,
    tag: str,
    settle_within: float,
    on_request: Callable[[], None] = lambda: None,
) -> HttpLoad:
    """Place ``rate * seconds`` orders at ``rate`` per second, then wait (at most
    ``settle_within`` seconds after the last request) until every accepted one is DELIVERED.
    ``tag`` makes the Idempotency-Keys unique to the call."""
    load = HttpLoad(requested=round(rate * seconds))
    # Order id -> when its POST /orders was sent, until it is seen DELIVERED.
    accepted: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    first = loop.time()
    first_sent = time.perf_counter()

    async def place(index: int) -> None:
        sent = time.perf_counter()
        try:
            order_id = await _place_and_confirm(http, load, index, f"{tag}-{index}")
        except httpx.HTTPError as err:
            load.non_2xx[f"{type(err).__name__}"] += 1
            load.problems.append(f"order {tag}-{index}: {type(err).__name__}: {err}")
            return
        finally:
            on_request()
        if order_id is not None:
            accepted[order_id] = sent

    delivered_sql = compile_query(
        bench.engine, select(OrderRow.id).where(col(OrderRow.status) == OrderStatus.DELIVERED.value)
    )
    placing = True
    last_delivered = first_sent

    async def watch() -> None:
        """See orders reach DELIVERED while they are still being placed (their e2e time)."""
        nonlocal last_delivered
        deadline = math.inf
        while placing or (accepted and time.perf_counter() < deadline):
            if not placing and deadline == math.inf:
                deadline = time.perf_counter() + settle_within
            rows = await asyncio.to_thread(read_rows, bench.engine, delivered_sql)
            now = time.perf_counter()
            for (order_id,) in rows:
                sent = accepted.pop(order_id, None)
                if sent is not None:
                    load.e2e_seconds.append(now - sent)
                    last_delivered = now
            await asyncio.sleep(DB_POLL_SECONDS)

    watcher = asyncio.create_task(watch())
    try:
        tasks = []
        for index in range(load.requested):
            # Open loop: request i leaves at first + i / rate, however slow the answers are.
            await asyncio.sleep(max(0.0, first + index / rate - loop.time()))
            tasks.append(asyncio.create_task(place(index)))
        await asyncio.gather(*tasks)
        placing = False
        await watcher
    finally:
        watcher.cancel()
    load.delivered = len(load.e2e_seconds)
    load.seconds = last_delivered - first_sent
    load.problems += [f"order {o} not DELIVERED within {settle_within:.0f}s" for o in accepted]
    return load


async def _place_and_confirm(
    http: httpx.AsyncClient, load: HttpLoad, index: int, key: str
) -> str | None:
    """POST /orders then confirm its payment; the order id, or None if a call failed."""
    body = order_request(index).model_dump(mode="json")
    started = time.perf_counter()
    created = await http.post("/orders", json=body, headers={"Idempotency-Key": key})
    load.order_seconds.append(time.perf_counter() - started)
    if created.status_code not in (201, 202):
        load.non_2xx[f"POST /orders {created.status_code}"] += 1
        load.problems.append(f"POST /orders answered {created.status_code}: {created.text[:200]}")
        return None
    order_id: str = created.json()["order_id"]
    if created.status_code == 201:
        payment_id: str = created.json()["payment"]["payment_id"]
    else:
        # The payment was not there within ORDER_CREATE_WAIT_SECONDS. Its id is known (one
        # payment per order, names.payment_id_for); confirm it as soon as it exists. Not by
        # polling GET /orders/{id}: each GET queries the saga, more load on a stack that is
        # already behind.
        load.answered_202 += 1
        payment_id = names.payment_id_for(order_id)
    deadline = time.perf_counter() + PAYMENT_WAIT_SECONDS
    while True:
        started = time.perf_counter()
        confirmed = await http.post(f"/payments/{payment_id}/confirm")
        if confirmed.status_code != 404 or time.perf_counter() > deadline:
            break
        load.confirm_404 += 1  # not created yet: try again shortly
        await asyncio.sleep(PAYMENT_RETRY_SECONDS)
    load.confirm_seconds.append(time.perf_counter() - started)
    if confirmed.status_code != 202:
        load.non_2xx[f"POST /payments/{{id}}/confirm {confirmed.status_code}"] += 1
        load.problems.append(
            f"confirm of order {order_id} answered {confirmed.status_code}: {confirmed.text[:200]}"
        )
        return None
    return order_id
