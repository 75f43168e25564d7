"""``python -m tools.bench``: the saga against its baseline, and the two saga styles.

Phases, on one stack: ``baseline`` and ``saga`` (closed loops: the baseline workflow through
the Temporal client, the orchestrated saga through the door), ``history`` (one of each, its
history counted), ``styles`` (closed loops through each style's API: ``orchestration`` and
``choreography``). Two loops compared run in ``--rounds`` rounds, alternating which goes
first, so a machine that drifts during the run weighs on both alike.
"""

import argparse
import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

from domain.payloads import SagaTimeouts
from domain.status import SagaStyle
from tools.bench.api import api_client, order_to_delivered, watching
from tools.bench.driver import Dealer, Outcome, closed_loop, drive_baseline, drive_saga, guarded
from tools.bench.environment import (
    CHOREOGRAPHY_API,
    DEALER_WINDOW_SECONDS,
    NATS,
    BenchStack,
    StackOptions,
    new_run_dir,
    running_stack,
)
from tools.bench.history import history_counts
from tools.bench.procstat import Usage
from tools.bench.progress import Progress, status
from tools.bench.report import (
    BenchResult,
    HistoryCounts,
    PhaseResult,
    ratios,
    render,
    summary,
    write_json,
)
from tools.bench.stats import Latency

PHASES = ("baseline", "saga", "history", "styles")
TIMEOUTS = SagaTimeouts(dealer_assignment_window=timedelta(seconds=DEALER_WINDOW_SECONDS))
MAX_SAMPLES = 5  # failure messages kept per phase


@dataclass
class Loop:
    """One closed loop: how to drive one workflow, in which style, through what, which
    processes ran it (the monitor's names), and the HTTP client the dealer reports through."""

    name: str
    one: Callable[[int], Awaitable[Outcome]]
    style: SagaStyle | None
    through: str
    worker: str = "worker"
    api: str = "api"
    dealer_http: httpx.AsyncClient | None = None
    warmup: list[Outcome] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_max_mb: dict[str, float] = field(default_factory=dict)

    def add(self, outcomes: list[Outcome], usage: Usage) -> None:
        self.outcomes += outcomes
        self.seconds += usage.seconds
        for process, seconds in usage.cpu_s.items():
            self.cpu_s[process] = round(self.cpu_s.get(process, 0.0) + seconds, 3)
        for process, mb in usage.rss_max_mb.items():
            self.rss_max_mb[process] = max(self.rss_max_mb.get(process, 0.0), mb)

    def result(self, sagas: int, rounds: int) -> PhaseResult:
        ok = [o.seconds for o in self.outcomes if o.problem is None]
        problems = [o.problem for o in self.warmup + self.outcomes if o.problem is not None]
        by_role = {"worker": self.worker, "server": "server", "api": self.api, "nats": NATS}
        per_saga = {
            role: 1000 * self.cpu_s[process] / sagas
            for role, process in (*by_role.items(), ("bench", "bench"))
            if process in self.cpu_s
        }
        stack = sum(v for k, v in self.cpu_s.items() if k != "bench")
        per_saga["stack"] = 1000 * stack / sagas
        return PhaseResult(
            name=self.name,
            style=self.style,
            through=self.through,
            sagas=sagas,
            delivered=len(ok),
            failures=len(problems),
            failure_samples=problems[:MAX_SAMPLES],
            warmup=len(self.warmup),
            rounds=rounds,
            seconds=self.seconds,
            sagas_per_s=len(ok) / self.seconds if self.seconds > 0 else math.nan,
            e2e=Latency.of(ok),
            cpu_s=self.cpu_s,
            cpu_ms_per_saga=per_saga,
            rss_max_mb=self.rss_max_mb,
        )


def shares(total: int, rounds: int) -> list[int]:
    """``total`` split into ``rounds`` nearly equal parts (the larger first)."""
    return [total // rounds + (1 if i < total % rounds else 0) for i in range(rounds)]


async def measure(
    bench: BenchStack, dealer: Dealer, args: argparse.Namespace, loops: list[Loop], total: int
) -> list[PhaseResult]:
    """Each loop's warm-up, then ``total`` workflows of each in rounds, the first of each
    round alternating (a, b, b, a, ...)."""

    async def go(loop: Loop, count: int, label: str) -> list[Outcome]:
        dealer.http = loop.dealer_http
        async with Progress(label, count, enabled=not args.quiet) as bar:
            return await guarded(bench, closed_loop(count, args.concurrency, loop.one, bar))

    for loop in loops:
        if args.warmup:
            loop.warmup = await go(loop, args.warmup, f"{loop.name} warm-up")
    rounds = min(args.rounds, total)
    for index, count in enumerate(shares(total, rounds)):
        for loop in loops if index % 2 == 0 else loops[::-1]:
            with bench.monitor.measure() as usage:
                outcomes = await go(loop, count, f"{loop.name} {index + 1}/{rounds}")
            loop.add(outcomes, usage)
    results = [loop.result(total, rounds) for loop in loops]
    for p in results:
        log(args, f"{p.name}: {p.sagas_per_s:.1f} sagas/s, p99 {p.e2e.p99_ms:.0f} ms")
    return results


async def _styles(bench: BenchStack, dealer: Dealer, args: argparse.Namespace) -> list[PhaseResult]:
    """The closed loop through each style's API, the dealer reporting through the same API."""
    assert bench.choreography_api_url is not None, "the stack runs the choreography API"
    async with (
        api_client(bench.stack.api_url) as orchestration,
        api_client(bench.choreography_api_url) as choreography,
        watching(bench) as ends,
    ):

        def through(http: httpx.AsyncClient) -> Callable[[int], Awaitable[Outcome]]:
            return lambda i: order_to_delivered(http, ends, i, args.saga_timeout)

        loops = [
            Loop("orchestration", through(orchestration), SagaStyle.ORCHESTRATION, "api"),
            Loop("choreography", through(choreography), SagaStyle.CHOREOGRAPHY, "api"),
        ]
        loops[0].dealer_http, loops[1].dealer_http = orchestration, choreography
        loops[1].api = CHOREOGRAPHY_API
        return await measure(bench, dealer, args, loops, args.style_sagas)


async def _run_phases(
    bench: BenchStack, dealer: Dealer, args: argparse.Namespace
) -> tuple[list[PhaseResult], list[HistoryCounts]]:
    within = args.saga_timeout
    loops = {
        "baseline": Loop(
            "baseline", lambda i: drive_baseline(bench, i, within), None, "client", "baseline"
        ),
        "saga": Loop(
            "saga",
            lambda i: drive_saga(bench, i, TIMEOUTS, within),
            SagaStyle.ORCHESTRATION,
            "door",
        ),
    }
    chosen = [loop for name, loop in loops.items() if name in args.phases]
    phases = await measure(bench, dealer, args, chosen, args.sagas) if chosen else []
    history = []
    if "history" in args.phases:
        dealer.http = None
        history = await guarded(bench, history_counts(bench, TIMEOUTS, within))
    if "styles" in args.phases:
        phases += await _styles(bench, dealer, args)
    return phases, history


def log(args: argparse.Namespace, message: str) -> None:
    status("bench", message, quiet=args.quiet)


async def run(args: argparse.Namespace) -> int:
    """The whole run; returns the exit status (1 if any saga failed)."""
    started, started_at = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run_dir = new_run_dir(args.out)
    log(args, f"run folder {run_dir}; phases {', '.join(args.phases)}")
    options = StackOptions(
        database_url=args.database_url,
        poll_rps=args.poll_rps,
        baseline="baseline" in args.phases or "history" in args.phases,
        # NATS and the second API only when measured: otherwise the worker would also run
        # the choreography's (idle) consumers, relay and sweepers in every other phase.
        choreography="styles" in args.phases,
    )
    async with running_stack(run_dir, options) as bench:
        dealer = Dealer(bench)
        dealer_task = asyncio.create_task(dealer.run())
        try:
            phases, history = await _run_phases(bench, dealer, args)
        finally:
            dealer_task.cancel()
            await asyncio.gather(dealer_task, return_exceptions=True)
        rss_run_max = dict(bench.monitor.run_max_mb)
    by_name = {p.name: p for p in phases}
    failures = sum(p.failures for p in phases) + sum(h.problem is not None for h in history)
    result = BenchResult(
        started_at=started_at,
        wall_seconds=time.perf_counter() - started,
        run_dir=str(run_dir),
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        phases=phases,
        ratios=ratios(by_name),
        history=history,
        rss_run_max_mb=rss_run_max,
        dealer_errors=dealer.errors[:MAX_SAMPLES],
        failures=failures,
        summary=summary(by_name, "saga", "baseline", "bench"),
        summary_choreography=(
            summary(by_name, "choreography", "orchestration", "bench-choreography")
            if "styles" in args.phases
            else None
        ),
    )
    write_json(result, run_dir / "result.json", args.out / "latest.json")
    print(render(result))
    print(f"\nrun folder {run_dir}; result {args.out / 'latest.json'}; {result.wall_seconds:.0f} s")
    if result.summary_choreography is not None:
        print(result.summary_choreography)
    print(result.summary, flush=True)
    return 1 if failures else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m tools.bench`` (without a subcommand)."""
    parser.add_argument("--sagas", type=int, default=200, help="measured sagas, baseline/saga")
    parser.add_argument(
        "--style-sagas", type=int, default=150, help="measured sagas of each style (styles)"
    )
    parser.add_argument("--concurrency", type=int, default=50, help="sagas in flight (<= 500)")
    parser.add_argument("--warmup", type=int, default=20, help="uncounted sagas per loop")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of two loops compared (a, b, b, a, ...)"
    )
    parser.add_argument(
        "--phases",
        type=_phase_list,
        default=list(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)}",
    )
    parser.add_argument(
        "--saga-timeout", type=float, default=120.0, help="seconds before a saga counts as failed"
    )


def _phase_list(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PHASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"phases are {','.join(PHASES)}; not {unknown}")
    return [p for p in PHASES if p in chosen]


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    # Each saga in flight holds one result long poll; the namespace allows ~1,200.
    if not 1 <= args.concurrency <= 500:
        parser.error("--concurrency must be between 1 and 500")
    if min(args.sagas, args.style_sagas, args.rounds) < 1 or args.warmup < 0:
        parser.error("--sagas, --style-sagas and --rounds must be positive, --warmup >= 0")
