"""Sagas through the HTTP API, the same way for either saga style (and either routing).

Each saga is the customer's calls: ``POST /orders`` (with an Idempotency-Key), its confirm as
soon as the answer is in; the :class:`~tools.bench.driver.Dealer` reports the delivery over
HTTP once it is IN_TRANSIT. The saga is timed from its POST until its order is seen
DELIVERED in the database. Which style it runs in is the API's ``SAGA_STYLE``.
"""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import httpx
from sqlalchemy import Engine
from sqlmodel import col, select

from domain import names
from domain.status import DeliveryStatus, OrderStatus
from store.models import DeliveryRow, OrderRow
from tools.bench.driver import Outcome, describe, order_request
from tools.bench.environment import BenchStack, compile_query, read_rows

# An order's end is seen at most this late (the dealer polls as often).
POLL_SECONDS = 0.05
# An unloaded saga's IN_TRANSIT is seen at most this late.
IN_TRANSIT_POLL_SECONDS = 0.002
ENDED = (OrderStatus.DELIVERED.value, OrderStatus.CANCELLED.value)


def ended_among(engine: Engine, order_ids: Iterable[str]) -> str:
    """The query for (id, status) of those of ``order_ids`` that have ended: only the orders
    awaited, so a poll costs the same whatever earlier phases left in the table."""
    return compile_query(
        engine,
        select(OrderRow.id, OrderRow.status).where(
            col(OrderRow.id).in_(list(order_ids)), col(OrderRow.status).in_(ENDED)
        ),
    )


@dataclass
class OrderEnds:
    """Tells each waiting saga when its order has ended, from one poll of the database for
    all the orders awaited (the bench's reads stay the same size at any concurrency)."""

    bench: BenchStack
    _waiting: dict[str, asyncio.Future[tuple[float, str]]] = field(default_factory=dict)

    async def ended(self, order_id: str) -> tuple[float, str]:
        """When (``time.perf_counter``) the order was seen ended, and its status."""
        seen: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()
        self._waiting[order_id] = seen
        try:
            return await seen
        finally:
            self._waiting.pop(order_id, None)

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            if self._waiting:
                sql = ended_among(self.bench.engine, self._waiting)
                rows = await asyncio.to_thread(read_rows, self.bench.engine, sql)
                now = time.perf_counter()
                for order_id, status in rows:
                    seen = self._waiting.get(order_id)
                    if seen is not None and not seen.done():
                        seen.set_result((now, status))
            await asyncio.sleep(POLL_SECONDS)


@contextlib.asynccontextmanager
async def watching(bench: BenchStack) -> AsyncIterator[OrderEnds]:
    """An :class:`OrderEnds` polling in the background for the block's duration."""
    ends = OrderEnds(bench)
    polling = asyncio.create_task(ends.run())
    try:
        yield ends
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling


async def place_and_confirm(http: httpx.AsyncClient, index: int, key: str) -> str:
    """``POST /orders`` (Idempotency-Key ``key``), then its confirm as soon as the answer is
    in; returns the order id."""
    body = order_request(index).model_dump(mode="json")
    placed = await http.post("/orders", json=body, headers={"Idempotency-Key": key})
    placed.raise_for_status()
    answer = placed.json()
    payment_id = answer.get("payment_id") or answer["payment"]["payment_id"]
    confirmed = await http.post(f"/payments/{payment_id}/confirm")
    confirmed.raise_for_status()
    return str(answer["order_id"])


async def order_to_delivered(
    http: httpx.AsyncClient, ends: OrderEnds, index: int, within: float
) -> Outcome:
    """One saga through the API: placed, confirmed at once, followed until DELIVERED; a
    problem unless it is DELIVERED within ``within`` seconds of its POST."""
    key = f"bench-{uuid.uuid4()}"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(within):
            order_id = await place_and_confirm(http, index, key)
            seen_at, status = await ends.ended(order_id)
    except Exception as err:  # any failure of one saga is counted, not fatal to the run
        return Outcome(time.perf_counter() - started, f"order {key}: {describe(err)}")
    if status != OrderStatus.DELIVERED.value:
        return Outcome(seen_at - started, f"order {key} ended {status}")
    return Outcome(seen_at - started)


async def order_to_in_transit(
    http: httpx.AsyncClient, ends: OrderEnds, index: int, within: float
) -> Outcome:
    """One saga through the API, alone: placed, confirmed at once; timed from its POST until
    its delivery is seen IN_TRANSIT in the database. Returns once the order has ended (the
    :class:`~tools.bench.driver.Dealer` delivers it), so the next one runs alone too."""
    key = f"bench-{uuid.uuid4()}"
    engine = ends.bench.engine
    started = time.perf_counter()
    try:
        async with asyncio.timeout(within):
            order_id = await place_and_confirm(http, index, key)
            sql = compile_query(
                engine,
                select(DeliveryRow.status).where(
                    col(DeliveryRow.id) == names.delivery_id_for(order_id),
                    col(DeliveryRow.status) == DeliveryStatus.IN_TRANSIT.value,
                ),
            )
            while True:
                if await asyncio.to_thread(read_rows, engine, sql):
                    break
                await asyncio.sleep(IN_TRANSIT_POLL_SECONDS)
            in_transit = time.perf_counter() - started
            _, status = await ends.ended(order_id)
    except Exception as err:  # any failure of one saga is counted, not fatal to the run
        return Outcome(time.perf_counter() - started, f"order {key}: {describe(err)}")
    if status != OrderStatus.DELIVERED.value:
        return Outcome(in_transit, f"order {key} ended {status}")
    return Outcome(in_transit)


def api_client(base_url: str) -> httpx.AsyncClient:
    """An HTTP client that never queues requests behind its own pool (the loop must measure
    the API, not the client)."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(60, connect=5),
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
    )
