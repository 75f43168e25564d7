"""``python -m tools.bench scale``: many sagas open at once, waiting for their payment.

Places sagas through the door (``--start-concurrency`` in flight) up to each level of
``--open`` (1,000 then 10,000); at each level, once every open saga has its payment:

- worker and API RSS;
- confirm latency: ``POST /payments/{id}/confirm`` for a random ``--sample`` of the waiting
  sagas at 20 requests/s (random, so at 10,000 most are not in the worker's cache);
- confirm throughput: ``--batch`` more confirmed flat out (50 in flight), timed until all
  their payments are COMPLETED in the database.

Confirmed sagas go on to their dealer and stay open, in transit (nobody reports them
delivered), so they still count as open at the next level.
"""

import argparse
import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import col, select

from domain.payloads import SagaTimeouts
from domain.status import DeliveryStatus, PaymentStatus
from store.models import DeliveryRow, PaymentRow
from tools.bench.api import api_client
from tools.bench.driver import guarded, order_request
from tools.bench.environment import (
    DEALER_WINDOW_SECONDS,
    BenchError,
    BenchStack,
    StackOptions,
    compile_query,
    new_run_dir,
    read_rows,
    running_stack,
)
from tools.bench.progress import Progress, status
from tools.bench.report import num, table, write_json
from tools.bench.stats import Latency

SETTLE_SECONDS = 600.0
DB_POLL_SECONDS = 0.2
SAMPLE_RATE = 20.0  # confirms a second of the latency sample
BATCH_CONCURRENCY = 50
PAYMENT_WINDOW = timedelta(hours=2)  # longer than any run: the open sagas keep waiting


class LevelResult(BaseModel):
    """Measurements with ``open`` sagas open."""

    open: int
    start_failures: int
    open_seconds: float  # placing this level's new sagas until all their payments exist
    worker_rss_mb: float
    api_rss_mb: float
    confirm: Latency  # the sample, at SAMPLE_RATE
    throughput_per_s: float  # the batch: first confirm sent .. all its payments COMPLETED
    non_2xx: dict[str, int]


class ScaleResult(BaseModel):
    """The whole scale run (``scale-result.json``, copied to ``.bench/scale-latest.json``)."""

    started_at: str
    wall_seconds: float
    run_dir: str
    config: dict[str, Any]
    levels: list[LevelResult]
    confirm_p99_ratio: float  # last level / first level
    throughput_ratio: float  # last level / first level
    worker_rss_max_mb: float
    failures: int
    summary: str


def log(args: argparse.Namespace, message: str) -> None:
    status("bench-scale", message, quiet=args.quiet)


def _count(engine: Any, row: Any, column: Any, value: str) -> str:
    return compile_query(engine, select(func.count()).select_from(row).where(col(column) == value))


class Scale:
    """The open sagas and the measurements, level after level."""

    def __init__(self, bench: BenchStack, http: httpx.AsyncClient, args: argparse.Namespace):
        self.bench, self.http, self.args = bench, http, args
        self.rng = random.Random(1)
        self.waiting: list[str] = []  # payment ids whose saga waits for its decision
        self.opened = self.confirmed = 0
        self.failures: list[str] = []
        self.timeouts = SagaTimeouts(
            payment_window=PAYMENT_WINDOW,
            dealer_assignment_window=timedelta(seconds=DEALER_WINDOW_SECONDS),
        )
        engine = bench.engine
        self._pending_sql = _count(
            engine, PaymentRow, PaymentRow.status, PaymentStatus.PENDING.value
        )
        self._completed_sql = _count(
            engine, PaymentRow, PaymentRow.status, PaymentStatus.COMPLETED.value
        )
        self._in_transit_sql = _count(
            engine, DeliveryRow, DeliveryRow.status, DeliveryStatus.IN_TRANSIT.value
        )

    async def level(self, target: int) -> LevelResult:
        started = time.perf_counter()
        start_failures = await self._open(target - self.opened)
        await self._until(self._pending_sql, len(self.waiting), "payments")
        open_seconds = time.perf_counter() - started
        monitor = self.bench.monitor
        worker_rss, api_rss = monitor.current_mb("worker"), monitor.current_mb("api")
        log(self.args, f"{self.opened} open; worker RSS {worker_rss:.0f} MB; measuring")
        non_2xx: Counter[str] = Counter()

        sample = self._take(self.args.sample)
        latencies = await self._confirm_all(sample, non_2xx, "confirm latency", rate=SAMPLE_RATE)
        await self._until(self._in_transit_sql, self.confirmed, "in transit")

        batch = self._take(self.args.batch)
        completed = self.confirmed - len(batch)  # sample and earlier levels: all COMPLETED
        first_sent = time.perf_counter()
        await self._confirm_all(batch, non_2xx, "confirm throughput")
        await self._until(self._completed_sql, completed + len(batch), "completed")
        throughput_seconds = time.perf_counter() - first_sent
        await self._until(self._in_transit_sql, self.confirmed, "in transit")
        return LevelResult(
            open=self.opened,
            start_failures=start_failures,
            open_seconds=open_seconds,
            worker_rss_mb=worker_rss,
            api_rss_mb=api_rss,
            confirm=Latency.of(latencies),
            throughput_per_s=len(batch) / throughput_seconds if batch else math.nan,
            non_2xx=dict(non_2xx),
        )

    def _take(self, count: int) -> list[str]:
        """``count`` waiting sagas chosen at random (no longer waiting: they get confirmed)."""
        self.rng.shuffle(self.waiting)
        taken, self.waiting = self.waiting[:count], self.waiting[count:]
        self.confirmed += len(taken)
        return taken

    async def _open(self, count: int) -> int:
        """Place ``count`` orders through the door; returns the failures."""
        failed = 0

        async def place(index: int) -> None:
            nonlocal failed
            request = order_request(self.opened + index)
            try:
                placed = await self.bench.sagas.place(request, None, timeouts=self.timeouts)
                self.waiting.append(placed.payment_id)
            except Exception as err:  # counted; the run goes on with the others
                failed += 1
                self.failures.append(f"placing order {index}: {err}")

        await self._all(count, self.args.start_concurrency, place, f"opening to {self.opened}+")
        self.opened += count - failed
        return failed

    async def _all(
        self, count: int, concurrency: int, one: Callable[[int], Awaitable[None]], label: str
    ) -> None:
        """``one(i)`` for i in 0..count-1, ``concurrency`` at a time, with a progress bar."""
        indices = iter(range(count))

        async def slot(bar: Progress) -> None:
            for index in indices:
                await one(index)
                bar.advance()

        async def slots(bar: Progress) -> None:
            await asyncio.gather(*(slot(bar) for _ in range(concurrency)))

        async with Progress(label, count, enabled=not self.args.quiet) as bar:
            await guarded(self.bench, slots(bar))

    async def _until(self, sql: str, expected: int, label: str) -> None:
        """Wait until the count ``sql`` returns reaches ``expected``."""
        deadline = time.perf_counter() + SETTLE_SECONDS
        while True:
            self.bench.check_alive()
            ((count,),) = await asyncio.to_thread(read_rows, self.bench.engine, sql)
            if count >= expected:
                return
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"{label}: {count} of {expected} after {SETTLE_SECONDS:.0f}s; "
                    f"failures: {self.failures[:5]}"
                )
            await asyncio.sleep(DB_POLL_SECONDS)

    async def _confirm_all(
        self, payment_ids: list[str], non_2xx: Counter[str], label: str, rate: float = 0
    ) -> list[float]:
        """Confirm each payment through the API: at ``rate`` a second (an open loop), or
        flat out, BATCH_CONCURRENCY in flight (``rate`` 0); the accepted calls' latencies."""
        latencies: list[float] = []
        loop = asyncio.get_running_loop()
        first = loop.time()

        async def confirm(index: int) -> None:
            payment_id = payment_ids[index]
            started = time.perf_counter()
            try:
                response = await self.http.post(f"/payments/{payment_id}/confirm")
            except httpx.HTTPError as err:
                non_2xx[type(err).__name__] += 1
                self.failures.append(f"confirm of {payment_id}: {err!r}")
                return
            if response.status_code != 202:
                non_2xx[str(response.status_code)] += 1
                self.failures.append(f"confirm of {payment_id}: {response.status_code}")
                return
            latencies.append(time.perf_counter() - started)

        async def at_its_time(index: int) -> None:
            await asyncio.sleep(max(0.0, first + index / rate - loop.time()))
            await confirm(index)

        if rate > 0:  # every confirm in flight at once, each sent at its time
            await self._all(len(payment_ids), len(payment_ids) or 1, at_its_time, label)
        else:
            await self._all(len(payment_ids), BATCH_CONCURRENCY, confirm, label)
        return latencies


async def run(args: argparse.Namespace) -> int:
    """The whole scale run; returns the exit status (1 if anything failed)."""
    started, started_at = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run_dir = new_run_dir(args.out, "-scale")
    log(args, f"run folder {run_dir}; levels {args.open}")
    options = StackOptions(
        database_url=args.database_url,
        poll_rps=args.poll_rps,
        server_config=tuple(args.server_config),
        payment_window_seconds=PAYMENT_WINDOW.total_seconds(),
        baseline=False,
    )
    levels: list[LevelResult] = []
    async with running_stack(run_dir, options) as bench, api_client(bench.stack.api_url) as http:
        scale = Scale(bench, http, args)
        for target in args.open:
            levels.append(r := await scale.level(target))
            log(
                args,
                f"{r.open} open: confirm p99 {r.confirm.p99_ms:.0f} ms, "
                f"{r.throughput_per_s:.1f} confirmed sagas/s",
            )
        worker_max = bench.monitor.run_max_mb.get("worker", math.nan)
    first, last = levels[0], levels[-1]
    p99_ratio = last.confirm.p99_ms / first.confirm.p99_ms
    result = ScaleResult(
        started_at=started_at,
        wall_seconds=time.perf_counter() - started,
        run_dir=str(run_dir),
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        levels=levels,
        confirm_p99_ratio=p99_ratio,
        throughput_ratio=last.throughput_per_s / first.throughput_per_s,
        worker_rss_max_mb=worker_max,
        failures=len(scale.failures),
        summary=(
            f"bench-scale: {last.open} open sagas, worker RSS {worker_max:.0f} MB, confirm p99 "
            f"{first.confirm.p99_ms:.0f} ms at {first.open} and {last.confirm.p99_ms:.0f} ms at "
            f"{last.open} (x{p99_ratio:.2f})"
        ),
    )
    write_json(result, run_dir / "scale-result.json", args.out / "scale-latest.json")
    rows = [
        ("open sagas", [str(r.open) for r in levels]),
        ("seconds to open (placed, payments created)", [num(r.open_seconds) for r in levels]),
        ("worker RSS MB", [num(r.worker_rss_mb) for r in levels]),
        ("API RSS MB", [num(r.api_rss_mb) for r in levels]),
        (f"confirm p50 ms (at {SAMPLE_RATE:g}/s)", [num(r.confirm.p50_ms, 0) for r in levels]),
        ("confirm p99 ms", [num(r.confirm.p99_ms, 0) for r in levels]),
        ("confirm throughput sagas/s", [num(r.throughput_per_s) for r in levels]),
        ("non-2xx", [str(sum(r.non_2xx.values())) for r in levels]),
    ]
    print(table(["", *(f"{r.open} open" for r in levels)], [[k, *v] for k, v in rows]))
    print(
        f"\nlast / first level: confirm p99 x{num(p99_ratio, 2)}, "
        f"throughput x{num(result.throughput_ratio, 2)}"
    )
    for failure in scale.failures[:10]:
        print(f"FAILED {failure}")
    print(f"run folder {run_dir}; result {args.out / 'scale-latest.json'}")
    print(result.summary, flush=True)
    return 1 if scale.failures else 0


def _levels(text: str) -> list[int]:
    try:
        levels = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not whole numbers: {text!r}") from None
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError("levels must be positive")
    return levels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m tools.bench scale``."""
    parser.add_argument(
        "--open", type=_levels, default=[1000, 10_000], help="open sagas at each level (a,b,...)"
    )
    parser.add_argument("--sample", type=int, default=200, help="confirms timed at each level")
    parser.add_argument("--batch", type=int, default=500, help="confirms for the throughput")
    parser.add_argument("--start-concurrency", type=int, default=100, help="placements in flight")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.sample < 1 or args.batch < 1:
        parser.error("--sample and --batch must be positive")
    if args.sample + args.batch > args.open[0]:
        parser.error(f"--sample + --batch must not exceed the first level ({args.open[0]} open)")
    if not 1 <= args.start_concurrency <= 500:
        parser.error("--start-concurrency must be between 1 and 500")
