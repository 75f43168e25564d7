"""``python -m tools.bench``: throughput and latency of the saga against its baseline, then HTTP.

Phases run one after the other on the same stack: ``baseline``, ``saga`` (each a closed loop
of N workflows, C in flight, after an uncounted warm-up; the two together, in rounds that
alternate which goes first); ``history`` (one delivered saga and the baseline: their
histories counted); ``http-unloaded`` (one order at a time through the API); ``decision``
(the API's confirm against a Temporal update, one at a time); ``saturation`` (a closed loop
through the API); ``http`` (an open loop through the API at a fraction of the rate
``saturation`` reached); then ``choreography`` (the choreographed saga against the
orchestrated one through their APIs: a closed loop through each, then the ``http`` phase's
open loop through the choreography API).
"""

import argparse
import asyncio
import contextlib
import math
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

from domain.payloads import SagaTimeouts
from domain.status import SagaStyle
from tools.bench.api_load import ApiCalls, HttpLoad, http_load
from tools.bench.driver import Dealer, Outcome, closed_loop, drive_baseline, drive_saga, guarded
from tools.bench.environment import (
    CHOREOGRAPHY_API,
    DEALER_WINDOW_SECONDS,
    NATS,
    BenchStack,
    StackOptions,
    api_client,
    new_run_dir,
    running_stack,
)
from tools.bench.history import history_counts
from tools.bench.progress import Progress, status
from tools.bench.report import (
    OPEN_LOOP,
    SATURATION,
    UNLOADED,
    BenchResult,
    DecisionResult,
    HistoryCounts,
    HttpDetail,
    PhaseKind,
    PhaseResult,
    choreography_line,
    ratios,
    render,
    summary_line,
    targets,
    write_json,
)
from tools.bench.stats import Latency
from tools.bench.styles import api_closed_loop
from tools.bench.unloaded import unloaded_orders

CLIENT_PHASES = ("baseline", "saga")
PHASES = (
    *CLIENT_PHASES,
    "history",
    "http-unloaded",
    "saturation",
    "http",
    "choreography",
)
ORCHESTRATION, CHOREOGRAPHY = SagaStyle.ORCHESTRATION, SagaStyle.CHOREOGRAPHY
HTTP_WARMUP_ORDERS = 5
UNLOADED_WARMUP_ORDERS = 3
# The HTTP phase's rate when neither --rate nor a saturation or saga phase says (orders/s).
FALLBACK_RATE = 5.0
MAX_SAMPLES = 5  # failure messages kept per phase


def log(args: argparse.Namespace, message: str) -> None:
    status("bench", message, quiet=args.quiet)


async def run(args: argparse.Namespace) -> int:
    """The whole run; returns the exit status (1 if any saga failed)."""
    started = time.perf_counter()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run_dir = new_run_dir(args.out)
    log(args, f"run folder {run_dir}; phases {', '.join(args.phases)}")
    collected, rss_run_max, dealer = await _run_phases(run_dir, args)
    phases = collected.phases
    failures = (
        sum(p.failures for p in phases.values())
        + sum(1 for h in collected.history if h.problem is not None)
        + (collected.decision.failures if collected.decision is not None else 0)
    )
    found = ratios(phases)
    result = BenchResult(
        started_at=started_at,
        wall_seconds=time.perf_counter() - started,
        run_dir=str(run_dir),
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        phases=list(phases.values()),
        ratios=found,
        history=collected.history,
        decision=collected.decision,
        targets=targets(phases, found),
        rss_run_max_mb=rss_run_max,
        dealer_errors=dealer.errors[:MAX_SAMPLES],
        failures=failures,
        summary=summary_line(phases),
        summary_choreography=(choreography_line(phases) if "choreography" in args.phases else None),
    )
    write_json(result, run_dir / "result.json", args.out / "latest.json")
    if not args.keep:
        shutil.rmtree(run_dir)
    _print_result(result, run_dir, args)
    return 1 if failures else 0


@dataclass
class _Collected:
    """What the phases measured: the saga-driving phases by name, the history counts, the
    decision comparison."""

    phases: dict[str, PhaseResult] = field(default_factory=dict)
    history: list[HistoryCounts] = field(default_factory=list)
    decision: DecisionResult | None = None


async def _run_phases(
    run_dir: Path, args: argparse.Namespace
) -> tuple[_Collected, dict[str, float], Dealer]:
    """Every phase chosen, on one stack: their results, each peak RSS, the dealer."""
    options = StackOptions(
        database_url=args.database_url,
        db_file=args.db_file,
        server_args=args.server_arg,
        poll_rps=args.poll_rps,
        # NATS and the second API only when measured: otherwise the worker would also run
        # the choreography's (idle) consumers, relay and sweepers in every other phase.
        choreography="choreography" in args.phases,
    )
    collected = _Collected()
    async with (
        running_stack(run_dir, options) as bench,
        api_client(bench) as http,
    ):
        log(args, f"stack up: Temporal {bench.stack.temporal_address}, API {bench.stack.api_url}")
        dealer = Dealer(bench)
        dealer_task = asyncio.create_task(dealer.run())
        try:
            for group in _phase_groups(args.phases):
                if len(group) == 1:
                    await _phase(bench, http, dealer, args, group[0], collected)
                    continue
                for p in await _client_phases(bench, dealer, args, group):
                    collected.phases[p.name] = p
                    _log_phase(args, p)
        finally:
            dealer_task.cancel()
            await asyncio.gather(dealer_task, return_exceptions=True)
        rss_run_max = dict(bench.monitor.run_max_mb)
    return collected, rss_run_max, dealer


async def _phase(
    bench: BenchStack,
    http: httpx.AsyncClient,
    dealer: Dealer,
    args: argparse.Namespace,
    name: str,
    collected: _Collected,
) -> None:
    """Run the phase ``name``, keep its result in ``collected`` and log its headline numbers."""
    if name == "history":
        collected.history = await _history_phase(bench, dealer, args)
        return
    if name == "choreography":
        await _choreography_phase(bench, http, dealer, args, collected.phases)
        return
    if name == "saturation":
        # Orders arrive through the API: its closed loop is the saturation the open loop of
        # the http phase takes its rate from.
        p = await _saturation(bench, http, dealer, args, ORCHESTRATION)
        collected.phases[SATURATION[ORCHESTRATION]] = p
        _log_phase(args, p)
        return
    if name == "http":
        p = await _http_phase(bench, http, dealer, args, collected.phases)
    elif name == "http-unloaded":
        p = await _unloaded_phase(bench, http, dealer, args)
    else:
        (p,) = await _client_phases(bench, dealer, args, (name,))
    collected.phases[name] = p
    _log_phase(args, p)


def _log_phase(args: argparse.Namespace, p: PhaseResult) -> None:
    """The phase's headline numbers on stderr."""
    log(
        args,
        f"{p.name}: {p.sagas_per_s:.1f} sagas/s, p99 {p.e2e.p99_ms:.0f} ms, {p.failures} failed",
    )


def _print_result(result: BenchResult, run_dir: Path, args: argparse.Namespace) -> None:
    """The tables, where the run's files are, then the summary line last."""
    print(render(result))
    print()
    kept = "" if args.keep else " (removed)"
    print(
        f"run folder {run_dir}{kept}; result {args.out / 'latest.json'}; "
        f"{result.wall_seconds:.0f} s"
    )
    if result.summary_choreography is not None:
        print(result.summary_choreography)
    print(result.summary, flush=True)


def _phase_groups(phases: list[str]) -> list[tuple[str, ...]]:
    """``phases`` in their order, each alone except the saga's closed loop and the baseline's,
    which run together (``_client_phases``) where the first of them is."""
    groups: list[tuple[str, ...]] = []
    for name in phases:
        if name not in CLIENT_PHASES or not set(CLIENT_PHASES) <= set(phases):
            groups.append((name,))
        elif CLIENT_PHASES not in groups:
            groups.append(CLIENT_PHASES)
    return groups


@dataclass
class _Rounds:
    """What one closed-loop phase measured over its rounds, added up."""

    warmup: list[Outcome] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_max_mb: dict[str, float] = field(default_factory=dict)
    dealer: "_DealerCounts" = field(default_factory=lambda: _DealerCounts(0, 0, 0))


async def _client_phases(
    bench: BenchStack, dealer: Dealer, args: argparse.Namespace, names: tuple[str, ...]
) -> list[PhaseResult]:
    """The closed loops ``names`` through the Temporal client: one phase, or the baseline and
    the saga.

    A pair runs in ``--rounds`` rounds, each of its share of ``--sagas``, the one that goes
    first alternating (baseline, saga, saga, baseline, ...) after each one's warm-up. The
    machine's speed drifts during a run and the stack changes (its server holds more history
    as the run goes on): measured one after the other, whichever ran second cost more per
    workflow (docs/performance.md). Each phase's result adds up its rounds: sagas, measured
    seconds, CPU seconds; its peak RSS is the highest of its rounds.
    """
    timeouts = SagaTimeouts(dealer_assignment_window=timedelta(seconds=DEALER_WINDOW_SECONDS))
    dealer.http = None  # through the door
    runs = {name: _Rounds() for name in names}

    def driver(name: str) -> Callable[[int], Awaitable[Outcome]]:
        if name == "saga":
            return lambda i: drive_saga(bench, i, timeouts, args.saga_timeout)
        return lambda i: drive_baseline(bench, i, args.saga_timeout)

    async def loop(name: str, count: int, label: str) -> list[Outcome]:
        async with Progress(label, count, enabled=not args.quiet) as bar:
            return await guarded(bench, closed_loop(count, args.concurrency, driver(name), bar))

    for name in names:
        if args.warmup:
            runs[name].warmup = await loop(name, args.warmup, f"{name} warm-up")
    rounds = args.rounds if len(names) > 1 else 1
    for index, count in enumerate(_shares(args.sagas, rounds)):
        for name in names if index % 2 == 0 else names[::-1]:
            label = name if rounds == 1 else f"{name} round {index + 1}/{rounds}"
            run = runs[name]
            before = _DealerCounts.of(dealer)
            with bench.monitor.measure() as usage:
                run.outcomes += await loop(name, count, label)
            run.dealer = run.dealer + (_DealerCounts.of(dealer) - before)
            run.seconds += usage.seconds
            for process, seconds in usage.cpu_s.items():
                run.cpu_s[process] = round(run.cpu_s.get(process, 0.0) + seconds, 3)
            for process, mb in usage.rss_max_mb.items():
                run.rss_max_mb[process] = max(run.rss_max_mb.get(process, 0.0), mb)
    return [_client_result(name, runs[name], args.sagas, rounds) for name in names]


def _shares(total: int, rounds: int) -> list[int]:
    """``total`` split into ``rounds`` nearly equal parts (the larger first)."""
    return [total // rounds + (1 if i < total % rounds else 0) for i in range(rounds)]


def _client_result(name: str, run: _Rounds, sagas: int, rounds: int) -> PhaseResult:
    return _phase_result(
        name,
        "baseline" if name == "baseline" else "saga",
        sagas=sagas,
        ok=[o.seconds for o in run.outcomes if o.problem is None],
        problems=[o.problem for o in run.warmup + run.outcomes if o.problem is not None],
        warmup=len(run.warmup),
        rounds=rounds,
        seconds=run.seconds,
        cpu_s=run.cpu_s,
        rss_max_mb=run.rss_max_mb,
        worker="baseline" if name == "baseline" else "worker",
        dealer=run.dealer,
    )


def _http_rate(args: argparse.Namespace, phases: dict[str, PhaseResult]) -> tuple[float, str]:
    """The open loop's rate in orders/s, and where it comes from: ``--rate``, else
    ``--rate-fraction`` of the saturation rate in this run: the sagas/s of the closed loop
    through the API (``saturation-orchestration``: orders arrive through the API, which takes
    its share of the cores), else of the closed loop through the Temporal client
    (``saga``, an overestimate), else FALLBACK_RATE."""
    if args.rate is not None:
        return args.rate, "--rate"
    for name in (SATURATION[ORCHESTRATION], "saga"):
        saturation = phases.get(name)
        if saturation is not None and saturation.sagas_per_s > 0:
            rate = args.rate_fraction * saturation.sagas_per_s
            return (
                rate,
                f"{args.rate_fraction:.0%} of {name}'s {saturation.sagas_per_s:.1f} sagas/s",
            )
    return FALLBACK_RATE, "default: neither saturation-orchestration nor saga ran"


async def _http_phase(
    bench: BenchStack,
    http: httpx.AsyncClient,
    dealer: Dealer,
    args: argparse.Namespace,
    phases: dict[str, PhaseResult],
) -> PhaseResult:
    """The open loop through the (orchestration) API, after a few uncounted orders."""
    orders_per_s, source = _http_rate(args, phases)
    return await _open_loop(bench, http, dealer, args, ORCHESTRATION, orders_per_s, source)


async def _open_loop(
    bench: BenchStack,
    http: httpx.AsyncClient,
    dealer: Dealer,
    args: argparse.Namespace,
    style: SagaStyle,
    orders_per_s: float,
    source: str,
) -> PhaseResult:
    """The open loop through ``http``, the API that places orders in ``style``, at
    ``orders_per_s`` for ``--http-seconds``, after a few uncounted orders: the phase
    ``OPEN_LOOP[style]`` (``http`` for orchestration). The dealer reports through the same API.
    """
    name = OPEN_LOOP[style]
    tag = f"bench-{bench.run_dir.name}" + ("" if style == ORCHESTRATION else f"-{style}")
    log(args, f"{name}: {orders_per_s:.2f} orders/s ({source}) for {args.http_seconds:g} s")
    with _dealer_through(dealer, http):
        warm = await _http_warmup(bench, http, tag, args)
        before, report_calls = _DealerCounts.of(dealer), len(dealer.report_seconds)
        with bench.monitor.measure() as usage:
            load = await _http_measured(bench, http, tag, orders_per_s, args, name)
        reports = dealer.report_seconds[report_calls:]
    result = _phase_result(
        name,
        "http",
        style=style,
        sagas=load.requested,
        ok=load.e2e_seconds,
        cancelled=load.cancelled,
        problems=warm.problems + load.problems,
        warmup=warm.requested,
        seconds=load.seconds,
        cpu_s=usage.cpu_s,
        rss_max_mb=usage.rss_max_mb,
        worker="worker",
        api=_api_of(style),
        dealer=_DealerCounts.of(dealer) - before,
    )
    result.http = _http_detail(
        load,
        warm,
        orders_per_s=orders_per_s,
        rate_source=source,
        seconds=args.http_seconds,
        cancel_every=args.cancel_every,
        reports=reports,
        refused=result.dealer_not_yet,
    )
    return result


def _api_of(style: SagaStyle) -> str:
    """The resource monitor's name of the API that places orders in ``style``."""
    return "api" if style == ORCHESTRATION else CHOREOGRAPHY_API


@contextlib.contextmanager
def _dealer_through(dealer: Dealer, http: httpx.AsyncClient) -> Iterator[None]:
    """The dealer reports over HTTP, through ``http`` (the API being measured, whose CPU is
    counted), for the block; then through the client it had before."""
    before = dealer.http
    dealer.http = http
    try:
        yield
    finally:
        dealer.http = before


async def _choreography_phase(
    bench: BenchStack,
    http: httpx.AsyncClient,
    dealer: Dealer,
    args: argparse.Namespace,
    phases: dict[str, PhaseResult],
) -> None:
    """The choreographed saga against the orchestrated one, on the same stack, each through
    its own API (``http``: the orchestration API's client): a closed loop of
    ``--style-sagas`` through each (the orchestrated one only if the ``saturation`` phase did
    not run), one order at a time through the choreography API (as ``http-unloaded`` through
    the orchestration one), then the ``http`` phase's open loop, at its rate, through the
    choreography API. Adds the phases SATURATION[style], UNLOADED[CHOREOGRAPHY] and
    OPEN_LOOP[CHOREOGRAPHY]."""
    assert bench.choreography_api_url is not None, "the stack runs the choreography API"
    async with api_client(bench, bench.choreography_api_url) as choreography_http:
        apis = {ORCHESTRATION: http, CHOREOGRAPHY: choreography_http}
        for style, through in apis.items():
            if SATURATION[style] in phases:  # the saturation phase measured it in this run
                continue
            p = phases[SATURATION[style]] = await _saturation(bench, through, dealer, args, style)
            _log_phase(args, p)
        p = phases[UNLOADED[CHOREOGRAPHY]] = await _unloaded_phase(
            bench, choreography_http, dealer, args, CHOREOGRAPHY
        )
        _log_phase(args, p)
        orders_per_s, source = _open_loop_rate(args, phases)
        p = phases[OPEN_LOOP[CHOREOGRAPHY]] = await _open_loop(
            bench, choreography_http, dealer, args, CHOREOGRAPHY, orders_per_s, source
        )
        _log_phase(args, p)


def _open_loop_rate(args: argparse.Namespace, phases: dict[str, PhaseResult]) -> tuple[float, str]:
    """The choreography open loop's rate: the ``http`` phase's in this run, else the one it
    would have had (:func:`_http_rate`)."""
    http = phases.get(OPEN_LOOP[ORCHESTRATION])
    if http is not None and http.http is not None:
        return http.http.orders_per_s, f"the http phase's: {http.http.rate_source}"
    return _http_rate(args, phases)


async def _saturation(
    bench: BenchStack,
    http: httpx.AsyncClient,
    dealer: Dealer,
    args: argparse.Namespace,
    style: SagaStyle,
) -> PhaseResult:
    """A closed loop of ``--style-sagas`` sagas, ``--concurrency`` in flight, through ``http``
    (the API placing orders in ``style``), after ``--warmup`` uncounted; the dealer reports
    through the same API (``tools/bench/styles.py``)."""
    name = SATURATION[style]
    tag = f"bench-{bench.run_dir.name}-{name}"

    async def loop(count: int, label: str, suffix: str) -> list[Outcome]:
        outcomes, _ = await api_closed_loop(
            bench,
            http,
            total=count,
            concurrency=args.concurrency,
            tag=f"{tag}{suffix}",
            within=args.saga_timeout,
            label=label,
            quiet=args.quiet,
        )
        return outcomes

    with _dealer_through(dealer, http):
        warmup = await loop(args.warmup, f"{name} warm-up", "-warmup") if args.warmup else []
        before = _DealerCounts.of(dealer)
        with bench.monitor.measure() as usage:
            outcomes = await loop(args.style_sagas, name, "")
    return _phase_result(
        name,
        "http",
        style=style,
        sagas=args.style_sagas,
        ok=[o.seconds for o in outcomes if o.problem is None],
        problems=[o.problem for o in warmup + outcomes if o.problem is not None],
        warmup=len(warmup),
        seconds=usage.seconds,
        cpu_s=usage.cpu_s,
        rss_max_mb=usage.rss_max_mb,
        worker="worker",
        api=_api_of(style),
        dealer=_DealerCounts.of(dealer) - before,
    )


def _http_detail(
    calls: ApiCalls,
    warm: ApiCalls,
    *,
    orders_per_s: float,
    rate_source: str,
    seconds: float,
    cancel_every: int,
    reports: list[float],
    refused: int,
    in_transit: Latency | None = None,
    healthz: Latency | None = None,
) -> HttpDetail:
    """An HTTP phase's calls (the warm-up's refusals counted with them)."""
    return HttpDetail(
        orders_per_s=orders_per_s,
        rate_source=rate_source,
        seconds=seconds,
        cancel_every=cancel_every,
        orders=Latency.of(calls.order_seconds),
        confirms=Latency.of(calls.confirm_seconds),
        cancels=Latency.of(calls.cancel_seconds),
        in_transit=in_transit,
        healthz=healthz,
        delivered_reports=Latency.of(reports),
        order_answers=dict(calls.order_answers),
        non_2xx=dict(calls.non_2xx + warm.non_2xx),
        reports_refused_409=refused,
    )


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
            cancel_every=args.cancel_every,
        ),
    )


async def _http_measured(
    bench: BenchStack,
    http: httpx.AsyncClient,
    tag: str,
    orders_per_s: float,
    args: argparse.Namespace,
    name: str,
) -> HttpLoad:
    """The measured open loop ``name``: ``--http-seconds`` of orders at ``orders_per_s``."""
    total = round(orders_per_s * args.http_seconds)
    async with Progress(f"{name} orders", total, enabled=not args.quiet) as bar:
        return await guarded(
            bench,
            http_load(
                bench,
                http,
                rate=orders_per_s,
                seconds=args.http_seconds,
                tag=tag,
                settle_within=args.saga_timeout,
                cancel_every=args.cancel_every,
                on_request=bar.advance,
            ),
        )


async def _unloaded_phase(
    bench: BenchStack,
    http: httpx.AsyncClient,
    dealer: Dealer,
    args: argparse.Namespace,
    style: SagaStyle = ORCHESTRATION,
) -> PhaseResult:
    """One order at a time through ``http``, the API placing orders in ``style``
    (``tools/bench/unloaded.py``): the phase ``UNLOADED[style]``. The dealer reports through
    the same API."""
    name = UNLOADED[style]
    tag = f"bench-{bench.run_dir.name}-unloaded" + ("" if style == ORCHESTRATION else f"-{style}")
    with _dealer_through(dealer, http):
        before, report_calls = _DealerCounts.of(dealer), len(dealer.report_seconds)
        with bench.monitor.measure() as usage:
            async with Progress(name, args.unloaded_orders, enabled=not args.quiet) as bar:
                load = await guarded(
                    bench,
                    unloaded_orders(
                        bench,
                        http,
                        orders=args.unloaded_orders,
                        warmup=UNLOADED_WARMUP_ORDERS,
                        tag=tag,
                        within=args.saga_timeout,
                        on_order=bar.advance,
                    ),
                )
        reports = dealer.report_seconds[report_calls:]
    result = _phase_result(
        name,
        "http",
        style=style,
        sagas=load.requested,
        ok=load.e2e_seconds,
        problems=load.problems,
        warmup=UNLOADED_WARMUP_ORDERS,
        seconds=load.seconds,
        cpu_s=usage.cpu_s,
        rss_max_mb=usage.rss_max_mb,
        worker="worker",
        api=_api_of(style),
        dealer=_DealerCounts.of(dealer) - before,
    )
    result.http = _http_detail(
        load,
        ApiCalls(),
        orders_per_s=math.nan,
        rate_source="one at a time",
        seconds=math.nan,
        cancel_every=0,
        # The warm-up's reports too: the dealer does not tell them apart (3 of them).
        reports=reports,
        refused=result.dealer_not_yet,
        in_transit=Latency.of(load.in_transit_seconds),
        healthz=Latency.of(load.healthz_seconds),
    )
    return result


async def _history_phase(
    bench: BenchStack, dealer: Dealer, args: argparse.Namespace
) -> list[HistoryCounts]:
    """One delivered saga, and the baseline, with their histories' counts."""
    dealer.http = None  # through the door
    timeouts = SagaTimeouts(dealer_assignment_window=timedelta(seconds=DEALER_WINDOW_SECONDS))
    counted = await guarded(bench, history_counts(bench, timeouts, args.saga_timeout))
    for h in counted:
        log(
            args,
            f"history {h.name}: {h.events} events, {h.workflow_tasks} workflow tasks"
            + (f"; FAILED {h.problem}" if h.problem else ""),
        )
    return counted


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def _phase_result(
    name: str,
    kind: PhaseKind,
    *,
    style: SagaStyle = ORCHESTRATION,
    sagas: int,
    ok: list[float],
    problems: list[str],
    cancelled: int = 0,
    warmup: int,
    rounds: int = 1,
    seconds: float,
    cpu_s: dict[str, float],
    rss_max_mb: dict[str, float],
    worker: str,
    api: str = "api",
    dealer: "_DealerCounts",
) -> PhaseResult:
    """The phase's numbers; ``worker`` and ``api`` name the processes that ran its sagas
    (their CPU per saga is reported as the roles ``worker`` and ``api``)."""

    def per_saga(process: str) -> float:
        return 1000 * cpu_s[process] / sagas if sagas and process in cpu_s else math.nan

    stack_cpu = sum(v for k, v in cpu_s.items() if k != "bench")
    return PhaseResult(
        name=name,
        kind=kind,
        style=style,
        sagas=sagas,
        delivered=len(ok),
        cancelled=cancelled,
        failures=len(problems),
        failure_samples=problems[:MAX_SAMPLES],
        warmup=warmup,
        rounds=rounds,
        seconds=seconds,
        sagas_per_s=(len(ok) + cancelled) / seconds if seconds > 0 else math.nan,
        e2e=Latency.of(ok),
        cpu_s=cpu_s,
        cpu_ms_per_saga={
            "worker": per_saga(worker),
            "server": per_saga("server"),
            "api": per_saga(api),
            "nats": per_saga(NATS),
            "bench": per_saga("bench"),
            "stack": 1000 * stack_cpu / sagas if sagas else math.nan,
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
        return cls(0, dealer.not_yet, 0)

    def __add__(self, other: "_DealerCounts") -> "_DealerCounts":
        return _DealerCounts(
            self.queries + other.queries,
            self.not_yet + other.not_yet,
            self.resends + other.resends,
        )

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
        "--rounds",
        type=int,
        default=2,
        help="the saga's closed loop and the baseline's run together, in this many rounds "
        "each (of their share of --sagas), the first of each round alternating: baseline, "
        "saga, saga, baseline, ... (1: the baseline's, then the saga's)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="orders per second of the http phase (each a POST /orders and its confirm or "
        "cancel); default: --rate-fraction of the sagas/s saturation-orchestration (else "
        f"saga) reached in this run ({FALLBACK_RATE:g} if neither ran)",
    )
    parser.add_argument(
        "--rate-fraction",
        type=float,
        default=0.8,
        help="the http phase's rate as a fraction of the saturation rate (without --rate)",
    )
    # 40 s: ~400 orders at the usual rate, so a p99 is the fifth slowest answer, not the second.
    parser.add_argument("--http-seconds", type=float, default=40.0, help="HTTP phase length")
    parser.add_argument(
        "--style-sagas",
        type=int,
        default=150,
        help="measured sagas of each closed loop through an API (saturation, choreography phases)",
    )
    parser.add_argument(
        "--cancel-every",
        type=int,
        default=10,
        help="the http phase cancels one order in this many instead of confirming it (0: none)",
    )
    parser.add_argument(
        "--unloaded-orders",
        type=int,
        default=30,
        help="orders of the http-unloaded phase, one at a time",
    )
    parser.add_argument(
        "--decisions",
        type=int,
        default=50,
        help="decisions of each mechanism in the decision phase, one at a time",
    )
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
    positive = (
        args.sagas,
        args.style_sagas,
        args.http_seconds,
        args.rate_fraction,
        args.unloaded_orders,
        args.decisions,
    )
    if min(positive) <= 0 or (args.rate is not None and args.rate <= 0):
        parser.error(
            "--sagas, --style-sagas, --rate, --rate-fraction, --http-seconds, --unloaded-orders "
            "and --decisions must be positive"
        )
    if args.warmup < 0 or args.cancel_every < 0:
        parser.error("--warmup and --cancel-every must be >= 0")
    if not 1 <= args.rounds <= args.sagas:
        parser.error("--rounds must be between 1 and --sagas")
