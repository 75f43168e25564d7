"""Sagas through the API in a closed loop, the same way for either saga style.

Each saga is the customer's and the dealer's calls: ``POST /orders`` (with an
Idempotency-Key), its confirm as soon as the answer is in, then the
:class:`~tools.bench.driver.Dealer` reports the delivery over HTTP once it is IN_TRANSIT; the
saga is timed from its POST until its order is seen DELIVERED in the database (what
``GET /orders/{id}`` reads). Which style it runs in is the API's (its ``SAGA_STYLE``): the
orchestration API starts a Temporal workflow, the choreography API writes the order and its
first event and lets the services' consumers take it from there.

One :class:`OrderEnds` polls the database for every saga in flight at once (one query every
POLL_SECONDS, not one per saga), so the bench's own reads stay the same size at any
concurrency.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field

import httpx
from sqlalchemy.exc import SQLAlchemyError

from domain.status import OrderStatus
from tools.bench.api_load import ApiCalls, decide, ended_among, place_order
from tools.bench.driver import Outcome, closed_loop, guarded
from tools.bench.environment import BenchStack, read_rows
from tools.bench.progress import Progress

# The dealer's poll period too: an order's end is seen at most this late, in either style.
POLL_SECONDS = 0.05


@dataclass
class OrderEnds:
    """Tells each waiting saga when its order has ended (DELIVERED or CANCELLED), from one
    poll of the database for all the orders awaited."""

    bench: BenchStack
    _waiting: dict[str, asyncio.Future[tuple[float, str]]] = field(default_factory=dict)

    async def ended(self, order_id: str, within: float) -> tuple[float, str]:
        """When (``time.perf_counter``) the order was seen ended, and its status.
        TimeoutError after ``within`` seconds."""
        seen: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()
        self._waiting[order_id] = seen
        try:
            async with asyncio.timeout(within):
                return await seen
        finally:
            self._waiting.pop(order_id, None)

    async def run(self) -> None:
        """Poll until cancelled (only while some order is awaited)."""
        while True:
            if self._waiting:
                sql = ended_among(self.bench.engine, self._waiting)
                try:
                    rows = await asyncio.to_thread(read_rows, self.bench.engine, sql)
                except SQLAlchemyError as err:
                    # Fail the sagas waiting now (each counted as failed), not leave them to
                    # wait out their timeout; the next poll serves the others.
                    for waiter in self._waiting.values():
                        if not waiter.done():
                            waiter.set_exception(err)
                    rows = []
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


async def order_to_delivered(
    http: httpx.AsyncClient, ends: OrderEnds, calls: ApiCalls, index: int, key: str, within: float
) -> Outcome:
    """One saga through the API: placed with ``key``, confirmed at once, followed until it is
    DELIVERED. A problem unless it is DELIVERED within ``within`` seconds of its POST; each
    call's latency goes to ``calls``."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(within):
            placed = await place_order(http, calls, index, key)
            if placed is None or not await decide(http, calls, placed, confirm=True):
                # The refusal place_order or decide has just recorded (no await since).
                return Outcome(time.perf_counter() - started, calls.problems[-1])
            seen_at, status = await ends.ended(placed.order_id, within)
    except httpx.HTTPError as err:
        calls.non_2xx[type(err).__name__] += 1
        return Outcome(time.perf_counter() - started, f"order {key}: {type(err).__name__}: {err}")
    except TimeoutError:
        return Outcome(time.perf_counter() - started, f"order {key} not DELIVERED in time")
    except SQLAlchemyError as err:
        return Outcome(time.perf_counter() - started, f"order {key}: database read: {err}")
    if status != OrderStatus.DELIVERED.value:
        return Outcome(seen_at - started, f"order {placed.order_id} ended {status}")
    return Outcome(seen_at - started)


async def api_closed_loop(
    bench: BenchStack,
    http: httpx.AsyncClient,
    *,
    total: int,
    concurrency: int,
    tag: str,
    within: float,
    label: str,
    quiet: bool,
) -> tuple[list[Outcome], ApiCalls]:
    """``total`` sagas through the API at ``http``, ``concurrency`` in flight
    (:func:`~tools.bench.driver.closed_loop`), each as :func:`order_to_delivered` with the
    Idempotency-Key ``<tag>-<i>``; stopped with BenchError if a process of the stack dies.
    Returns each saga's outcome and the calls made."""
    calls = ApiCalls()
    async with watching(bench) as ends:

        def one(index: int) -> Awaitable[Outcome]:
            return order_to_delivered(http, ends, calls, index, f"{tag}-{index}", within)

        async with Progress(label, total, enabled=not quiet) as bar:
            outcomes = await guarded(bench, closed_loop(total, concurrency, one, bar))
    return outcomes, calls
