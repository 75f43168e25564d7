"""Orders through the API: the calls a customer makes, and the open loop of the ``http`` phase.

A customer posts ``/orders`` (with an Idempotency-Key) and gets **202** with the order id
and its payment id as soon as Temporal has durably accepted the saga; they decide at once,
without waiting for the payment to exist: ``/payments/{id}/confirm``, or for one order in
``cancel_every`` ``/payments/{id}/cancel``. The :class:`~tools.bench.driver.Dealer` reports
each delivery over HTTP (``POST /deliveries/{id}/delivered``). The open loop ends when every
confirmed order is DELIVERED and every cancelled one CANCELLED in the database. A request
that does not get its 2xx is counted, and its saga is a failure; so is a saga that ends the
other way.
"""

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx
from sqlalchemy import Engine
from sqlmodel import col, select

from domain.payloads import OrderRequest
from domain.status import OrderStatus
from store.models import OrderRow
from tools.bench.driver import order_request
from tools.bench.environment import BenchStack, compile_query, read_rows

DB_POLL_SECONDS = 0.1
ENDED = (OrderStatus.DELIVERED.value, OrderStatus.CANCELLED.value)


def ended_among(engine: Engine, order_ids: Iterable[str]) -> str:
    """The query for (id, status) of those of ``order_ids`` that have ended.

    A poll asks only for the orders it still awaits: asking for every ended order made each
    poll's cost grow with what the earlier phases left in the table (about 1,000 orders by
    the ``http`` phase of a full run, 1,500 by the choreography's; 3,000 cost 5.5 ms of CPU a
    poll, ten polls a second), in the bench's process, on the cores of the stack it
    measures."""
    return compile_query(
        engine,
        select(OrderRow.id, OrderRow.status).where(
            col(OrderRow.id).in_(list(order_ids)), col(OrderRow.status).in_(ENDED)
        ),
    )


@dataclass
class ApiCalls:
    """The customer's calls and what they answered (latencies in seconds, as taken)."""

    order_seconds: list[float] = field(default_factory=list)  # POST /orders
    confirm_seconds: list[float] = field(default_factory=list)  # POST /payments/{id}/confirm
    cancel_seconds: list[float] = field(default_factory=list)  # POST /payments/{id}/cancel
    order_answers: Counter[str] = field(default_factory=Counter)  # POST /orders by status
    non_2xx: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def refused(self, call: str, response: httpx.Response, what: str) -> None:
        self.non_2xx[f"{call} {response.status_code}"] += 1
        self.problems.append(f"{what} answered {response.status_code}: {response.text[:200]}")


@dataclass(frozen=True)
class Placed:
    """An order the API accepted: its id and its payment's, as the 202 gave them."""

    order_id: str
    payment_id: str


async def place_order(
    http: httpx.AsyncClient,
    calls: ApiCalls,
    index: int,
    key: str,
    request: OrderRequest | None = None,
) -> Placed | None:
    """POST /orders (``request``, by default the bench's order ``index``); the ids of the
    order the API accepted (202, or a 201/200 carrying the order), None if it refused."""
    body = (request or order_request(index)).model_dump(mode="json")
    started = time.perf_counter()
    created = await http.post("/orders", json=body, headers={"Idempotency-Key": key})
    calls.order_seconds.append(time.perf_counter() - started)
    calls.order_answers[str(created.status_code)] += 1
    if created.status_code not in (200, 201, 202):
        calls.refused("POST /orders", created, f"POST /orders of {key}")
        return None
    answer = created.json()
    payment_id = answer.get("payment_id") or answer["payment"]["payment_id"]
    return Placed(answer["order_id"], payment_id)


async def decide(
    http: httpx.AsyncClient, calls: ApiCalls, placed: Placed, *, confirm: bool
) -> bool:
    """Confirm (or cancel) the order's payment; whether the API took it (202)."""
    verb = "confirm" if confirm else "cancel"
    started = time.perf_counter()
    answered = await http.post(f"/payments/{placed.payment_id}/{verb}")
    (calls.confirm_seconds if confirm else calls.cancel_seconds).append(
        time.perf_counter() - started
    )
    if answered.status_code != 202:
        calls.refused(
            f"POST /payments/{{id}}/{verb}", answered, f"{verb} of order {placed.order_id}"
        )
        return False
    return True


def cancels(index: int, cancel_every: int) -> bool:
    """Whether order ``index`` is cancelled rather than confirmed (one in ``cancel_every``;
    0: none)."""
    return cancel_every > 0 and index % cancel_every == cancel_every - 1


@dataclass
class HttpLoad(ApiCalls):
    """What the open loop measured."""

    requested: int = 0
    e2e_seconds: list[float] = field(default_factory=list)  # POST /orders .. DELIVERED seen
    cancelled: int = 0  # cancelled orders seen CANCELLED
    seconds: float = 0.0  # first request .. last order seen ended


async def http_load(
    bench: BenchStack,
    http: httpx.AsyncClient,
    *,
    rate: float,
    seconds: float,
    tag: str,
    settle_within: float,
    cancel_every: int,
    on_request: Callable[[], None] = lambda: None,
) -> HttpLoad:
    """Place ``rate * seconds`` orders at ``rate`` per second, each decided at once, then
    wait (at most ``settle_within`` seconds after the last request) until every accepted
    one has ended as decided. ``tag`` makes the Idempotency-Keys unique to the call."""
    load = HttpLoad(requested=round(rate * seconds))
    first = asyncio.get_running_loop().time()
    first_sent = time.perf_counter()
    orders = _OpenLoop(bench, http, load, tag, cancel_every, on_request, last_ended=first_sent)
    watcher = asyncio.create_task(orders.watch(settle_within))
    try:
        await orders.send_all(rate, first)
        orders.placing = False
        await watcher
    finally:
        watcher.cancel()
    load.seconds = orders.last_ended - first_sent
    load.problems += [
        f"order {o} not {expected} within {settle_within:.0f}s"
        for o, (_, expected) in orders.accepted.items()
    ]
    return load


@dataclass
class _OpenLoop:
    """One HTTP load: the orders being placed, and the accepted ones not yet ended."""

    bench: BenchStack
    http: httpx.AsyncClient
    load: HttpLoad
    tag: str
    cancel_every: int
    on_request: Callable[[], None]
    last_ended: float  # when an order was last seen ended
    # Order id -> when its POST /orders was sent and how it must end, until it is seen ended.
    accepted: dict[str, tuple[float, str]] = field(default_factory=dict)
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
        """Place order ``index`` and decide it; keep it to watch if both were accepted."""
        sent = time.perf_counter()
        key = f"{self.tag}-{index}"
        confirm = not cancels(index, self.cancel_every)
        try:
            placed = await place_order(self.http, self.load, index, key)
            if placed is None or not await decide(self.http, self.load, placed, confirm=confirm):
                return
        except httpx.HTTPError as err:
            self.load.non_2xx[f"{type(err).__name__}"] += 1
            self.load.problems.append(f"order {key}: {type(err).__name__}: {err}")
            return
        finally:
            self.on_request()
        expected = OrderStatus.DELIVERED if confirm else OrderStatus.CANCELLED
        self.accepted[placed.order_id] = (sent, expected.value)

    async def watch(self, settle_within: float) -> None:
        """See orders end while they are still being placed (their e2e time)."""
        deadline = math.inf
        while self.placing or (self.accepted and time.perf_counter() < deadline):
            if not self.placing and deadline == math.inf:
                deadline = time.perf_counter() + settle_within
            if not self.accepted:
                await asyncio.sleep(DB_POLL_SECONDS)
                continue
            ended_sql = ended_among(self.bench.engine, self.accepted)
            rows = await asyncio.to_thread(read_rows, self.bench.engine, ended_sql)
            now = time.perf_counter()
            for order_id, status in rows:
                watched = self.accepted.pop(order_id, None)
                if watched is None:
                    continue
                sent, expected = watched
                self.last_ended = now
                if status != expected:
                    self.load.problems.append(f"order {order_id} ended {status}, not {expected}")
                elif status == OrderStatus.DELIVERED.value:
                    self.load.e2e_seconds.append(now - sent)
                else:
                    self.load.cancelled += 1
            await asyncio.sleep(DB_POLL_SECONDS)
