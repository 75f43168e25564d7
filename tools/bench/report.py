"""Results of a bench run: the JSON document's models, and the plain-text tables."""

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from domain.status import SagaStyle
from tools.bench.stats import Latency

# Roles whose CPU is reported per saga (``worker``: the process running the phase's
# workflows; ``api``: the API the phase went through; ``database``: a local PostgreSQL;
# ``stack``: every process but the bench).
CPU_ROLES = ("worker", "server", "api", "nats", "database", "stack", "bench")


class PhaseResult(BaseModel):
    """One closed loop: how many workflows, how fast, what it cost."""

    name: str
    style: SagaStyle | None  # None: the baseline workflow
    through: str  # "door" (in the bench's process) or "api" (HTTP)
    sagas: int
    delivered: int
    failures: int
    failure_samples: list[str]
    warmup: int
    rounds: int
    seconds: float  # measured: the rounds' seconds added up
    sagas_per_s: float
    e2e: Latency  # first call .. result (through the API: .. DELIVERED seen in the database)
    cpu_s: dict[str, float]  # per process over the measured rounds
    cpu_ms_per_saga: dict[str, float]  # per role (CPU_ROLES)
    rss_max_mb: dict[str, float]


class Ratio(BaseModel):
    """``numerator`` over ``denominator`` (phase names): throughput, p99, stack CPU per saga."""

    numerator: str
    denominator: str
    sagas_per_s: float
    p99: float
    stack_cpu_per_saga: float


class HistoryCounts(BaseModel):
    """One delivered workflow's history: events, their size (protobuf bytes, payloads as
    stored: encrypted), workflow tasks completed, activities scheduled, timers,
    search-attribute upserts, signals, mean scheduled-to-started waits."""

    name: str
    events: int = 0
    bytes: int = 0
    workflow_tasks: int = 0
    activities: int = 0
    timers: int = 0
    upserts: int = 0
    signals: int = 0
    workflow_task_wait_ms: float = math.nan
    activity_wait_ms: float = math.nan
    # The server's persistence requests meanwhile, by operation; its state transitions (the
    # workflow's creation and every update of its mutable state).
    persistence_requests: dict[str, int] = {}
    state_transitions: int = 0
    problem: str | None = None


class UnloadedResult(BaseModel):
    """Sagas through one API, one at a time: from the POST to the delivery IN_TRANSIT."""

    name: str
    style: SagaStyle
    to_in_transit: Latency
    failures: int
    failure_samples: list[str]


class BenchResult(BaseModel):
    """The whole run (``result.json``, copied to ``.bench/latest.json``)."""

    started_at: str
    wall_seconds: float
    run_dir: str
    config: dict[str, Any]
    phases: list[PhaseResult]
    ratios: list[Ratio]
    history: list[HistoryCounts]
    unloaded: list[UnloadedResult]
    rss_run_max_mb: dict[str, float]
    dealer_errors: list[str]  # the first few failed report attempts (each was retried)
    failures: int
    summary: str  # bench: ... (the saga, default routing, against the baseline)
    summary_routing: str | None  # bench-routing: ... (the default routing against the other)
    summary_choreography: str | None  # bench-choreography: ... (when the styles phase ran)


RATIOS = (
    ("saga-workflow", "baseline"),
    ("saga-service", "baseline"),
    ("saga-workflow", "saga-service"),
    ("orchestration-workflow", "orchestration-service"),
    ("choreography", "orchestration-workflow"),
    ("choreography", "orchestration-service"),
)


def ratios(phases: dict[str, PhaseResult]) -> list[Ratio]:
    """Every ratio of RATIOS whose two phases ran."""
    return [
        Ratio(
            numerator=a.name,
            denominator=b.name,
            sagas_per_s=divide(a.sagas_per_s, b.sagas_per_s),
            p99=divide(a.e2e.p99_ms, b.e2e.p99_ms),
            stack_cpu_per_saga=divide(a.cpu_ms_per_saga["stack"], b.cpu_ms_per_saga["stack"]),
        )
        for a, b in ((phases.get(x), phases.get(y)) for x, y in RATIOS)
        if a is not None and b is not None
    ]


def summary(phases: dict[str, PhaseResult], name: str, against: str, prefix: str) -> str:
    """``<prefix>: <sagas/s> sagas/s, ratio <x> to <against>, p99 <ms> ms`` (nan: not run)."""
    p, q = phases.get(name), phases.get(against)
    rate = p.sagas_per_s if p else math.nan
    ratio = divide(rate, q.sagas_per_s) if q else math.nan
    p99 = p.e2e.p99_ms if p else math.nan
    return f"{prefix}: {rate:.1f} sagas/s, ratio {ratio:.2f} to {against}, p99 {p99:.0f} ms"


def divide(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def num(value: float, places: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{places}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


def render(result: BenchResult) -> str:
    """The tables printed at the end of ``python -m tools.bench``."""
    out = []
    if result.phases:
        roles = [r for r in CPU_ROLES if any(r in p.cpu_ms_per_saga for p in result.phases)]
        headers = ["phase", "via", "sagas", "failed", "sagas/s", "p50 ms", "p99 ms", "max ms"]
        headers += [f"{r} CPU" for r in roles]
        rows = [
            [p.name, p.through, str(p.sagas), str(p.failures), num(p.sagas_per_s)]
            + [num(v, 0) for v in (p.e2e.p50_ms, p.e2e.p99_ms, p.e2e.max_ms)]
            + [num(p.cpu_ms_per_saga.get(r, math.nan)) for r in roles]
            for p in result.phases
        ]
        out += [
            table(headers, rows),
            "(CPU: ms per saga, by process; latency: from the first call)",
        ]
    if result.ratios:
        headers = ["ratio", "sagas/s", "p99", "stack CPU/saga"]
        rows = [
            [f"{r.numerator} / {r.denominator}"]
            + [num(v, 2) for v in (r.sagas_per_s, r.p99, r.stack_cpu_per_saga)]
            for r in result.ratios
        ]
        out += ["", table(headers, rows)]
    if result.history:
        headers = ["history", "events", "bytes", "wf tasks", "activities", "timers", "upserts"]
        headers += ["signals", "transitions"]
        headers += ["wf task wait ms", "activity wait ms"]
        rows = [
            [h.name]
            + [str(n) for n in (h.events, h.bytes, h.workflow_tasks, h.activities, h.timers)]
            + [str(h.upserts), str(h.signals), str(h.state_transitions)]
            + [num(h.workflow_task_wait_ms), num(h.activity_wait_ms)]
            for h in result.history
        ]
        out += ["", table(headers, rows)]
    if result.unloaded:
        headers = ["unloaded (POST to IN_TRANSIT)", "sagas", "failed", "p50 ms", "p95 ms", "max ms"]
        rows = [
            [u.name, str(u.to_in_transit.count), str(u.failures)]
            + [num(v, 0) for v in (u.to_in_transit.p50_ms, u.to_in_transit.p95_ms)]
            + [num(u.to_in_transit.max_ms, 0)]
            for u in result.unloaded
        ]
        out += ["", table(headers, rows)]
    peak = ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(result.rss_run_max_mb.items()))
    out += ["", f"peak RSS: {peak}"]
    out += [f"dealer error (retried): {error}" for error in result.dealer_errors]
    out += [f"FAILED {p.name}: {sample}" for p in result.phases for sample in p.failure_samples]
    out += [f"FAILED history {h.name}: {h.problem}" for h in result.history if h.problem]
    out += [f"FAILED unloaded {u.name}: {s}" for u in result.unloaded for s in u.failure_samples]
    return "\n".join(out).lstrip("\n")


def write_json(document: BaseModel, path: Path, latest: Path) -> None:
    """Write ``document`` to ``path`` and copy it to ``latest`` (NaN is written as null)."""
    path.write_text(document.model_dump_json(indent=2) + "\n")
    latest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, latest)
