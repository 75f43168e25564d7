"""The ``http-unloaded`` phase: one order at a time through the API, on an idle stack.

Each order, after the one before it is DELIVERED: ``GET /healthz`` (for reference: the cost
of any call to the API), ``POST /orders`` (its latency), the
confirm sent as soon as the 202 is in (its latency), then the database polled every 5 ms
(as ``GET /orders/{id}`` reads it) for the time from the POST to the delivery IN_TRANSIT
(dealer assigned: ``phase`` IN_TRANSIT) and to the order DELIVERED (the
:class:`~tools.bench.driver.Dealer` reports it over HTTP, polling every 50 ms). A few orders
first, uncounted: the API's first calls open its connections.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from sqlmodel import col, select

from domain.status import DeliveryStatus, OrderStatus
from store.db import READ_ONLY
from store.models import DeliveryRow, OrderRow, PaymentRow
from tools.bench.api_load import ENDED, ApiCalls, decide, place_order
from tools.bench.environment import BenchStack, compile_query

POLL_SECONDS = 0.005
PAST_PIVOT = (DeliveryStatus.IN_TRANSIT.value, DeliveryStatus.DELIVERED.value)
T = TypeVar("T")


@dataclass
class Unloaded(ApiCalls):
    """What the phase measured (latencies in seconds, as taken)."""

    requested: int = 0
    healthz_seconds: list[float] = field(default_factory=list)  # GET /healthz: the HTTP floor
    in_transit_seconds: list[float] = field(default_factory=list)  # POST .. IN_TRANSIT seen
    e2e_seconds: list[float] = field(default_factory=list)  # POST .. DELIVERED seen
    seconds: float = 0.0  # the measured orders, first POST .. last DELIVERED


@dataclass(frozen=True)
class Ended:
    """One order watched in the database: when (``time.perf_counter``) its delivery was
    first seen past the pivot, and how it ended."""

    in_transit_at: float | None
    ended_at: float
    status: str


async def poll_until(
    bench: BenchStack, sql: str, found: Callable[[list[tuple[Any, ...]]], T | None], within: float
) -> T:
    """Run ``sql`` every POLL_SECONDS until ``found`` makes something of its rows; return
    that. TimeoutError after ``within`` seconds.

    On one read-only connection, on the event loop itself: a poll costs ~0.1 ms of CPU that
    way, where a session in a thread (``read_rows``) costs ~0.5 ms, which at 200 polls a
    second would take a tenth of a core from the stack being measured."""
    read_only = bench.engine.execution_options(**{READ_ONLY: True})
    with read_only.connect() as db:
        async with asyncio.timeout(within):
            while True:
                rows = [tuple(row) for row in db.exec_driver_sql(sql).fetchall()]
                db.rollback()  # end the read: the next one sees what was committed meanwhile
                result = found(rows)
                if result is not None:
                    return result
                await asyncio.sleep(POLL_SECONDS)


async def watch_order(bench: BenchStack, order_id: str, within: float) -> Ended:
    """Follow the order in the database until it is DELIVERED or CANCELLED, noting when its
    delivery is first seen IN_TRANSIT (or past it). TimeoutError after ``within`` seconds."""
    sql = compile_query(
        bench.engine,
        select(OrderRow.status, DeliveryRow.status)
        .select_from(OrderRow)
        .outerjoin(DeliveryRow, col(DeliveryRow.order_id) == col(OrderRow.id))
        .where(col(OrderRow.id) == order_id),
    )
    in_transit_at: float | None = None

    def ended(rows: list[tuple[Any, ...]]) -> Ended | None:
        nonlocal in_transit_at
        now = time.perf_counter()
        for order_status, delivery_status in rows:
            if in_transit_at is None and delivery_status in PAST_PIVOT:
                in_transit_at = now
            if order_status in ENDED:
                return Ended(in_transit_at, now, order_status)
        return None

    return await poll_until(bench, sql, ended, within)


async def until_payment_exists(bench: BenchStack, payment_id: str, within: float) -> None:
    """Wait until the saga has written the payment (the order is AWAITING_PAYMENT)."""
    sql = compile_query(bench.engine, select(PaymentRow.id).where(col(PaymentRow.id) == payment_id))
    await poll_until(bench, sql, lambda rows: True if rows else None, within)


async def _healthz(http: httpx.AsyncClient) -> float:
    """Time ``GET /healthz`` (a route that does nothing): what any call to the API costs."""
    started = time.perf_counter()
    (await http.get("/healthz")).raise_for_status()
    return time.perf_counter() - started


async def unloaded_orders(
    bench: BenchStack,
    http: httpx.AsyncClient,
    *,
    orders: int,
    warmup: int,
    tag: str,
    within: float,
    on_order: Callable[[], None] = lambda: None,
) -> Unloaded:
    """``warmup`` uncounted orders then ``orders`` measured ones, one at a time, each
    confirmed at once and followed to DELIVERED (at most ``within`` seconds each)."""
    scratch = Unloaded(requested=warmup)
    result = Unloaded(requested=orders)
    first_sent = last_ended = 0.0
    for index in range(warmup + orders):
        measured = index >= warmup
        load = result if measured else scratch
        key = f"{tag}-{index}"
        if measured and index == warmup:
            first_sent = time.perf_counter()
        try:
            load.healthz_seconds.append(await _healthz(http))
            sent = time.perf_counter()
            placed = await place_order(http, load, index, key)
            if placed is None or not await decide(http, load, placed, confirm=True):
                continue
            ended = await watch_order(bench, placed.order_id, within)
        except httpx.HTTPError as err:
            load.non_2xx[type(err).__name__] += 1
            load.problems.append(f"order {key}: {type(err).__name__}: {err}")
            continue
        except TimeoutError:
            load.problems.append(f"order {key} not DELIVERED within {within:.0f}s")
            continue
        finally:
            if measured:
                on_order()
        last_ended = ended.ended_at
        if ended.status != OrderStatus.DELIVERED.value:
            load.problems.append(f"order {placed.order_id} ended {ended.status}, not DELIVERED")
            continue
        if ended.in_transit_at is not None:
            load.in_transit_seconds.append(ended.in_transit_at - sent)
        load.e2e_seconds.append(ended.ended_at - sent)
    result.seconds = max(0.0, last_ended - first_sent)
    result.problems = scratch.problems + result.problems
    result.non_2xx.update(scratch.non_2xx)
    return result
