"""``python -m tools.bench``: the saga against its baseline, its two routings, the two styles.

Phases, on one stack: ``baseline`` and ``saga`` (closed loops: the baseline workflow through
the Temporal client, the orchestrated saga through the door in each routing, ``saga-workflow``
and ``saga-service``), ``history`` (one of each, its history counted), ``styles`` (closed
loops through each API: ``orchestration-workflow``, ``orchestration-service``,
``choreography``), ``unloaded`` (one saga at a time through each API, POST to IN_TRANSIT).
Loops compared run in ``--rounds`` rounds, alternating their order, so a machine that drifts
during the run weighs on all alike.
"""

import argparse
import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

from domain.payloads import SagaTimeouts
from domain.status import ActivityRouting, SagaStyle
from tools.bench.api import (
    OrderEnds,
    api_client,
    order_to_delivered,
    order_to_in_transit,
    watching,
)
from tools.bench.driver import Dealer, Outcome, closed_loop, drive_baseline, drive_saga, guarded
from tools.bench.environment import (
    CHOREOGRAPHY_API,
    DATABASE,
    DEALER_WINDOW_SECONDS,
    DEFAULT_ROUTING,
    NATS,
    OTHER_ROUTING,
    OTHER_ROUTING_API,
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
    UnloadedResult,
    ratios,
    render,
    summary,
    write_json,
)
from tools.bench.stats import Latency

PHASES = ("baseline", "saga", "history", "styles", "unloaded")
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
        by_role[DATABASE] = DATABASE
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


# Each API of the stack: (loop name, HTTP client, style, the monitor's name of its process).
ApiClients = list[tuple[str, httpx.AsyncClient, SagaStyle, str]]


def _api_loops(ends: OrderEnds, args: argparse.Namespace, clients: ApiClients) -> list[Loop]:
    """One closed loop through each API the stack runs, the dealer reporting through it."""

    def through(http: httpx.AsyncClient) -> Callable[[int], Awaitable[Outcome]]:
        return lambda i: order_to_delivered(http, ends, i, args.saga_timeout)

    return [
        Loop(name, through(http), style, "api", api=api, dealer_http=http)
        for name, http, style, api in clients
    ]


@contextlib.asynccontextmanager
async def api_clients(bench: BenchStack) -> AsyncIterator[ApiClients]:
    """A client for each API of the stack: (loop name, client, style, process name)."""
    assert bench.choreography_api_url is not None, "the stack runs the choreography API"
    assert bench.other_routing_api_url is not None, "the stack runs the other routing's API"
    apis = [
        (f"orchestration-{DEFAULT_ROUTING}", bench.stack.api_url, SagaStyle.ORCHESTRATION, "api"),
        (
            f"orchestration-{OTHER_ROUTING}",
            bench.other_routing_api_url,
            SagaStyle.ORCHESTRATION,
            OTHER_ROUTING_API,
        ),
        ("choreography", bench.choreography_api_url, SagaStyle.CHOREOGRAPHY, CHOREOGRAPHY_API),
    ]
    async with contextlib.AsyncExitStack() as stack:
        yield [
            (name, await stack.enter_async_context(api_client(url)), style, process)
            for name, url, style, process in apis
        ]


async def _styles(bench: BenchStack, dealer: Dealer, args: argparse.Namespace) -> list[PhaseResult]:
    """The closed loop through each API, the dealer reporting through the same API."""
    async with api_clients(bench) as clients, watching(bench) as ends:
        loops = _api_loops(ends, args, clients)
        return await measure(bench, dealer, args, loops, args.style_sagas)


async def _unloaded(
    bench: BenchStack, dealer: Dealer, args: argparse.Namespace
) -> list[UnloadedResult]:
    """One saga at a time through each API in turn (after one uncounted each): from its POST
    to its delivery IN_TRANSIT, with nothing else in flight."""
    async with api_clients(bench) as clients, watching(bench) as ends:
        seen: dict[str, list[Outcome]] = {name: [] for name, *_ in clients}
        async with Progress(
            "unloaded", (args.unloaded + 1) * len(clients), enabled=not args.quiet
        ) as bar:
            for index in range(args.unloaded + 1):
                for name, http, _, _ in clients if index % 2 else clients[::-1]:
                    dealer.http = http
                    outcome = await guarded(
                        bench, order_to_in_transit(http, ends, index, args.saga_timeout)
                    )
                    if index:  # the first of each warms its path up
                        seen[name].append(outcome)
                    bar.advance()
    results = []
    for name, _, style, _ in clients:
        ok = [o.seconds for o in seen[name] if o.problem is None]
        problems = [o.problem for o in seen[name] if o.problem is not None]
        results.append(
            UnloadedResult(
                name=name,
                style=style,
                to_in_transit=Latency.of(ok),
                failures=len(problems),
                failure_samples=problems[:MAX_SAMPLES],
            )
        )
        log(
            args,
            f"{name} unloaded: POST to IN_TRANSIT p50 {results[-1].to_in_transit.p50_ms:.0f} ms",
        )
    return results


async def _run_phases(
    bench: BenchStack, dealer: Dealer, args: argparse.Namespace
) -> tuple[list[PhaseResult], list[HistoryCounts], list[UnloadedResult]]:
    within = args.saga_timeout

    def saga_loop(routing: ActivityRouting) -> Loop:
        door = bench.doors[routing]
        return Loop(
            f"saga-{routing}",
            lambda i: drive_saga(bench, door, i, TIMEOUTS, within),
            SagaStyle.ORCHESTRATION,
            "door",
        )

    chosen = []
    if "baseline" in args.phases:
        chosen.append(
            Loop("baseline", lambda i: drive_baseline(bench, i, within), None, "client", "baseline")
        )
    if "saga" in args.phases:
        chosen += [saga_loop(DEFAULT_ROUTING), saga_loop(OTHER_ROUTING)]
    phases = await measure(bench, dealer, args, chosen, args.sagas) if chosen else []
    history = []
    if "history" in args.phases:
        dealer.http = None
        history = await guarded(bench, history_counts(bench, TIMEOUTS, within))
    if "styles" in args.phases:
        phases += await _styles(bench, dealer, args)
    unloaded = await _unloaded(bench, dealer, args) if "unloaded" in args.phases else []
    return phases, history, unloaded


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
        server_config=tuple(args.server_config),
        baseline="baseline" in args.phases or "history" in args.phases,
        # NATS and the second API only when measured: otherwise the worker would also run
        # the choreography's (idle) consumers, relay and sweepers in every other phase.
        choreography=bool({"styles", "unloaded"} & set(args.phases)),
        other_routing_api=bool({"styles", "unloaded"} & set(args.phases)),
    )
    async with running_stack(run_dir, options) as bench:
        dealer = Dealer(bench)
        dealer_task = asyncio.create_task(dealer.run())
        try:
            phases, history, unloaded = await _run_phases(bench, dealer, args)
        finally:
            dealer_task.cancel()
            await asyncio.gather(dealer_task, return_exceptions=True)
        rss_run_max = dict(bench.monitor.run_max_mb)
    by_name = {p.name: p for p in phases}
    failures = sum(p.failures for p in phases) + sum(u.failures for u in unloaded)
    failures += sum(h.problem is not None for h in history)
    result = BenchResult(
        started_at=started_at,
        wall_seconds=time.perf_counter() - started,
        run_dir=str(run_dir),
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        phases=phases,
        ratios=ratios(by_name),
        history=history,
        unloaded=unloaded,
        rss_run_max_mb=rss_run_max,
        dealer_errors=dealer.errors[:MAX_SAMPLES],
        failures=failures,
        summary=summary(by_name, f"saga-{DEFAULT_ROUTING}", "baseline", "bench"),
        summary_routing=(
            summary(by_name, f"saga-{DEFAULT_ROUTING}", f"saga-{OTHER_ROUTING}", "bench-routing")
            if "saga" in args.phases
            else None
        ),
        summary_choreography=(
            summary(
                by_name,
                "choreography",
                f"orchestration-{DEFAULT_ROUTING}",
                "bench-choreography",
            )
            if "styles" in args.phases
            else None
        ),
    )
    write_json(result, run_dir / "result.json", args.out / "latest.json")
    print(render(result))
    print(f"\nrun folder {run_dir}; result {args.out / 'latest.json'}; {result.wall_seconds:.0f} s")
    for line in (result.summary_choreography, result.summary_routing):
        if line is not None:
            print(line)
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
        "--rounds", type=int, default=2, help="rounds of loops compared (a, b, b, a, ...)"
    )
    parser.add_argument(
        "--unloaded", type=int, default=20, help="sagas through each API one at a time (unloaded)"
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
    if min(args.sagas, args.style_sagas, args.rounds, args.unloaded) < 1 or args.warmup < 0:
        parser.error(
            "--sagas, --style-sagas, --rounds and --unloaded must be positive, --warmup >= 0"
        )
