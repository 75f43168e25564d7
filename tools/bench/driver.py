"""Drive sagas (through the door, :class:`sagas.door.Sagas`) and baselines, and play the dealers.

Closed loops keep a fixed number of workflows in flight and time each from its first call to
its result. The customer's confirm follows the placement at once; the :class:`Dealer` reports
each parcel delivered as soon as the database shows it in transit.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import httpx
from sqlmodel import col, select
from temporalio.client import WorkflowHandle

from domain import names
from domain.payloads import OrderItem, OrderRequest, SagaState, SagaTimeouts
from domain.status import Decision, DeliveryStatus, OrderStatus, SagaPhase
from sagas.door import Sagas
from store.models import DeliveryRow
from tools.bench.baseline import STEPS, start_baseline
from tools.bench.environment import CITY, PROVINCE, BenchStack, compile_query, read_rows
from tools.bench.progress import Progress

T = TypeVar("T")


def order_request(index: int) -> OrderRequest:
    """The order every bench saga places (a few customers, one item, the seeded city)."""
    return OrderRequest(
        customer_id=f"bench-{index % 37}",
        items=[OrderItem(product_id="book", quantity=2, unit_price=Decimal("12.50"))],
        province=PROVINCE,
        city=CITY,
    )


@dataclass(frozen=True)
class Outcome:
    """One workflow driven to its end: seconds from its first call to its result, and what
    went wrong (None when it ended as it should)."""

    seconds: float
    problem: str | None = None


async def place_and_confirm(sagas: Sagas, index: int, timeouts: SagaTimeouts) -> str:
    """Place the bench's order ``index`` through the door and confirm its payment at once;
    returns the order id."""
    placed = await sagas.place(order_request(index), None, timeouts=timeouts)
    await sagas.decide_payment(placed.payment_id, Decision.CONFIRM)
    return placed.order_id


def saga_handle(bench: BenchStack, order_id: str) -> WorkflowHandle[Any, SagaState]:
    """The saga of ``order_id``, to read (its result, its history)."""
    return bench.client.get_workflow_handle(names.workflow_id_for(order_id), result_type=SagaState)


async def drive_saga(
    bench: BenchStack, door: Sagas, index: int, timeouts: SagaTimeouts, within: float
) -> Outcome:
    """Place through ``door``, confirm, wait for the result (the :class:`Dealer` delivers it
    meanwhile); a problem unless it ends DELIVERED within ``within`` seconds."""
    started = time.perf_counter()
    order_id = f"#{index}"
    try:
        async with asyncio.timeout(within):
            order_id = await place_and_confirm(door, index, timeouts)
            state = await saga_handle(bench, order_id).result()
    except Exception as err:  # any failure of one saga is counted, not fatal to the run
        return Outcome(time.perf_counter() - started, f"order {order_id}: {describe(err)}")
    elapsed = time.perf_counter() - started
    if state.phase != SagaPhase.DELIVERED or state.order_status != OrderStatus.DELIVERED:
        return Outcome(elapsed, f"order {order_id} ended {state.phase}: {state.failure_type}")
    return Outcome(elapsed)


async def drive_baseline(bench: BenchStack, index: int, within: float) -> Outcome:
    """Start a baseline workflow, send both its signals at once, wait for its result."""
    workflow_id = f"bench-baseline-{bench.run_dir.name}-{index}-{time.monotonic_ns()}"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(within):
            result = await (await start_baseline(bench.client, workflow_id)).result()
    except Exception as err:
        return Outcome(time.perf_counter() - started, f"{workflow_id}: {describe(err)}")
    elapsed = time.perf_counter() - started
    if result.steps != STEPS:
        return Outcome(elapsed, f"{workflow_id} ran {result.steps} steps, not {STEPS}")
    return Outcome(elapsed)


def describe(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "did not finish in time"
    cause = f" ({err.__cause__})" if err.__cause__ is not None else ""
    return f"{type(err).__name__}: {err}{cause}"


async def closed_loop(
    total: int, concurrency: int, one: Callable[[int], Awaitable[Outcome]], progress: Progress
) -> list[Outcome]:
    """Run ``one(i)`` for i in 0..total-1, ``concurrency`` at a time: each slot starts the
    next as soon as its previous one has ended (no queueing in the driver)."""
    indices = iter(range(total))  # shared: every index is taken by exactly one slot
    outcomes: list[Outcome] = []

    async def slot() -> None:
        for index in indices:
            outcomes.append(await one(index))
            progress.advance()

    await asyncio.gather(*(slot() for _ in range(min(concurrency, total))))
    return outcomes


async def guarded(bench: BenchStack, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; stop it and raise BenchError as soon as a process of the stack dies
    (otherwise every saga in flight would only time out, one by one)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            bench.check_alive()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# The dealer reads the database every POLL_SECONDS; a report refused (HTTP 409: the saga has
# not seen its pivot yet) or failed is sent again after RETRY_SECONDS.
POLL_SECONDS = 0.05
RETRY_SECONDS = 0.05
MAX_REPORTS_IN_FLIGHT = 50
MAX_ERRORS_KEPT = 100


@dataclass
class Dealer:
    """Every dealer at once: reports each IN_TRANSIT delivery delivered as soon as the
    database shows it (one SELECT for all, every 50 ms), once.

    Through the door (``sagas.report_delivered``) while ``http`` is None, else
    ``POST /deliveries/{id}/delivered`` on that client, asked again after 50 ms on a 409.
    """

    bench: BenchStack
    http: httpx.AsyncClient | None = None
    not_yet: int = 0  # HTTP 409s: the saga had not seen its pivot yet
    report_seconds: list[float] = field(default_factory=list)  # HTTP reports' latency
    errors: list[str] = field(default_factory=list)
    _next_try: dict[str, float] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._in_transit_sql = compile_query(
            self.bench.engine,
            select(DeliveryRow.id).where(
                col(DeliveryRow.status) == DeliveryStatus.IN_TRANSIT.value
            ),
        )
        self._slots = asyncio.Semaphore(MAX_REPORTS_IN_FLIGHT)

    async def run(self) -> None:
        """Poll and report until cancelled."""
        try:
            while True:
                rows = await asyncio.to_thread(read_rows, self.bench.engine, self._in_transit_sql)
                now = time.monotonic()
                in_transit = {str(row[0]) for row in rows}
                for delivery_id in in_transit - self._reported:
                    if now >= self._next_try.get(delivery_id, 0):
                        self._reported.add(delivery_id)
                        task = asyncio.create_task(self._report(delivery_id))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                self._reported &= in_transit  # delivered (or gone): forgotten
                for delivery_id in self._next_try.keys() - in_transit:
                    del self._next_try[delivery_id]
                await asyncio.sleep(POLL_SECONDS)
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _report(self, delivery_id: str) -> None:
        try:
            async with self._slots:
                if await self._send(delivery_id):
                    return
                self.not_yet += 1
        except Exception as err:  # a failed report is retried; the phase's wait sees the rest
            if len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(f"delivery {delivery_id}: {describe(err)}")
        self._next_try[delivery_id] = time.monotonic() + RETRY_SECONDS
        self._reported.discard(delivery_id)

    async def _send(self, delivery_id: str) -> bool:
        """Send the report; False on an HTTP 409."""
        if self.http is None:
            await self.bench.sagas.report_delivered(delivery_id)
            return True
        started = time.perf_counter()
        response = await self.http.post(f"/deliveries/{delivery_id}/delivered")
        self.report_seconds.append(time.perf_counter() - started)
        if response.status_code == 409:
            return False
        response.raise_for_status()
        return True
