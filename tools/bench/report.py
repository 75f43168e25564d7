"""Results of a bench run: the JSON document's models, and the plain-text tables."""

import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from domain.status import SagaStyle
from tools.bench.stats import Latency

PhaseKind = Literal["baseline", "saga", "http"]


class HttpDetail(BaseModel):
    """An HTTP phase's own numbers."""

    orders_per_s: float  # orders placed per second (open loop; NaN: one at a time)
    rate_source: str  # how that rate was chosen
    seconds: float  # how long orders were placed (NaN: one at a time)
    cancel_every: int  # one order in this many is cancelled instead of confirmed (0: none)
    orders: Latency  # POST /orders until its answer (202: the saga is durably started)
    confirms: Latency  # POST /payments/{id}/confirm, sent as soon as the 202 is in
    cancels: Latency  # POST /payments/{id}/cancel, likewise
    in_transit: Latency | None = None  # POST /orders .. delivery IN_TRANSIT seen (unloaded)
    healthz: Latency | None = None  # GET /healthz before each order, for reference (unloaded)
    delivered_reports: Latency  # POST /deliveries/{id}/delivered, the dealer's calls
    order_answers: dict[str, int]  # POST /orders by status code
    non_2xx: dict[str, int]
    reports_refused_409: int  # the saga had not seen its pivot yet; the dealer retried


class PhaseResult(BaseModel):
    """One phase: how many workflows, how fast, what it cost."""

    name: str
    kind: PhaseKind
    style: SagaStyle = SagaStyle.ORCHESTRATION
    sagas: int
    delivered: int
    cancelled: int = 0  # ended CANCELLED as the bench asked (HTTP phases' cancels)
    failures: int
    failure_samples: list[str]
    warmup: int
    # A closed loop paired with the baseline's ran in rounds, alternating which went first.
    rounds: int = 1
    seconds: float  # measured: the rounds' seconds added up
    sagas_per_s: float  # sagas ended (delivered or, as asked, cancelled) per second
    e2e: Latency  # start call .. result (HTTP: POST /orders .. DELIVERED seen in the DB)
    cpu_s: dict[str, float]  # per process over the measured part: worker, baseline, ...
    # By role: worker (the one running this phase), server (Temporal), api (the API the phase
    # calls), nats (when it runs), bench, stack (every process of the stack together).
    cpu_ms_per_saga: dict[str, float]
    rss_max_mb: dict[str, float]
    dealer_queries: int = 0  # the dealer's own state queries (signal path)
    dealer_not_yet: int = 0  # reports held back: the saga had not seen its pivot yet
    dealer_resends: int = 0  # reports the saga ignored and got again (expected 0)
    http: HttpDetail | None = None


class Ratio(BaseModel):
    """``numerator`` over ``denominator`` (phase names), in throughput and in p99 latency."""

    label: str
    numerator: str
    denominator: str
    sagas_per_s: float
    p99: float


class HistoryCounts(BaseModel):
    """One delivered workflow's history (the ``history`` phase): how many events, of which
    workflow tasks completed, activity tasks scheduled, timers started, search-attribute
    upserts, signals received."""

    name: str
    seconds: float = math.nan  # start call .. result
    events: int = 0
    workflow_tasks: int = 0
    activities: int = 0
    timers: int = 0
    upserts: int = 0
    signals: int = 0
    workflow_task_wait_ms: float = math.nan  # mean, task scheduled .. started
    activity_wait_ms: float = math.nan  # mean, task scheduled .. started
    problem: str | None = None


class DecisionResult(BaseModel):
    """The ``decision`` phase: the API's confirm (compare-and-set in the database, then a
    signal) against a Temporal update with a validator, one at a time on an idle stack."""

    samples: int
    api_confirm: Latency  # POST /payments/{id}/confirm, its saga waiting for it, over HTTP
    temporal_update: Latency  # execute_update on a waiting probe workflow, from the client
    temporal_update_fresh: Latency  # the same on a probe just started
    workflow_start: Latency  # that probe's start_workflow RPC, for reference
    update_over_confirm_p50: float  # waiting probe over API confirm
    update_over_confirm_p99: float
    failures: int
    failure_samples: list[str]


class Target(BaseModel):
    """One of the performance targets and what this run measured (reported, never asserted:
    timings on a shared machine are noisy). ``met`` is None when the run did not measure it."""

    target: str
    phase: str
    measured: float
    limit: float
    unit: Literal["ms", "x"]
    at_least: bool = False  # met at or above the limit (a ratio), not below it
    met: bool | None
    # How many answers a latency was taken from: a p99 of fewer than 100 is their slowest.
    samples: int | None = None


class BenchResult(BaseModel):
    """The whole run (written as ``result.json``)."""

    started_at: str
    wall_seconds: float
    run_dir: str
    config: dict[str, Any]
    phases: list[PhaseResult]
    ratios: list[Ratio]
    rss_run_max_mb: dict[str, float]
    history: list[HistoryCounts] = []
    decision: DecisionResult | None = None
    targets: list[Target] = []
    dealer_errors: list[str]  # the first few failed report attempts (each was retried)
    failures: int
    summary: str
    # ``bench-choreography: ...`` when the choreography phase ran (printed before ``summary``).
    summary_choreography: str | None = None


# The choreography phase's parts, by style: a closed loop through each style's API, and the
# open loop (the ``http`` phase's for orchestration) at the same rate.
SATURATION = {
    SagaStyle.ORCHESTRATION: "saturation-orchestration",
    SagaStyle.CHOREOGRAPHY: "saturation-choreography",
}
OPEN_LOOP = {SagaStyle.ORCHESTRATION: "http", SagaStyle.CHOREOGRAPHY: "http-choreography"}
UNLOADED = {
    SagaStyle.ORCHESTRATION: "http-unloaded",
    SagaStyle.CHOREOGRAPHY: "http-unloaded-choreography",
}
ORCH, CHOR = SagaStyle.ORCHESTRATION, SagaStyle.CHOREOGRAPHY

RATIOS = (
    ("saga", "baseline", "same Temporal round trips"),
    (
        SATURATION[CHOR],
        SATURATION[ORCH],
        "choreography vs orchestration, closed loop through the API",
    ),
    (OPEN_LOOP[CHOR], OPEN_LOOP[ORCH], "choreography vs orchestration, open loop at the same rate"),
)


def ratios(phases: dict[str, PhaseResult]) -> list[Ratio]:
    """Every ratio of RATIOS whose two phases ran."""
    found = []
    for numerator, denominator, label in RATIOS:
        a, b = phases.get(numerator), phases.get(denominator)
        if a is None or b is None:
            continue
        found.append(
            Ratio(
                label=label,
                numerator=numerator,
                denominator=denominator,
                sagas_per_s=_divide(a.sagas_per_s, b.sagas_per_s),
                p99=_divide(a.e2e.p99_ms, b.e2e.p99_ms),
            )
        )
    return found


# (what, phase, the latencies from that phase, the statistic, limit in ms): the issue's
# latency targets.
TARGETS: tuple[tuple[str, str, Callable[[PhaseResult], Latency], str, float], ...] = (
    ("POST /orders p50, unloaded", "http-unloaded", lambda p: _http(p).orders, "p50_ms", 20),
    ("confirm p50, unloaded", "http-unloaded", lambda p: _http(p).confirms, "p50_ms", 15),
    (
        "POST /orders to IN_TRANSIT p50, unloaded",
        "http-unloaded",
        lambda p: _in_transit(p),
        "p50_ms",
        150,
    ),
    ("POST /orders p99, under load", "http", lambda p: _http(p).orders, "p99_ms", 50),
    ("confirm p99, under load", "http", lambda p: _http(p).confirms, "p99_ms", 50),
    ("cancel p99, under load", "http", lambda p: _http(p).cancels, "p99_ms", 50),
)
THROUGHPUT_TARGET = 0.8


def _targets_note(config: dict[str, Any]) -> str:
    # A result written before --poll-rps existed ran on the dev server's default, 20.
    polls = config.get("poll_rps", 20)
    return (
        "samples: the answers a latency is taken from (nearest rank: a p99 of fewer than 100 is "
        "their slowest); the IN_TRANSIT target is make run's, whose dev server polls its queues "
        f"at 500/s (this stack: {polls}/s, --poll-rps)"
    )


def _http(p: PhaseResult) -> HttpDetail:
    assert p.http is not None, f"{p.name} is an HTTP phase"
    return p.http


def _in_transit(p: PhaseResult) -> Latency:
    """POST /orders until the delivery was seen IN_TRANSIT (measured by the unloaded phases;
    empty for the others)."""
    return _http(p).in_transit or Latency.of([])


def targets(phases: dict[str, PhaseResult], found: Sequence[Ratio]) -> list[Target]:
    """Each target with this run's number (NaN, and ``met`` None, when it did not run)."""
    rows = []
    for what, name, latencies, statistic, limit in TARGETS:
        phase = phases.get(name)
        measured = latencies(phase) if phase is not None else None
        value = getattr(measured, statistic) if measured is not None else math.nan
        met = None if math.isnan(value) else value < limit
        rows.append(
            Target(
                target=what,
                phase=name,
                measured=value,
                limit=limit,
                unit="ms",
                met=met,
                samples=measured.count if measured is not None else None,
            )
        )
    ratio = next((r for r in found if r.numerator == "saga"), None)
    value = ratio.sagas_per_s if ratio is not None else math.nan
    rows.append(
        Target(
            target="saga throughput to the baseline (same round trips)",
            phase="saga / baseline",
            measured=value,
            limit=THROUGHPUT_TARGET,
            unit="x",
            at_least=True,
            met=None if math.isnan(value) else value >= THROUGHPUT_TARGET,
        )
    )
    return rows


def summary_line(phases: dict[str, PhaseResult]) -> str:
    """``bench: <sagas/s> sagas/s, ratio <x> to baseline, p99 <ms> ms`` for the saga against
    the baseline (``nan`` for what did not run)."""
    saga, baseline = phases.get("saga"), phases.get("baseline")
    rate = saga.sagas_per_s if saga else math.nan
    ratio = _divide(rate, baseline.sagas_per_s) if baseline else math.nan
    p99 = saga.e2e.p99_ms if saga else math.nan
    return f"bench: {rate:.1f} sagas/s, ratio {ratio:.2f} to baseline, p99 {p99:.0f} ms"


def choreography_line(phases: dict[str, PhaseResult]) -> str:
    """``bench-choreography: <sagas/s> sagas/s, ratio <x> to orchestration, p99 <ms> ms``: the
    closed loop through the choreography API against the one through the orchestration API
    (``nan`` for what did not run)."""
    chor, orch = phases.get(SATURATION[CHOR]), phases.get(SATURATION[ORCH])
    rate = chor.sagas_per_s if chor else math.nan
    ratio = _divide(rate, orch.sagas_per_s) if orch else math.nan
    p99 = chor.e2e.p99_ms if chor else math.nan
    return (
        f"bench-choreography: {rate:.1f} sagas/s, ratio {ratio:.2f} to orchestration, "
        f"p99 {p99:.0f} ms"
    )


def _divide(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def num(value: float, places: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{places}f}"


PHASE_HEADERS = [
    "phase",
    "sagas",
    "cancelled",
    "failed",
    "wall s",
    "sagas/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "worker CPU ms/saga",
    "server CPU ms/saga",
    "API CPU ms/saga",
    "worker RSS MB",
]
LATENCY_NOTE = (
    "latency: start call to result (http*: POST /orders to DELIVERED seen in the database,"
    " polled every 0.1 s; saturation-*: the same, polled every 0.05 s; http-unloaded: every"
    " 5 ms, one order at a time); cancelled: sagas the bench cancelled, ended CANCELLED (not in"
    " the latency); worker = the baseline worker in baseline phases"
)
CPU_PROCESSES = ["worker", "baseline", "server", "api", "nats", "api-choreography", "bench"]


def render(result: BenchResult) -> str:
    """The tables printed at the end of ``python -m tools.bench``."""
    out = []
    if result.phases:
        out += [_phases_table(result.phases), LATENCY_NOTE]
    if result.ratios:
        out += ["", _ratios_table(result.ratios)]
    for p in result.phases:
        if p.http is not None:
            out += ["", *_http_table(p, p.http)]
    if result.history:
        out += ["", *_history_table(result.history)]
    if result.decision is not None:
        out += ["", *_decision_table(result.decision)]
    by_name = {p.name: p for p in result.phases}
    if any(name in by_name for name in (*SATURATION.values(), OPEN_LOOP[CHOR])):
        out += ["", *_styles_table(by_name)]
    if result.targets:
        out += ["", _targets_table(result.targets), _targets_note(result.config)]
    if result.phases:
        out += ["", _cpu_table(result.phases)]
    out += _footer(result)
    return "\n".join(out).lstrip("\n")


def _phases_table(phases: Sequence[PhaseResult]) -> str:
    """One row per phase: sagas, failures, throughput, latency, CPU per saga, worker RSS."""
    return table(PHASE_HEADERS, [_phase_row(p) for p in phases])


def _phase_row(p: PhaseResult) -> list[str]:
    """The cells of one phase in :func:`_phases_table`."""
    return [
        p.name,
        str(p.sagas),
        str(p.cancelled),
        str(p.failures),
        num(p.seconds),
        num(p.sagas_per_s),
        ms(p.e2e.p50_ms),
        ms(p.e2e.p95_ms),
        ms(p.e2e.p99_ms),
        ms(p.e2e.max_ms),
        num(p.cpu_ms_per_saga.get("worker", math.nan)),
        num(p.cpu_ms_per_saga.get("server", math.nan)),
        num(p.cpu_ms_per_saga.get("api", math.nan)),
        num(p.rss_max_mb.get("baseline" if p.kind == "baseline" else "worker", math.nan)),
    ]


def _ratios_table(found: Sequence[Ratio]) -> str:
    """One row per ratio between two phases: in throughput and in p99 latency."""
    return table(
        ["ratio", "sagas/s", "p99"],
        [
            [f"{r.numerator} / {r.denominator} ({r.label})", num(r.sagas_per_s, 2), num(r.p99, 2)]
            for r in found
        ],
    )


def _latency_rows(calls: Sequence[tuple[str, Latency]], first: str = "call") -> str:
    """One row per call (or measured span): count and latency percentiles."""
    return table(
        [first, "count", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        [
            [name, str(lat.count), ms(lat.p50_ms), ms(lat.p95_ms), ms(lat.p99_ms), ms(lat.max_ms)]
            for name, lat in calls
        ],
    )


def _http_table(p: PhaseResult, h: HttpDetail) -> list[str]:
    """An HTTP phase's line of counts, then the latency of each of its calls."""
    non_2xx = ", ".join(f"{k}: {v}" for k, v in sorted(h.non_2xx.items())) or "none"
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(h.order_answers.items())) or "none"
    if math.isnan(h.orders_per_s):
        load = "one order at a time, each confirmed at once and DELIVERED before the next"
    else:
        cancelled = f", 1 in {h.cancel_every} cancelled instead" if h.cancel_every else ""
        load = (
            f"{h.orders_per_s:.1f} orders/s ({h.rate_source}) for {h.seconds:g} s, each "
            f"confirmed at once{cancelled}"
        )
    counts = (
        f"{p.name}: {load}; POST /orders answered {answers}; "
        f"non-2xx: {non_2xx}; delivered reports refused with 409 and retried: "
        f"{h.reports_refused_409}"
    )
    calls = [
        ("POST /orders", h.orders),
        ("POST /payments/{id}/confirm", h.confirms),
        ("POST /payments/{id}/cancel", h.cancels),
    ]
    if h.cancels.count == 0:
        calls.pop()
    if h.in_transit is not None:
        calls.append(("POST /orders .. IN_TRANSIT (database)", h.in_transit))
        calls.append(("POST /orders .. DELIVERED (database)", p.e2e))
    calls.append(("POST /deliveries/{id}/delivered", h.delivered_reports))
    if h.healthz is not None:
        calls.append(("for reference: GET /healthz", h.healthz))
    return [counts, _latency_rows(calls)]


HISTORY_HEADERS = [
    "history of one delivered workflow",
    "events",
    "workflow tasks",
    "activities",
    "timers",
    "upserts",
    "signals",
    "wf task wait ms",
    "activity wait ms",
    "start..result ms",
]


def _history_table(counted: Sequence[HistoryCounts]) -> list[str]:
    """Each workflow's history counts (the ``history`` phase)."""
    rows = [
        [
            h.name,
            str(h.events),
            str(h.workflow_tasks),
            str(h.activities),
            str(h.timers),
            str(h.upserts),
            str(h.signals),
            num(h.workflow_task_wait_ms),
            num(h.activity_wait_ms),
            ms(1000 * h.seconds),
        ]
        for h in counted
    ]
    note = (
        "confirmed right after the start through the Temporal client, reported delivered by"
        " the dealer; workflow tasks = WorkflowTaskCompleted events; wait: mean time from a"
        " task's scheduled event to its started event (its hop through the server)"
    )
    return [table(HISTORY_HEADERS, rows), note]


def _decision_table(d: DecisionResult) -> list[str]:
    """The two decision mechanisms side by side (the ``decision`` phase)."""
    rows = [
        ("API confirm: compare-and-set + signal (HTTP), saga waiting", d.api_confirm),
        ("Temporal update + validator (client), workflow waiting", d.temporal_update),
        ("Temporal update + validator (client), workflow just started", d.temporal_update_fresh),
        ("for reference: start_workflow RPC (client), one durable write", d.workflow_start),
    ]
    ratio = (
        f"update / API confirm (both waiting): p50 x{num(d.update_over_confirm_p50, 2)}, "
        f"p99 x{num(d.update_over_confirm_p99, 2)}; one at a time on an idle stack; "
        "the update needs a running worker to answer, the API confirm does not"
    )
    return [_latency_rows(rows, "payment decision"), ratio]


Measure = Callable[[PhaseResult], float]
Row = tuple[str, Measure, Callable[[float], str]]  # label, what it reads, how it is shown


def _cpu_row(label: str, role: str) -> Row:
    """A row of the CPU per saga of the process in ``role`` (``cpu_ms_per_saga``)."""
    return f"CPU ms/saga, {label}", lambda p: p.cpu_ms_per_saga.get(role, math.nan), num


# The rows of the styles table: each loop's saga rate and end-to-end latency, the open loop's
# calls (the closed loop's are the same calls, only queued), and CPU per saga by process.
SAGA_ROWS: tuple[Row, ...] = (
    ("sagas/s", lambda p: p.sagas_per_s, num),
    ("POST /orders .. DELIVERED p50 ms", lambda p: p.e2e.p50_ms, ms),
    ("POST /orders .. DELIVERED p99 ms", lambda p: p.e2e.p99_ms, ms),
)
CALL_ROWS: tuple[Row, ...] = (
    ("POST /orders p50 ms", lambda p: _http(p).orders.p50_ms, ms),
    ("POST /orders p99 ms", lambda p: _http(p).orders.p99_ms, ms),
    ("confirm p50 ms", lambda p: _http(p).confirms.p50_ms, ms),
    ("confirm p99 ms", lambda p: _http(p).confirms.p99_ms, ms),
    ("cancel p99 ms", lambda p: _http(p).cancels.p99_ms, ms),
)
UNLOADED_ROWS: tuple[Row, ...] = (
    *CALL_ROWS[:4],
    ("POST /orders .. IN_TRANSIT p50 ms", lambda p: _in_transit(p).p50_ms, ms),
    ("POST /orders .. IN_TRANSIT p99 ms", lambda p: _in_transit(p).p99_ms, ms),
    *SAGA_ROWS[1:],
)
CPU_ROWS: tuple[Row, ...] = (
    _cpu_row("worker", "worker"),
    _cpu_row("Temporal server", "server"),
    _cpu_row("NATS server", "nats"),
    _cpu_row("API (the one called)", "api"),
    _cpu_row("whole stack (every process but the bench)", "stack"),
    _cpu_row("bench (driver, dealer, poller)", "bench"),
)


def _styles_table(phases: dict[str, PhaseResult]) -> list[str]:
    """The choreographed saga against the orchestrated one, side by side (the
    ``choreography`` phase): one order at a time through each style's API, the closed loop
    through each, then the open loop at the same rate; each number with its choreography /
    orchestration ratio ("-" for a part that did not run)."""
    rows = []
    loops = (
        (UNLOADED, "unloaded", UNLOADED_ROWS),
        (SATURATION, "closed loop", SAGA_ROWS + CPU_ROWS),
        (OPEN_LOOP, "open loop", SAGA_ROWS + CALL_ROWS + CPU_ROWS),
    )
    for loop, what, specs in loops:
        orch, chor = phases.get(loop[ORCH]), phases.get(loop[CHOR])
        for label, measure, shown in specs:
            a = measure(orch) if orch is not None else math.nan
            b = measure(chor) if chor is not None else math.nan
            rows.append([f"{what}: {label}", shown(a), shown(b), num(_divide(b, a), 2)])
    saturation = phases.get(SATURATION[ORCH]) or phases.get(SATURATION[CHOR])
    opened = phases.get(OPEN_LOOP[CHOR])
    closed = (
        f"closed loop: {saturation.sagas} sagas through each style's API, each confirmed at"
        " once, the dealer reporting through the same API"
        if saturation is not None
        else "closed loop: did not run"
    )
    rate = (
        f"{_http(opened).orders_per_s:.1f} orders/s ({_http(opened).rate_source})"
        if opened is not None
        else "did not run"
    )
    note = (
        f"unloaded: one order at a time through each style's API; {closed}; open loop: the"
        " http phase (orchestration) and the same load through the"
        f" choreography API, at {rate}; CPU of the API the sagas went through"
    )
    headers = ["choreography against orchestration", "orchestration", "choreography", "ratio"]
    return [table(headers, rows), note]


def _targets_table(rows: Sequence[Target]) -> str:
    """Each target with this run's number: reported, never asserted."""

    def shown(t: Target) -> str:
        return num(t.measured, 2 if t.unit == "x" else 1)

    return table(
        ["target", "phase", "measured", "samples", "limit", "met"],
        [
            [
                t.target,
                t.phase,
                f"{shown(t)} {t.unit}",
                "-" if t.samples is None else str(t.samples),
                f"{'>=' if t.at_least else '<'} {t.limit:g} {t.unit}",
                "-" if t.met is None else ("yes" if t.met else "NO"),
            ]
            for t in rows
        ],
    )


def _cpu_table(phases: Sequence[PhaseResult]) -> str:
    """CPU seconds of each process per phase, and the dealer's counts."""
    # Only the processes this run had (NATS and the choreography API run with that phase).
    shown = [n for n in CPU_PROCESSES if any(n in p.cpu_s for p in phases)]
    return table(
        ["CPU seconds", *shown, "dealer queries", "not yet at pivot", "resends"],
        [
            [
                p.name,
                *(num(p.cpu_s.get(n, math.nan), 2) for n in shown),
                str(p.dealer_queries),
                str(p.dealer_not_yet),
                str(p.dealer_resends),
            ]
            for p in phases
        ],
    )


def _footer(result: BenchResult) -> list[str]:
    """Peak RSS over the run, then every dealer error and failure sample kept."""
    peak = ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(result.rss_run_max_mb.items()))
    lines = [f"peak RSS over the run: {peak}"]
    lines += [f"dealer error (retried): {error}" for error in result.dealer_errors]
    lines += [f"FAILED {p.name}: {sample}" for p in result.phases for sample in p.failure_samples]
    lines += [f"FAILED history {h.name}: {h.problem}" for h in result.history if h.problem]
    if result.decision is not None:
        lines += [f"FAILED decision: {sample}" for sample in result.decision.failure_samples]
    return lines


def write_json(document: BaseModel, path: Path, latest: Path) -> None:
    """Write ``document`` to ``path`` and copy it to ``latest``."""
    # model_dump_json writes NaN (a phase that measured nothing) as null: valid JSON.
    path.write_text(document.model_dump_json(indent=2) + "\n")
    latest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, latest)
