"""The HTTP phase: orders placed and confirmed through the API at a fixed rate (open loop).

Each tick posts ``/orders`` (with an Idempotency-Key) and, as soon as the order is there
with its payment, ``/payments/{id}/confirm``; the :class:`~tools.bench.driver.Dealer` reports the
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

from domain import names
from domain.status import OrderStatus
from store.models import OrderRow
from tools.bench.driver import order_request
from tools.bench.environment import BenchStack, compile_query, read_rows

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
    first = asyncio.get_running_loop().time()
    first_sent = time.perf_counter()
    orders = _OpenLoop(bench, http, load, tag, on_request, last_delivered=first_sent)
    delivered_sql = compile_query(
        bench.engine, select(OrderRow.id).where(col(OrderRow.status) == OrderStatus.DELIVERED.value)
    )
    watcher = asyncio.create_task(orders.watch(delivered_sql, settle_within))
    try:
        await orders.send_all(rate, first)
        orders.placing = False
        await watcher
    finally:
        watcher.cancel()
    load.delivered = len(load.e2e_seconds)
    load.seconds = orders.last_delivered - first_sent
    load.problems += [
        f"order {o} not DELIVERED within {settle_within:.0f}s" for o in orders.accepted
    ]
    return load


@dataclass
class _OpenLoop:
    """One HTTP load: the orders being placed, and the accepted ones not yet DELIVERED."""

    bench: BenchStack
    http: httpx.AsyncClient
    load: HttpLoad
    tag: str
    on_request: Callable[[], None]
    last_delivered: float  # when an order was last seen DELIVERED
    # Order id -> when its POST /orders was sent, until it is seen DELIVERED.
    accepted: dict[str, float] = field(default_factory=dict)
    placing: bool = True

    async def send_all(self, rate: float, first: float) -> None:
        """Send every order at its time, then wait for all of their answers."""
        loop = asyncio.get_running_loop()
        tasks = []
        for index in range(self.load.requested):
            # Open loop: request i leaves at first + i / rate, however slow the answers are.
            await asyncio.sleep(max(0.0, first + index / rate - loop.time()))
            tasks.append(asyncio.create_task(self.place(index)))
        await asyncio.gather(*tasks)

    async def place(self, index: int) -> None:
        """Place order ``index`` and confirm it; keep it to watch if both were accepted."""
        sent = time.perf_counter()
        try:
            order_id = await _place_and_confirm(self.http, self.load, index, f"{self.tag}-{index}")
        except httpx.HTTPError as err:
            self.load.non_2xx[f"{type(err).__name__}"] += 1
            self.load.problems.append(f"order {self.tag}-{index}: {type(err).__name__}: {err}")
            return
        finally:
            self.on_request()
        if order_id is not None:
            self.accepted[order_id] = sent

    async def watch(self, delivered_sql: str, settle_within: float) -> None:
        """See orders reach DELIVERED while they are still being placed (their e2e time)."""
        deadline = math.inf
        while self.placing or (self.accepted and time.perf_counter() < deadline):
            if not self.placing and deadline == math.inf:
                deadline = time.perf_counter() + settle_within
            rows = await asyncio.to_thread(read_rows, self.bench.engine, delivered_sql)
            now = time.perf_counter()
            for (order_id,) in rows:
                sent = self.accepted.pop(order_id, None)
                if sent is not None:
                    self.load.e2e_seconds.append(now - sent)
                    self.last_delivered = now
            await asyncio.sleep(DB_POLL_SECONDS)


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
