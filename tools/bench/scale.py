"""``python -m tools.bench scale``: many sagas open at once, waiting for their payment.

Opens sagas (as the door does: the payment's decision opened, then the saga started through
the Temporal client; ~100 starts in flight) up to a first level (1,000) and then up to
``--open`` (10,000); at each level, once every open saga has its payment:

- worker and API RSS;
- confirm latency: ``POST /payments/{id}/confirm`` for a random sample (200) of the waiting
  sagas at 20 requests/s (a random sample, so at 10,000 most are not in the worker's cache);
- confirm throughput: 500 more confirmed as fast as possible (50 in flight), timed until
  all 500 payments are COMPLETED in the database.

Confirmed sagas go on to their dealer and stay open, in transit (nobody reports them
delivered), so they still count as open at the next level.
"""

import argparse
import asyncio
import math
import random
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import col, select

from domain import names
from domain.payloads import SagaTimeouts
from domain.status import DeliveryStatus, PaymentStatus
from store.models import DeliveryRow, PaymentRow
from tools.bench.driver import guarded, order_request
from tools.bench.environment import (
    DEALER_WINDOW_SECONDS,
    BenchError,
    BenchStack,
    StackOptions,
    api_client,
    compile_query,
    new_run_dir,
    read_rows,
    running_stack,
)
from tools.bench.progress import Progress, status
from tools.bench.report import ms, num, table, write_json
from tools.bench.stats import Latency

FIRST_LEVEL = 1000
SETTLE_SECONDS = 600.0
DB_POLL_SECONDS = 0.2


class LevelResult(BaseModel):
    """Measurements with ``open`` sagas open."""

    open: int
    start_failures: int
    open_seconds: float  # starting this level's new sagas until all their payments exist
    worker_rss_mb: float
    api_rss_mb: float
    confirm: Latency  # the sample, at a fixed rate
    confirm_rate_per_s: float
    throughput_sagas: int
    throughput_seconds: float  # first confirm sent .. all their payments COMPLETED
    throughput_per_s: float
    throughput_confirm: Latency  # the HTTP calls of the throughput batch
    non_2xx: dict[str, int]


class ScaleResult(BaseModel):
    """The whole scale run (``scale-result.json``)."""

    started_at: str
    wall_seconds: float
    run_dir: str
    config: dict[str, Any]
    levels: list[LevelResult]
    confirm_p99_ratio: float  # last level / first level
    throughput_ratio: float  # last level / first level
    worker_rss_max_mb: float
    api_rss_max_mb: float
    failures: int
    summary: str


def log(args: argparse.Namespace, message: str) -> None:
    status("bench-scale", message, quiet=args.quiet)


class Scale:
    """The open sagas and the measurements, level after level."""

    def __init__(self, bench: BenchStack, http: httpx.AsyncClient, args: argparse.Namespace):
        self.bench, self.http, self.args = bench, http, args
        self.rng = random.Random(args.seed)
        self.waiting: list[str] = []  # order ids whose saga waits for its payment decision
        self.opened = 0
        self.confirmed = 0
        self.failures: list[str] = []
        self.timeouts = SagaTimeouts(
            payment_window=timedelta(seconds=args.payment_window),
            dealer_assignment_window=timedelta(seconds=DEALER_WINDOW_SECONDS),
        )
        engine = bench.engine
        self._pending_sql = compile_query(
            engine,
            select(func.count())
            .select_from(PaymentRow)
            .where(col(PaymentRow.status) == PaymentStatus.PENDING.value),
        )
        self._completed_sql = compile_query(
            engine,
            select(PaymentRow.id).where(col(PaymentRow.status) == PaymentStatus.COMPLETED.value),
        )
        self._in_transit_sql = compile_query(
            engine,
            select(func.count())
            .select_from(DeliveryRow)
            .where(col(DeliveryRow.status) == DeliveryStatus.IN_TRANSIT.value),
        )

    async def level(self, target: int) -> LevelResult:
        started = time.perf_counter()
        start_failures = await guarded(self.bench, self._open(target - self.opened))
        await guarded(self.bench, self._until(self._pending_sql, len(self.waiting), "payments"))
        open_seconds = time.perf_counter() - started
        monitor = self.bench.monitor
        worker_rss, api_rss = monitor.current_mb("worker"), monitor.current_mb("api")
        log(self.args, f"{self.opened} open; worker RSS {worker_rss:.0f} MB; measuring")
        non_2xx: Counter[str] = Counter()

        sample = self._take(self.args.sample)
        latencies = await guarded(self.bench, self._confirm_at_rate(sample, non_2xx))
        await guarded(self.bench, self._settle())

        batch = self._take(self.args.batch)
        first_sent = time.perf_counter()
        batch_latencies = await guarded(self.bench, self._confirm_flat_out(batch, non_2xx))
        await guarded(self.bench, self._completed(batch))
        throughput_seconds = time.perf_counter() - first_sent
        await guarded(self.bench, self._settle())
        return LevelResult(
            open=self.opened,
            start_failures=start_failures,
            open_seconds=open_seconds,
            worker_rss_mb=worker_rss,
            api_rss_mb=api_rss,
            confirm=Latency.of(latencies),
            confirm_rate_per_s=self.args.sample_rate,
            throughput_sagas=len(batch),
            throughput_seconds=throughput_seconds,
            throughput_per_s=len(batch) / throughput_seconds if batch else math.nan,
            throughput_confirm=Latency.of(batch_latencies),
            non_2xx=dict(non_2xx),
        )

    def _take(self, count: int) -> list[str]:
        """``count`` waiting sagas chosen at random (no longer waiting: they get confirmed)."""
        self.rng.shuffle(self.waiting)
        taken, self.waiting = self.waiting[:count], self.waiting[count:]
        self.confirmed += len(taken)
        return taken

    async def _open(self, count: int) -> int:
        """Start ``count`` sagas, ``--start-concurrency`` at a time, each with its payment's
        decision opened first as the door opens it (the API's confirm takes only an opened
        decision); returns the failures."""
        indices = iter(range(count))
        failed = 0

        async def slot(bar: Progress) -> None:
            nonlocal failed
            for index in indices:
                request = order_request(self.opened + index)
                try:
                    placed = await self.bench.sagas.place(request, None, timeouts=self.timeouts)
                    self.waiting.append(placed.order_id)
                except Exception as err:  # counted; the run goes on with the others
                    failed += 1
                    self.failures.append(f"placing order {index}: {err}")
                bar.advance()

        label = f"opening to {self.opened + count}"
        async with Progress(label, count, enabled=not self.args.quiet) as bar:
            await asyncio.gather(*(slot(bar) for _ in range(self.args.start_concurrency)))
        self.opened += count - failed
        return failed

    async def _until(self, sql: str, expected: int, label: str) -> None:
        """Wait until the count ``sql`` returns reaches ``expected`` (with a progress bar)."""
        deadline = time.perf_counter() + SETTLE_SECONDS
        async with Progress(label, expected, enabled=not self.args.quiet) as bar:
            while True:
                ((count,),) = await asyncio.to_thread(read_rows, self.bench.engine, sql)
                bar.done = int(count)
                if count >= expected:
                    return
                if time.perf_counter() > deadline:
                    raise BenchError(f"{label}: {count} of {expected} after {SETTLE_SECONDS:.0f}s")
                await asyncio.sleep(DB_POLL_SECONDS)

    async def _settle(self) -> None:
        """Wait until every confirmed saga is in transit (quiet before the next measurement)."""
        await self._until(self._in_transit_sql, self.confirmed, "in transit")

    async def _completed(self, order_ids: list[str]) -> None:
        payments = {names.payment_id_for(o) for o in order_ids}
        deadline = time.perf_counter() + SETTLE_SECONDS
        while True:
            rows = await asyncio.to_thread(read_rows, self.bench.engine, self._completed_sql)
            missing = payments - {str(r[0]) for r in rows}
            if not missing:
                return
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"{len(missing)} payments not COMPLETED after {SETTLE_SECONDS:.0f}s "
                    f"(e.g. {sorted(missing)[:3]}); refused or failed calls: {self.failures[:5]}"
                )
            await asyncio.sleep(DB_POLL_SECONDS / 2)

    async def _confirm(self, order_id: str, non_2xx: Counter[str]) -> float | None:
        """POST the confirm of the order's payment; its latency, None if it was refused."""
        started = time.perf_counter()
        try:
            response = await self.http.post(f"/payments/{names.payment_id_for(order_id)}/confirm")
        except httpx.HTTPError as err:
            non_2xx[type(err).__name__] += 1
            self.failures.append(f"confirm of order {order_id}: {type(err).__name__}: {err}")
            return None
        elapsed = time.perf_counter() - started
        if response.status_code != 202:
            non_2xx[str(response.status_code)] += 1
            self.failures.append(
                f"confirm of order {order_id}: {response.status_code} {response.text[:200]}"
            )
            return None
        return elapsed

    async def _confirm_at_rate(self, order_ids: list[str], non_2xx: Counter[str]) -> list[float]:
        loop = asyncio.get_running_loop()
        first = loop.time()
        rate = self.args.sample_rate
        tasks = []
        async with Progress("confirm latency", len(order_ids), enabled=not self.args.quiet) as bar:
            for i, order_id in enumerate(order_ids):
                await asyncio.sleep(max(0.0, first + i / rate - loop.time()))
                task = asyncio.create_task(self._confirm(order_id, non_2xx))
                task.add_done_callback(lambda _: bar.advance())
                tasks.append(task)
            results = await asyncio.gather(*tasks)
        return [r for r in results if r is not None]

    async def _confirm_flat_out(self, order_ids: list[str], non_2xx: Counter[str]) -> list[float]:
        remaining = iter(order_ids)
        latencies: list[float] = []

        async def slot(bar: Progress) -> None:
            for order_id in remaining:
                elapsed = await self._confirm(order_id, non_2xx)
                if elapsed is not None:
                    latencies.append(elapsed)
                bar.advance()

        label = "confirm throughput"
        async with Progress(label, len(order_ids), enabled=not self.args.quiet) as bar:
            await asyncio.gather(*(slot(bar) for _ in range(self.args.batch_concurrency)))
        return latencies


async def run(args: argparse.Namespace) -> int:
    """The whole scale run; returns the exit status (1 if anything failed)."""
    started = time.perf_counter()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    levels = sorted({min(FIRST_LEVEL, args.open), args.open})
    run_dir = new_run_dir(args.out, "-scale")
    log(args, f"run folder {run_dir}; levels {levels}")
    results, run_max_mb, failures = await _measure_levels(run_dir, levels, args)
    first, last = results[0], results[-1]
    worker_max = run_max_mb.get("worker", math.nan)
    p99_ratio = last.confirm.p99_ms / first.confirm.p99_ms if first.confirm.p99_ms else math.nan
    throughput_ratio = (
        last.throughput_per_s / first.throughput_per_s if first.throughput_per_s else math.nan
    )
    summary = (
        f"bench-scale: {last.open} open sagas, worker RSS {worker_max:.0f} MB, confirm p99 "
        f"{first.confirm.p99_ms:.0f} ms at {first.open} and {last.confirm.p99_ms:.0f} ms at "
        f"{last.open} (x{p99_ratio:.2f})"
    )
    result = ScaleResult(
        started_at=started_at,
        wall_seconds=time.perf_counter() - started,
        run_dir=str(run_dir),
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        levels=results,
        confirm_p99_ratio=p99_ratio,
        throughput_ratio=throughput_ratio,
        worker_rss_max_mb=worker_max,
        api_rss_max_mb=run_max_mb.get("api", math.nan),
        failures=len(failures),
        summary=summary,
    )
    write_json(result, run_dir / "scale-result.json", args.out / "scale-latest.json")
    _print_result(result, failures, run_dir, args)
    return 1 if failures else 0


async def _measure_levels(
    run_dir: Path, levels: list[int], args: argparse.Namespace
) -> tuple[list[LevelResult], dict[str, float], list[str]]:
    """Each level measured on one stack: the results, each process's peak RSS, the failures."""
    options = StackOptions(
        database_url=args.database_url,
        db_file=args.db_file,
        server_args=args.server_arg,
        poll_rps=args.poll_rps,
        payment_window_seconds=args.payment_window,
        baseline=False,
    )
    results: list[LevelResult] = []
    async with (
        running_stack(run_dir, options) as bench,
        api_client(bench) as http,
    ):
        scale = Scale(bench, http, args)
        for target in levels:
            results.append(await scale.level(target))
            r = results[-1]
            log(
                args,
                f"{r.open} open: confirm p99 {r.confirm.p99_ms:.0f} ms, "
                f"{r.throughput_per_s:.1f} confirmed sagas/s",
            )
        run_max_mb = dict(bench.monitor.run_max_mb)
    return results, run_max_mb, scale.failures


def _print_result(
    result: ScaleResult, failures: list[str], run_dir: Path, args: argparse.Namespace
) -> None:
    """The table, the first failures, where the run's files are, then the summary line last."""
    print(render(result))
    for failure in failures[:10]:
        print(f"FAILED {failure}")
    print()
    print(
        f"run folder {run_dir}; result {args.out / 'scale-latest.json'}; "
        f"{result.wall_seconds:.0f} s"
    )
    print(result.summary, flush=True)


def render(result: ScaleResult) -> str:
    """Both levels side by side, and the ratios."""
    levels = result.levels
    rows: list[tuple[str, list[str]]] = [
        ("open sagas", [str(r.open) for r in levels]),
        ("seconds to open (new sagas, payments created)", [num(r.open_seconds) for r in levels]),
        ("worker RSS MB", [num(r.worker_rss_mb) for r in levels]),
        ("API RSS MB", [num(r.api_rss_mb) for r in levels]),
        (
            f"confirm p50 ms (at {result.config['sample_rate']:g}/s)",
            [ms(r.confirm.p50_ms) for r in levels],
        ),
        ("confirm p99 ms", [ms(r.confirm.p99_ms) for r in levels]),
        ("confirm max ms", [ms(r.confirm.max_ms) for r in levels]),
        ("confirm throughput sagas/s (until COMPLETED)", [num(r.throughput_per_s) for r in levels]),
        ("  its confirm call p99 ms", [ms(r.throughput_confirm.p99_ms) for r in levels]),
        ("non-2xx", [str(sum(r.non_2xx.values())) for r in levels]),
    ]
    headers = ["", *(f"{r.open} open" for r in levels)]
    out = [
        table(headers, [[label, *cells] for label, cells in rows]),
        "",
        f"p99 at {levels[-1].open} / at {levels[0].open}: {num(result.confirm_p99_ratio, 2)}; "
        f"throughput at {levels[-1].open} / at {levels[0].open}: "
        f"{num(result.throughput_ratio, 2)}",
        f"max RSS over the run: worker {result.worker_rss_max_mb:.0f} MB, "
        f"API {result.api_rss_max_mb:.0f} MB",
    ]
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m tools.bench scale``."""
    parser.add_argument("--open", type=int, default=10_000, help="open sagas at the last level")
    parser.add_argument("--sample", type=int, default=200, help="confirms timed at each level")
    parser.add_argument("--sample-rate", type=float, default=20.0, help="their rate per second")
    parser.add_argument("--batch", type=int, default=500, help="confirms for the throughput")
    parser.add_argument("--batch-concurrency", type=int, default=50)
    parser.add_argument("--start-concurrency", type=int, default=100)
    parser.add_argument(
        "--payment-window", type=float, default=7200.0, help="seconds the sagas wait to be paid"
    )
    parser.add_argument("--seed", type=int, default=1, help="which sagas get sampled")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    first = min(FIRST_LEVEL, args.open)
    if args.open < 1 or args.sample < 1 or args.batch < 0 or args.sample_rate <= 0:
        parser.error("--open, --sample and --sample-rate must be positive, --batch >= 0")
    if args.sample + args.batch > first:
        parser.error(f"--sample + --batch must not exceed the first level ({first} open)")
    if not 1 <= args.start_concurrency <= 500 or not 1 <= args.batch_concurrency <= 500:
        parser.error("concurrencies must be between 1 and 500")
