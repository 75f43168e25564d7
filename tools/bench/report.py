"""Results of a bench run: the JSON document's models, and the plain-text tables."""

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from domain.payloads import StepMode
from tools.bench.stats import Latency

PhaseKind = Literal["baseline", "saga", "http"]


class HttpDetail(BaseModel):
    """The HTTP phase's own numbers."""

    rate_per_s: float  # requests per second: POST /orders and confirms together
    orders_per_s: float  # half of it: each order is one POST /orders and one confirm
    seconds: float
    orders: Latency  # POST /orders until its answer (201 carries the payment id)
    confirms: Latency  # POST /payments/{id}/confirm
    delivered_reports: Latency  # POST /deliveries/{id}/delivered, the dealer's calls
    non_2xx: dict[str, int]
    answered_202: int
    confirm_404: int  # a 202's payment confirmed before it existed; retried every 0.2 s
    reports_refused_409: int  # the saga had not seen its pivot yet; the dealer retried


class PhaseResult(BaseModel):
    """One phase: how many workflows, how fast, what it cost."""

    name: str
    kind: PhaseKind
    mode: StepMode
    sagas: int
    delivered: int
    failures: int
    failure_samples: list[str]
    warmup: int
    seconds: float
    sagas_per_s: float
    e2e: Latency  # start call .. result (HTTP: POST /orders .. DELIVERED seen in the DB)
    cpu_s: dict[str, float]  # per process over the measured part: worker, baseline, ...
    cpu_ms_per_saga: dict[str, float]  # worker (the one running this phase), server, api
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


class BenchResult(BaseModel):
    """The whole run (written as ``result.json``)."""

    started_at: str
    wall_seconds: float
    run_dir: str
    mode: StepMode
    config: dict[str, Any]
    phases: list[PhaseResult]
    ratios: list[Ratio]
    rss_run_max_mb: dict[str, float]
    dealer_errors: list[str]  # the first few failed report attempts (each was retried)
    failures: int
    summary: str


RATIOS = (
    ("saga-local", "baseline-local", "same Temporal round trips, local steps"),
    ("saga-remote", "baseline-remote", "same Temporal round trips, remote steps"),
    ("saga-local", "saga-remote", "local steps vs the naive saga"),
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


def summary_line(phases: dict[str, PhaseResult], mode: StepMode) -> str:
    """``bench: <sagas/s> sagas/s, ratio <x> to baseline, p99 <ms> ms`` for the saga in
    ``mode`` against the baseline in ``mode`` (``nan`` for what did not run)."""
    saga, baseline = phases.get(f"saga-{mode}"), phases.get(f"baseline-{mode}")
    rate = saga.sagas_per_s if saga else math.nan
    ratio = _divide(rate, baseline.sagas_per_s) if baseline else math.nan
    p99 = saga.e2e.p99_ms if saga else math.nan
    return f"bench: {rate:.1f} sagas/s, ratio {ratio:.2f} to baseline, p99 {p99:.0f} ms"


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
    "latency: start call to result (http: POST /orders to DELIVERED seen in the database,"
    " polled every 0.1 s); worker = the baseline worker in baseline phases"
)
CPU_PROCESSES = ["worker", "baseline", "server", "api", "bench"]


def render(result: BenchResult) -> str:
    """The tables printed at the end of ``python -m tools.bench``."""
    out = [_phases_table(result.phases), LATENCY_NOTE]
    if result.ratios:
        out += ["", _ratios_table(result.ratios)]
    for p in result.phases:
        if p.http is not None:
            out += ["", *_http_table(p, p.http)]
    out += ["", _cpu_table(result.phases)]
    out += _footer(result)
    return "\n".join(out)


def _phases_table(phases: Sequence[PhaseResult]) -> str:
    """One row per phase: sagas, failures, throughput, latency, CPU per saga, worker RSS."""
    return table(PHASE_HEADERS, [_phase_row(p) for p in phases])


def _phase_row(p: PhaseResult) -> list[str]:
    """The cells of one phase in :func:`_phases_table`."""
    label = f"{p.name} ({p.mode})" if p.kind == "http" else p.name
    return [
        label,
        str(p.sagas),
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


def _http_table(p: PhaseResult, h: HttpDetail) -> list[str]:
    """The HTTP phase's line of counts, then the latency of each of its calls."""
    non_2xx = ", ".join(f"{k}: {v}" for k, v in sorted(h.non_2xx.items())) or "none"
    counts = (
        f"HTTP: {h.rate_per_s:g} requests/s ({h.orders_per_s:g} orders/s + their confirms) "
        f"for {h.seconds:g} s, saga mode {p.mode}; "
        f"non-2xx: {non_2xx}; 202 (payment not ready): {h.answered_202} "
        f"(confirm retried on 404: {h.confirm_404}); "
        f"delivered reports refused with 409 and retried: {h.reports_refused_409}"
    )
    calls = (
        ("POST /orders", h.orders),
        ("POST /payments/{id}/confirm", h.confirms),
        ("POST /deliveries/{id}/delivered", h.delivered_reports),
    )
    rows = [
        [name, str(lat.count), ms(lat.p50_ms), ms(lat.p95_ms), ms(lat.p99_ms), ms(lat.max_ms)]
        for name, lat in calls
    ]
    return [counts, table(["call", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows)]


def _cpu_table(phases: Sequence[PhaseResult]) -> str:
    """CPU seconds of each process per phase, and the dealer's counts."""
    return table(
        ["CPU seconds", *CPU_PROCESSES, "dealer queries", "not yet at pivot", "resends"],
        [
            [
                p.name,
                *(num(p.cpu_s.get(n, math.nan), 2) for n in CPU_PROCESSES),
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
    return lines


def write_json(document: BaseModel, path: Path, latest: Path) -> None:
    """Write ``document`` to ``path`` and copy it to ``latest``."""
    # model_dump_json writes NaN (a phase that measured nothing) as null: valid JSON.
    path.write_text(document.model_dump_json(indent=2) + "\n")
    latest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, latest)
