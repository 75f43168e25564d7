"""Drive sagas and baselines through the Temporal client, and play the dealers.

Sagas are started with the arguments the API uses (:func:`start_saga`); the customer's
confirm follows the start at once; the :class:`Dealer` reports each parcel delivered as
soon as the database shows it in transit. Closed loops keep a fixed number of workflows in
flight and measure each from its start call to its result.
"""

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, TypeVar

import httpx
from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio.client import Client, WorkflowHandle

from domain import names
from domain.payloads import (
    DeliveredReport,
    OrderItem,
    OrderRequest,
    PaymentDecision,
    SagaState,
    SagaTimeouts,
)
from domain.status import Decision, DeliveryStatus, OrderStatus, SagaPhase
from sagas.orchestration import start_order_saga
from services import payments as payment_service
from store.db import session
from store.models import DeliveryRow
from tools.bench.baseline import BASELINE_TASK_QUEUE, STEPS, BaselineWorkflow
from tools.bench.environment import CITY, PROVINCE, BenchStack, compile_query, read_rows
from tools.bench.progress import Progress
from workflows import OrderProcessWorkflow

SagaHandle = WorkflowHandle[OrderProcessWorkflow, SagaState]
T = TypeVar("T")


def order_request(index: int) -> OrderRequest:
    """The order every bench saga places (a few customers, one item, the seeded city)."""
    return OrderRequest(
        customer_id=f"bench-{index % 37}",
        items=[OrderItem(product_id="book", quantity=2, unit_price=Decimal("12.50"))],
        province=PROVINCE,
        city=CITY,
    )


async def start_saga(
    client: Client,
    order_id: str,
    request: OrderRequest,
    timeouts: SagaTimeouts,
    task_queue: str = names.WORKFLOW_TASK_QUEUE,
) -> SagaHandle:
    """Start the order's saga as the door's ``OrchestratedSagas.place`` does:
    workflow id from the order id, reject-duplicate, the two search attributes, the summary and the
    request fingerprint memo. Unlike the API it does not wait for the payment to exist (an
    update round trip): the bench knows the payment id and confirms right away."""
    return await start_order_saga(
        client, order_id, request, task_queue=task_queue, timeouts=timeouts
    )


@dataclass(frozen=True)
class Outcome:
    """One workflow driven to its end: seconds from the start call to the result, and what
    went wrong (None when it ended as it should)."""

    seconds: float
    problem: str | None = None


async def drive_saga(
    client: Client,
    engine: Engine,
    index: int,
    timeouts: SagaTimeouts,
    within: float,
) -> Outcome:
    """Start a saga, confirm its payment, wait for its result (the :class:`Dealer` delivers
    it meanwhile); a problem unless it ends DELIVERED within ``within`` seconds.

    With the door's database work around the Temporal calls, as the API does it: the
    payment's decision opened before the start, the confirm taken by its compare-and-set
    before the signal. So the saga's ``complete_payment`` finds the confirm on record, as it
    does behind the API, rather than recording the decision itself (the path of a signal sent
    past the API)."""
    order_id = str(uuid.uuid4())
    payment_id = names.payment_id_for(order_id)
    request = order_request(index)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(within):
            await asyncio.to_thread(door_accepts, engine, order_id, request.customer_id)
            handle = await start_saga(client, order_id, request, timeouts)
            await asyncio.to_thread(door_confirms, engine, payment_id)
            await handle.signal(
                OrderProcessWorkflow.confirm_payment, PaymentDecision(payment_id=payment_id)
            )
            state = await handle.result()
    except Exception as err:  # any failure of one saga is counted, not fatal to the run
        return Outcome(time.perf_counter() - started, f"order {order_id}: {_describe(err)}")
    elapsed = time.perf_counter() - started
    if state.phase != SagaPhase.DELIVERED or state.order_status != OrderStatus.DELIVERED:
        return Outcome(
            elapsed,
            f"order {order_id} ended {state.phase} (order {state.order_status}): "
            f"{state.failure_type} {state.failure_reason}",
        )
    return Outcome(elapsed)


def door_accepts(engine: Engine, order_id: str, customer_id: str) -> None:
    """What the door records when it accepts an order: the payment's decision, opened."""
    with session(engine) as db:
        payment_service.open_decision(db, names.payment_id_for(order_id), order_id, customer_id)
        db.commit()


def door_confirms(engine: Engine, payment_id: str) -> None:
    """What the door does with the customer's confirm before signalling it: its
    compare-and-set, which must win."""
    with session(engine) as db:
        taken = payment_service.take_decision(db, payment_id, Decision.CONFIRM)
        db.commit()
    if not taken.applied:
        raise RuntimeError(f"the confirm of payment {payment_id} did not win: {taken}")


async def drive_baseline(client: Client, within: float) -> Outcome:
    """Start a baseline workflow, send both its signals at once, wait for its result."""
    workflow_id = f"bench-baseline-{uuid.uuid4()}"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(within):
            handle = await client.start_workflow(
                BaselineWorkflow.run,
                id=workflow_id,
                task_queue=BASELINE_TASK_QUEUE,
            )
            await handle.signal(BaselineWorkflow.confirm)
            await handle.signal(BaselineWorkflow.delivered)
            result = await handle.result()
    except Exception as err:
        return Outcome(time.perf_counter() - started, f"{workflow_id}: {_describe(err)}")
    elapsed = time.perf_counter() - started
    if result.steps != STEPS:
        return Outcome(elapsed, f"{workflow_id} ran {result.steps} steps, not {STEPS}")
    return Outcome(elapsed)


def _describe(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "did not finish in time"
    cause = f" ({err.__cause__})" if err.__cause__ is not None else ""
    return f"{type(err).__name__}: {err}{cause}"


async def closed_loop(
    total: int,
    concurrency: int,
    one: Callable[[int], Awaitable[Outcome]],
    progress: Progress,
) -> list[Outcome]:
    """Run ``one(i)`` for i in 0..total-1, ``concurrency`` at a time: each slot starts the
    next as soon as its previous one has ended (a closed loop, no queueing in the driver)."""
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


# The dealer looks at the database every POLL_SECONDS; a report the API refused (its saga
# has not seen its pivot yet) is sent again after RETRY_SECONDS; a report still not acted on
# after RECHECK_SECONDS (the delivery still IN_TRANSIT) is checked and, if the saga ignored
# it, sent again.
POLL_SECONDS = 0.05
RETRY_SECONDS = 0.05
RECHECK_SECONDS = 5.0
MAX_REPORTS_IN_FLIGHT = 50
MAX_ERRORS_KEPT = 100


@dataclass
class Dealer:
    """Every dealer at once: reports each IN_TRANSIT delivery delivered as soon as the database
    shows it (one SELECT for all, every 50 ms), as the door's
    ``OrchestratedSagas.report_delivered`` does.

    ``via`` says how the report goes: ``signal`` (``mark_delivered`` through the Temporal
    client, naming the dealer the database shows, as the door sends it: a saga that has not
    seen its assignment yet holds the report until it does) or ``http``
    (``POST /deliveries/{id}/delivered``; a 409 is asked again after 50 ms). A delivery still
    IN_TRANSIT five seconds after its report is checked (a ``state`` query, counted in
    ``queries``) and its report re-sent if the saga is IN_TRANSIT with no applied
    ``mark_delivered`` (``resends``; expected to stay 0).

    No query before a report: the door makes none, so the saga against the baseline (whose
    signals go right after its start) compares the same round trips.
    """

    client: Client
    engine: Engine
    http: httpx.AsyncClient | None = None
    via: Literal["signal", "http"] = "signal"
    queries: int = 0  # state queries made by the dealer itself (rechecks)
    not_yet: int = 0  # times the API answered 409: the saga had not seen its pivot yet
    resends: int = 0
    errors: list[str] = field(default_factory=list)
    report_seconds: list[float] = field(default_factory=list)  # HTTP reports' latency
    _next_action: dict[str, float] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)
    _busy: set[str] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._in_transit_sql = compile_query(
            self.engine,
            select(DeliveryRow.id, DeliveryRow.order_id, DeliveryRow.dealer_id).where(
                col(DeliveryRow.status) == DeliveryStatus.IN_TRANSIT.value
            ),
        )
        self._slots = asyncio.Semaphore(MAX_REPORTS_IN_FLIGHT)

    async def run(self) -> None:
        """Poll and report until cancelled."""
        try:
            while True:
                rows = await asyncio.to_thread(read_rows, self.engine, self._in_transit_sql)
                now = time.monotonic()
                in_transit = set()
                for delivery_id, order_id, dealer_id in rows:
                    in_transit.add(delivery_id)
                    if delivery_id in self._busy or now < self._next_action.get(delivery_id, 0):
                        continue
                    self._busy.add(delivery_id)
                    task = asyncio.create_task(
                        self._act(str(delivery_id), str(order_id), dealer_id)
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                # Delivered (or otherwise gone): forget it.
                for delivery_id in list(self._next_action):
                    if delivery_id not in in_transit and delivery_id not in self._busy:
                        del self._next_action[delivery_id]
                        self._reported.discard(delivery_id)
                await asyncio.sleep(POLL_SECONDS)
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _act(self, delivery_id: str, order_id: str, dealer_id: int | None) -> None:
        wait = RECHECK_SECONDS
        try:
            async with self._slots:
                if delivery_id not in self._reported:
                    if await self._send(delivery_id, order_id, dealer_id):
                        self._reported.add(delivery_id)
                    else:
                        self.not_yet += 1
                        wait = RETRY_SECONDS
                elif await self._waits_for_report(order_id):
                    self.resends += 1
                    await self._send(delivery_id, order_id, dealer_id)
        except Exception as err:  # a failed report is retried; the phase's wait sees the rest
            if len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(f"delivery {delivery_id}: {_describe(err)}")
            wait = RETRY_SECONDS
        finally:
            self._next_action[delivery_id] = time.monotonic() + wait
            self._busy.discard(delivery_id)

    async def _send(self, delivery_id: str, order_id: str, dealer_id: int | None) -> bool:
        """Send the report (no check of our own); False on an HTTP 409."""
        if self.via == "signal":
            await self._handle(order_id).signal(
                OrderProcessWorkflow.mark_delivered,
                DeliveredReport(delivery_id=delivery_id, dealer_id=dealer_id),
            )
            return True
        assert self.http is not None, "an HTTP dealer needs the API's client"
        started = time.perf_counter()
        response = await self.http.post(f"/deliveries/{delivery_id}/delivered")
        self.report_seconds.append(time.perf_counter() - started)
        if response.status_code == 409:
            return False
        response.raise_for_status()
        return True

    async def _waits_for_report(self, order_id: str) -> bool:
        """Whether the saga is IN_TRANSIT with no applied ``mark_delivered``."""
        self.queries += 1
        state = await self._handle(order_id).query(OrderProcessWorkflow.state)
        applied = any(s.applied for s in state.signals if s.name == names.SIGNAL_MARK_DELIVERED)
        return state.phase == SagaPhase.IN_TRANSIT and not applied

    def _handle(self, order_id: str) -> SagaHandle:
        return self.client.get_workflow_handle_for(
            OrderProcessWorkflow.run, names.workflow_id_for(order_id)
        )
