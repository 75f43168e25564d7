"""``python -m tools.bench``: throughput and latency of the saga against its baseline, then HTTP.

Phases run one after the other on the same stack: ``baseline-remote``, ``saga-remote``,
``baseline-local``, ``saga-local`` (each a closed loop of N workflows, C in flight, after
an uncounted warm-up), then ``http`` (open loop through the API, whose sagas run in remote mode).
"""

import argparse
import asyncio
import math
import shutil
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from domain.payloads import SagaTimeouts, StepMode
from tools.bench.api_load import HttpLoad, http_load
from tools.bench.driver import Dealer, Outcome, closed_loop, drive_baseline, drive_saga, guarded
from tools.bench.environment import (
    DEALER_WINDOW_SECONDS,
    BenchStack,
    StackOptions,
    api_client,
    new_run_dir,
    running_stack,
)
from tools.bench.progress import Progress, status
from tools.bench.report import (
    BenchResult,
    HttpDetail,
    PhaseKind,
    PhaseResult,
    ratios,
    render,
    summary_line,
    write_json,
)
from tools.bench.stats import Latency

CLIENT_PHASES = ("baseline-remote", "saga-remote", "baseline-local", "saga-local")
PHASES = (*CLIENT_PHASES, "http")
HTTP_WARMUP_ORDERS = 5
MAX_SAMPLES = 5  # failure messages kept per phase


def log(args: argparse.Namespace, message: str) -> None:
    status("bench", message, quiet=args.quiet)


async def run(args: argparse.Namespace) -> int:
    """The whole run; returns the exit status (1 if any saga failed)."""
    started = time.perf_counter()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    mode: StepMode = args.mode
    run_dir = new_run_dir(args.out)
    log(args, f"run folder {run_dir}; step mode {mode}; phases {', '.join(args.phases)}")
    phases, rss_run_max, dealer = await _run_phases(run_dir, args)
    failures = sum(p.failures for p in phases.values())
    summary = summary_line(phases, mode)
    result = BenchResult(
        started_at=started_at,
        wall_seconds=time.perf_counter() - started,
        run_dir=str(run_dir),
        mode=mode,
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        phases=list(phases.values()),
        ratios=ratios(phases),
        rss_run_max_mb=rss_run_max,
        dealer_errors=dealer.errors[:MAX_SAMPLES],
        failures=failures,
        summary=summary,
    )
    write_json(result, run_dir / "result.json", args.out / "latest.json")
    if not args.keep:
        shutil.rmtree(run_dir)
    _print_result(result, run_dir, args)
    return 1 if failures else 0


async def _run_phases(
    run_dir: Path, args: argparse.Namespace
) -> tuple[dict[str, PhaseResult], dict[str, float], Dealer]:
    """Every phase chosen, on one stack: the results by name, each peak RSS, the dealer."""
    options = StackOptions(
        database_url=args.database_url,
        db_file=args.db_file,
        server_args=args.server_arg,
    )
    phases: dict[str, PhaseResult] = {}
    async with (
        running_stack(run_dir, options) as bench,
        api_client(bench) as http,
    ):
        log(args, f"stack up: Temporal {bench.stack.temporal_address}, API {bench.stack.api_url}")
        dealer = Dealer(bench.client, bench.engine, http)
        dealer_task = asyncio.create_task(dealer.run())
        try:
            for name in args.phases:
                phases[name] = await _phase(bench, http, dealer, args, name)
        finally:
            dealer_task.cancel()
            await asyncio.gather(dealer_task, return_exceptions=True)
        rss_run_max = dict(bench.monitor.run_max_mb)
    return phases, rss_run_max, dealer


async def _phase(
    bench: BenchStack,
    http: httpx.AsyncClient,
    dealer: Dealer,
    args: argparse.Namespace,
    name: str,
) -> PhaseResult:
    """Run the phase ``name`` and log its headline numbers."""
    if name == "http":
        p = await _http_phase(bench, http, dealer, args)
    else:
        p = await _client_phase(bench, dealer, args, name)
    log(
        args,
        f"{name}: {p.sagas_per_s:.1f} sagas/s, p99 {p.e2e.p99_ms:.0f} ms, {p.failures} failed",
    )
    return p


def _print_result(result: BenchResult, run_dir: Path, args: argparse.Namespace) -> None:
    """The tables, where the run's files are, then the summary line last."""
    print(render(result))
    print()
    kept = "" if args.keep else " (removed)"
    print(
        f"run folder {run_dir}{kept}; result {args.out / 'latest.json'}; "
        f"{result.wall_seconds:.0f} s"
    )
    print(result.summary, flush=True)


async def _client_phase(
    bench: BenchStack, dealer: Dealer, args: argparse.Namespace, name: str
) -> PhaseResult:
    kind, _, mode_name = name.partition("-")
    mode = StepMode(mode_name)
    timeouts = SagaTimeouts(dealer_assignment_window=timedelta(seconds=DEALER_WINDOW_SECONDS))
    dealer.via = "signal"

    def one(index: int) -> Awaitable[Outcome]:
        if kind == "saga":
            return drive_saga(bench.client, index, mode, timeouts, args.saga_timeout)
        return drive_baseline(bench.client, mode, args.saga_timeout)

    async def loop(count: int, label: str) -> list[Outcome]:
        async with Progress(label, count, enabled=not args.quiet) as bar:
            return await guarded(bench, closed_loop(count, args.concurrency, one, bar))

    warmup = await loop(args.warmup, f"{name} warm-up") if args.warmup else []
    before = _DealerCounts.of(dealer)
    with bench.monitor.measure() as usage:
        outcomes = await loop(args.sagas, name)
    worker = "baseline" if kind == "baseline" else "worker"
    return _phase_result(
        name,
        "baseline" if kind == "baseline" else "saga",
        mode,
        sagas=args.sagas,
        ok=[o.seconds for o in outcomes if o.problem is None],
        problems=[o.problem for o in warmup + outcomes if o.problem is not None],
        warmup=len(warmup),
        seconds=usage.seconds,
        cpu_s=usage.cpu_s,
        rss_max_mb=usage.rss_max_mb,
        worker=worker,
        dealer=_DealerCounts.of(dealer) - before,
    )


async def _http_phase(
    bench: BenchStack,
    http: httpx.AsyncClient,
    dealer: Dealer,
    args: argparse.Namespace,
) -> PhaseResult:
    """The open loop through the API, after a few uncounted orders."""
    dealer.via = "http"
    tag = f"bench-{bench.run_dir.name}"
    # --rate counts requests: each order is a POST /orders and a confirm.
    orders_per_s = args.rate / 2
    warm = await _http_warmup(bench, http, tag, args)
    before, report_calls = _DealerCounts.of(dealer), len(dealer.report_seconds)
    with bench.monitor.measure() as usage:
        load = await _http_measured(bench, http, tag, orders_per_s, args)
    result = _phase_result(
        "http",
        "http",
        StepMode.REMOTE,  # the API starts every saga in remote mode
        sagas=load.requested,
        ok=load.e2e_seconds,
        problems=warm.problems + load.problems,
        warmup=warm.requested,
        seconds=load.seconds,
        cpu_s=usage.cpu_s,
        rss_max_mb=usage.rss_max_mb,
        worker="worker",
        dealer=_DealerCounts.of(dealer) - before,
    )
    result.http = HttpDetail(
        rate_per_s=args.rate,
        orders_per_s=orders_per_s,
        seconds=args.http_seconds,
        orders=Latency.of(load.order_seconds),
        confirms=Latency.of(load.confirm_seconds),
        delivered_reports=Latency.of(dealer.report_seconds[report_calls:]),
        non_2xx=dict(load.non_2xx + warm.non_2xx),
        answered_202=load.answered_202,
        confirm_404=load.confirm_404,
        reports_refused_409=result.dealer_not_yet,
    )
    return result


async def _http_warmup(
    bench: BenchStack, http: httpx.AsyncClient, tag: str, args: argparse.Namespace
) -> HttpLoad:
    """A few orders first, uncounted: the API's first calls open its Temporal connection."""
    return await guarded(
        bench,
        http_load(
            bench,
            http,
            rate=HTTP_WARMUP_ORDERS,
            seconds=1,
            tag=f"{tag}-warmup",
            settle_within=args.saga_timeout,
        ),
    )


async def _http_measured(
    bench: BenchStack,
    http: httpx.AsyncClient,
    tag: str,
    orders_per_s: float,
    args: argparse.Namespace,
) -> HttpLoad:
    """The measured open loop: ``--http-seconds`` of orders at ``orders_per_s``."""
    total = round(orders_per_s * args.http_seconds)
    async with Progress("http requests", total, enabled=not args.quiet) as bar:
        return await guarded(
            bench,
            http_load(
                bench,
                http,
                rate=orders_per_s,
                seconds=args.http_seconds,
                tag=tag,
                settle_within=args.saga_timeout,
                on_request=bar.advance,
            ),
        )


def _phase_result(
    name: str,
    kind: PhaseKind,
    mode: StepMode,
    *,
    sagas: int,
    ok: list[float],
    problems: list[str],
    warmup: int,
    seconds: float,
    cpu_s: dict[str, float],
    rss_max_mb: dict[str, float],
    worker: str,
    dealer: "_DealerCounts",
) -> PhaseResult:
    def per_saga(process: str) -> float:
        return 1000 * cpu_s[process] / sagas if sagas and process in cpu_s else math.nan

    return PhaseResult(
        name=name,
        kind=kind,
        mode=mode,
        sagas=sagas,
        delivered=len(ok),
        failures=len(problems),
        failure_samples=problems[:MAX_SAMPLES],
        warmup=warmup,
        seconds=seconds,
        sagas_per_s=len(ok) / seconds if seconds > 0 else math.nan,
        e2e=Latency.of(ok),
        cpu_s=cpu_s,
        cpu_ms_per_saga={
            "worker": per_saga(worker),
            "server": per_saga("server"),
            "api": per_saga("api"),
            "bench": per_saga("bench"),
        },
        rss_max_mb=rss_max_mb,
        dealer_queries=dealer.queries,
        dealer_not_yet=dealer.not_yet,
        dealer_resends=dealer.resends,
    )


@dataclass(frozen=True)
class _DealerCounts:
    """The dealer's counters at one moment; subtract two for a phase's share."""

    queries: int
    not_yet: int
    resends: int

    @classmethod
    def of(cls, dealer: Dealer) -> "_DealerCounts":
        return cls(dealer.queries, dealer.not_yet, dealer.resends)

    def __sub__(self, other: "_DealerCounts") -> "_DealerCounts":
        return _DealerCounts(
            self.queries - other.queries,
            self.not_yet - other.not_yet,
            self.resends - other.resends,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m tools.bench`` (without a subcommand)."""
    parser.add_argument("--sagas", type=int, default=200, help="measured sagas per phase")
    parser.add_argument("--concurrency", type=int, default=50, help="sagas in flight (<= 500)")
    parser.add_argument("--warmup", type=int, default=20, help="uncounted sagas per phase")
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="HTTP requests per second, POST /orders and confirms together (orders at half it)",
    )
    parser.add_argument("--http-seconds", type=float, default=15.0, help="HTTP phase length")
    parser.add_argument(
        "--phases",
        type=_phase_list,
        default=list(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (run in that order)",
    )
    parser.add_argument(
        "--saga-timeout", type=float, default=120.0, help="seconds before a saga counts as failed"
    )
    parser.add_argument(
        "--keep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the run folder (logs, databases; it is gitignored); --no-keep deletes it "
        "after copying result.json to .bench/latest.json",
    )


def _phase_list(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PHASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"phases are {','.join(PHASES)}; not {unknown}")
    return [p for p in PHASES if p in chosen]


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 1 <= args.concurrency <= 500:
        # Each saga in flight holds one result long poll; the namespace allows ~1,200,
        # shared with the workers' pollers.
        parser.error("--concurrency must be between 1 and 500")
    if args.sagas < 1 or args.warmup < 0 or args.rate <= 0 or args.http_seconds <= 0:
        parser.error("--sagas, --rate and --http-seconds must be positive, --warmup >= 0")
