"""``python -m tools.bench.sizing``: what 100, 1,000 and 10,000 orders a second need in each
saga style, from the bench's measured figures (``make sizing``).

    python -m tools.bench.sizing                                   # from .bench/latest.json
    python -m tools.bench.sizing --inputs docs/sizing-inputs.json  # render saved inputs only
    python -m tools.bench.sizing --check                           # exit 1 if the page is stale

The no-argument form extracts :class:`SizingInputs` from ``.bench/latest.json`` (and
``.bench/scale-latest.json`` when present), writes them to ``docs/sizing-inputs.json`` and
renders ``docs/sizing.md`` from them. The page is a pure function of the inputs
(:func:`render`): every number on it is computed here, every sentence of prose comes from the
constants below, each published figure with its source.
"""

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from choreography.handlers import ROUTES
from domain.events import EventType
from domain.payloads import SagaTimeouts
from tools.bench.environment import BENCH_DIR
from tools.bench.report import HistoryCounts, PhaseResult
from tools.bench.scale import ScaleResult
from tools.chaos.stack import ROOT

INPUTS = ROOT / "docs" / "sizing-inputs.json"
PAGE = ROOT / "docs" / "sizing.md"
COMPOSE = ROOT / "docker-compose.yml"
RATES = (100, 1_000, 10_000)

# The phases and histories sized: the default routing (settings.activity_routing) and the other.
ORCHESTRATION_PHASE = "orchestration-workflow"
ORCHESTRATION_OTHER_PHASE = "orchestration-service"
CHOREOGRAPHY_PHASE = "choreography"
ORCHESTRATION_HISTORY = "saga-workflow"
ORCHESTRATION_OTHER_HISTORY = "saga-service"
# The processes a deployment runs per style (the bench's CPU roles); "stack" and "bench" are
# the bench's own sums and load, and the Temporal server idles in the choreographed phase.
SIZED_ROLES = {
    "orchestration": ("worker", "server", "api", "database"),
    "choreography": ("worker", "api", "nats", "database"),
}
# Temporal persistence operations that only read; every other operation writes.
READ_OPERATIONS = ("Get", "Read", "List", "Count", "Scan")

# --- counted from the code -------------------------------------------------------------------

# The events a delivered choreographed saga publishes, in order: order_created (the door's
# place), payment_confirmed (the door's decision: the payment exists by then), order_confirmed
# (confirm_order), delivery_assigned (create_delivery, a dealer free at once), delivery_completed
# (the door's report), order_delivered (deliver_order). choreography/handlers.py,
# sagas/choreography.py. How many consumers each has comes from ROUTES itself.
DELIVERED_EVENTS = (
    EventType.ORDER_CREATED,
    EventType.PAYMENT_CONFIRMED,
    EventType.ORDER_CONFIRMED,
    EventType.DELIVERY_ASSIGNED,
    EventType.DELIVERY_COMPLETED,
    EventType.ORDER_DELIVERED,
)
# The door's own write transactions in a delivered saga. Orchestrated (sagas/orchestration.py):
# accept, the key's "saga started" mark, the decision's compare-and-set, its "signalled" mark,
# the report's "signalled" mark; each activity then commits one more (activities/). The bench
# sends an Idempotency-Key, as a client should. Choreographed (sagas/choreography.py): place,
# decide, report, each one Publisher.write.
ORCHESTRATION_DOOR_WRITES = 5
CHOREOGRAPHY_DOOR_WRITES = 3

# --- assumed (each stated on the page) -------------------------------------------------------

TARGET_UTILISATION = 0.6  # of a core, or of a published peak: headroom for bursts and failover
NODE_CORES = 4  # one Temporal service or NATS node
# The dev server runs frontend, history and matching in one process: its CPU split by share.
SERVER_SPLIT = {"history": 0.5, "matching": 0.25, "frontend": 0.25}
PERSISTENCE_WRITE_MS = 5.0  # one shard's serialised write to a same-region PostgreSQL
OPEN_SAGA_SECONDS = 3_600.0  # mean time an order's saga stays open (decision and delivery)

# --- published -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A published figure or statement the page relies on."""

    short: str  # its name in a table
    title: str
    says: str
    url: str


SOURCES = {
    "shards": Source(
        "Temporal docs",
        "Temporal docs: History Shard",
        "clusters run with 1 to 128K history shards, each responsible for tens of thousands of "
        "workflow executions; the shard count cannot be changed after the cluster is created",
        "https://docs.temporal.io/temporal-service/temporal-server#history-shard",
    ),
    "shard-serial": Source(
        "PlanetScale",
        "PlanetScale: Temporal workflows at scale, part 2",
        "Temporal serializes all updates belonging to the same shard, so the latency of a "
        "database operation limits the maximum theoretical throughput of a single shard",
        "https://planetscale.com/blog/temporal-workflows-at-scale-sharding-in-production",
    ),
    "shard-io": Source(
        "Temporal forum",
        "Temporal forum: Temporal shards",
        "a shard's persistence operations run one at a time by default "
        "(history.shardIOConcurrency = 1); watch semaphore_latency for a shard's capacity",
        "https://community.temporal.io/t/temporal-shards-configured-in-shards-table/15533",
    ),
    "scaling-temporal": Source(
        "Temporal blog",
        "Temporal blog: Scaling Temporal: The Basics",
        "a starting point of 2 pods per service (frontend, history, matching, worker), each "
        "requesting 1 core, then load, measure, scale, repeat",
        "https://temporal.io/blog/scaling-temporal-the-basics",
    ),
    "gil": Source(
        "GIL",
        "Python glossary: global interpreter lock",
        "one thread at a time executes Python bytecode in a CPython process",
        "https://docs.python.org/3/glossary.html#term-global-interpreter-lock",
    ),
    "postgres": Source(
        "PostgresBench",
        "ClickHouse PostgresBench (pgbench TPC-B, PostgreSQL 18.3, 256 clients, ~100 GB)",
        "one 16 vCPU / 64 GB primary on local NVMe (m8gd.4xlarge): 27,012 to 28,668 "
        "transactions/s over three runs; on AWS RDS with gp3 storage: 7,152 to 8,133",
        "https://github.com/ClickHouse/PostgresBench",
    ),
    "nats-bench": Source(
        "nats bench",
        "NATS docs: nats bench (MacBook Pro M4, nats-server 2.12.1)",
        "one stream, file storage, R1, 128 B messages, asynchronous publishing: 403,828 "
        "msgs/s; a durable consumer with explicit acks, 4 clients: 290,438 msgs/s",
        "https://docs.nats.io/using-nats/nats-tools/nats_cli/natsbench",
    ),
    "nats-raft": Source(
        "NATS clustering",
        "NATS docs: JetStream clustering",
        "each stream is a RAFT group whose elected leader handles its acks; 3 or 5 "
        "JetStream servers are recommended",
        "https://docs.nats.io/running-a-nats-service/configuration/clustering/jetstream_clustering",
    ),
    "nats-replicas": Source(
        "NATS replicas",
        "NATS docs: JetStream, stream replication factor",
        "Replicas=3 tolerates the loss of one server: an ideal balance between risk and "
        "performance",
        "https://docs.nats.io/nats-concepts/jetstream",
    ),
    "nats-partition": Source(
        "NATS partitioning",
        "NATS docs: deterministic subject token partitioning",
        "a partition number inserted in the subject splits a flow over several streams, "
        "keeping order per subject",
        "https://docs.nats.io/nats-concepts/subject_mapping#deterministic-subject-token-partitioning",
    ),
}
# The figures taken from the sources above, the lower end where a source gives a range.
POSTGRES_TPS = 27_012.0  # "postgres": one primary, TPC-B transactions a second
STREAM_MSGS_PER_S = 403_828.0  # "nats-bench": one stream, R1 (no R3 figure is published)
CONSUMER_ACKS_PER_S = 290_438.0  # "nats-bench": one durable consumer, explicit acks
OPEN_WORKFLOWS_PER_SHARD = 10_000  # "shards": the low end of "tens of thousands"
TEMPORAL_MIN_PODS = 2  # "scaling-temporal": the starting point per service


# --- inputs ----------------------------------------------------------------------------------


class Machine(BaseModel):
    """Where and how the figures were measured."""

    cores: int  # os.cpu_count() where they were extracted (the bench's machine)
    started_at: str
    run_dir: str
    database: str  # the service database: "postgresql" or "sqlite"


class Deployment(BaseModel):
    """What docker-compose.yml configures that sizing checks against."""

    history_shards: int
    stream_replicas: int


class StyleMeasured(BaseModel):
    """One style's closed loop through its HTTP API (a bench phase)."""

    phase: str
    sagas_per_s: float
    p99_ms: float
    cpu_ms_per_saga: dict[str, float]  # the style's SIZED_ROLES that were measured
    unloaded_p50_ms: float | None  # POST to IN_TRANSIT, one saga at a time


class TemporalMeasured(BaseModel):
    """One delivered saga's history, and what the server asked of its persistence meanwhile
    (None: the server exposed no metrics, or the bench predates them)."""

    history: str
    events: int
    bytes: int
    workflow_tasks: int
    activities: int
    state_transitions: int | None
    persistence_writes: int | None
    persistence_reads: int | None


class WritesFromCode(BaseModel):
    """The service database's write transactions in one delivered saga, counted from the
    code: the door's, one per step (an activity, or a consumed event), one per published
    batch marked sent (the outbox)."""

    door: int
    steps: int
    marks: int

    @property
    def total(self) -> int:
        return self.door + self.steps + self.marks


class MessagesFromCode(BaseModel):
    """JetStream messages of one delivered choreographed saga, from the routing table."""

    published: int  # into the one event stream
    deliveries: int  # to durable consumers, each acknowledged
    consumers: int  # distinct durable consumers that get one


class ScaleMeasured(BaseModel):
    """Worker memory with many sagas open (``make bench-scale``)."""

    started_at: str
    first_open: int
    last_open: int
    worker_rss_first_mb: float
    worker_rss_last_mb: float

    @property
    def mb_per_open_saga(self) -> float:
        return (self.worker_rss_last_mb - self.worker_rss_first_mb) / (
            self.last_open - self.first_open
        )


class SizingInputs(BaseModel):
    """Everything the page is computed from (``docs/sizing-inputs.json``)."""

    machine: Machine
    deployment: Deployment
    orchestration: StyleMeasured
    orchestration_other: StyleMeasured | None
    choreography: StyleMeasured
    temporal: TemporalMeasured
    temporal_other: TemporalMeasured | None
    orchestration_writes: WritesFromCode
    choreography_writes: WritesFromCode
    messages: MessagesFromCode
    scale: ScaleMeasured | None


class SizingError(ValueError):
    """The bench's output cannot be sized: a phase missing, or one that failed."""


def extract(bench_json: dict[str, Any], scale_json: dict[str, Any] | None) -> SizingInputs:
    """The figures the page needs from a ``BenchResult`` document (``.bench/latest.json``)
    and, if given, a ``ScaleResult`` one. Tolerates a bench that predates the persistence
    counts (they are None). :class:`SizingError` when the styles phase or the saga's history
    is missing or failed."""
    phases = {p["name"]: p for p in bench_json.get("phases", [])}
    histories = {h["name"]: h for h in bench_json.get("history", [])}
    unloaded = {u["name"]: u for u in bench_json.get("unloaded", [])}
    database = "postgresql" if _uses_postgres(bench_json.get("config", {})) else "sqlite"

    def style(name: str, style: str) -> StyleMeasured:
        return _style(_phase(phases, name), style, unloaded.get(name))

    temporal = _temporal(histories, ORCHESTRATION_HISTORY, required=True)
    assert temporal is not None
    other = ORCHESTRATION_OTHER_PHASE
    return SizingInputs(
        machine=Machine(
            cores=os.cpu_count() or 1,
            started_at=bench_json["started_at"],
            run_dir=bench_json["run_dir"],
            database=database,
        ),
        deployment=deployment(COMPOSE.read_text()),
        orchestration=style(ORCHESTRATION_PHASE, "orchestration"),
        orchestration_other=style(other, "orchestration") if other in phases else None,
        choreography=style(CHOREOGRAPHY_PHASE, "choreography"),
        temporal=temporal,
        temporal_other=_temporal(histories, ORCHESTRATION_OTHER_HISTORY, required=False),
        orchestration_writes=WritesFromCode(
            door=ORCHESTRATION_DOOR_WRITES, steps=temporal.activities, marks=0
        ),
        choreography_writes=choreography_writes(),
        messages=messages(),
        scale=_scale(scale_json),
    )


def messages() -> MessagesFromCode:
    """The delivered saga's JetStream messages: its events, and one delivery per consumer
    that ROUTES gives each."""
    consumers = [key for key in ROUTES if key[1] in DELIVERED_EVENTS]
    return MessagesFromCode(
        published=len(DELIVERED_EVENTS), deliveries=len(consumers), consumers=len(consumers)
    )


def choreography_writes() -> WritesFromCode:
    """The door's transactions, one per consumed event (effect, inbox and next event in one),
    and one outbox mark per transaction that emitted: one event each on the delivered path."""
    return WritesFromCode(
        door=CHOREOGRAPHY_DOOR_WRITES,
        steps=messages().deliveries,
        marks=len(DELIVERED_EVENTS),
    )


def deployment(compose: str) -> Deployment:
    """The history shards and stream replicas docker-compose.yml configures by default."""

    def default(variable: str) -> int:
        found = re.search(rf"{variable}: \"?\$\{{\w+:-(\d+)\}}\"?|{variable}: \"?(\d+)\"?", compose)
        if found is None:
            raise SizingError(f"docker-compose.yml sets no {variable}")
        return int(found.group(1) or found.group(2))

    return Deployment(
        history_shards=default("NUM_HISTORY_SHARDS"),
        stream_replicas=default("NATS_STREAM_REPLICAS"),
    )


def _uses_postgres(config: dict[str, Any]) -> bool:
    # Only the scheme is kept: the URL may carry a password.
    return str(config.get("database_url") or "").startswith("postgresql")


def _phase(phases: dict[str, dict[str, Any]], name: str) -> PhaseResult:
    if name not in phases:
        raise SizingError(f"the bench ran no {name!r} phase: run `make bench` with its styles")
    raw = dict(phases[name])
    # NaN is written as null: a latency of no saga.
    raw["e2e"] = {k: math.nan if v is None else v for k, v in raw["e2e"].items()}
    phase = PhaseResult.model_validate(raw)
    if phase.failures:
        raise SizingError(f"phase {name!r} had {phase.failures} failed sagas: measure again")
    return phase


def _style(phase: PhaseResult, style: str, unloaded: dict[str, Any] | None) -> StyleMeasured:
    p50 = (unloaded or {}).get("to_in_transit", {}).get("p50_ms")
    return StyleMeasured(
        phase=phase.name,
        sagas_per_s=phase.sagas_per_s,
        p99_ms=phase.e2e.p99_ms,
        cpu_ms_per_saga={
            role: phase.cpu_ms_per_saga[role]
            for role in SIZED_ROLES[style]
            if role in phase.cpu_ms_per_saga
        },
        unloaded_p50_ms=p50,
    )


def _temporal(
    histories: dict[str, dict[str, Any]], name: str, *, required: bool
) -> TemporalMeasured | None:
    if name not in histories:
        if required:
            raise SizingError(f"the bench counted no {name!r} history: run its history phase")
        return None
    # NaN waits are written as null: the model's defaults stand for them.
    counts = HistoryCounts.model_validate(
        {k: v for k, v in histories[name].items() if v is not None}
    )
    if counts.problem:
        raise SizingError(f"history {name!r} failed: {counts.problem}")
    requests = counts.persistence_requests
    measured = bool(requests)  # empty: no metrics endpoint, or a bench before them
    writes = sum(n for op, n in requests.items() if not op.startswith(READ_OPERATIONS))
    return TemporalMeasured(
        history=name,
        events=counts.events,
        bytes=counts.bytes,
        workflow_tasks=counts.workflow_tasks,
        activities=counts.activities,
        state_transitions=counts.state_transitions if measured else None,
        persistence_writes=writes if measured else None,
        persistence_reads=sum(requests.values()) - writes if measured else None,
    )


def _scale(scale_json: dict[str, Any] | None) -> ScaleMeasured | None:
    if scale_json is None:
        return None
    result = ScaleResult.model_validate(scale_json)
    if len(result.levels) < 2:
        return None
    first, last = result.levels[0], result.levels[-1]
    return ScaleMeasured(
        started_at=result.started_at,
        first_open=first.open,
        last_open=last.open,
        worker_rss_first_mb=first.worker_rss_mb,
        worker_rss_last_mb=last.worker_rss_mb,
    )


# --- what a rate needs -----------------------------------------------------------------------


def cores(rate: float, ms_per_saga: float) -> float:
    """Cores to run ``ms_per_saga`` of CPU ``rate`` times a second at TARGET_UTILISATION."""
    return rate * ms_per_saga / 1000 / TARGET_UTILISATION


def python_processes(needed: float) -> int:
    """Python processes for ``needed`` cores: one core each at most (the GIL)."""
    return max(1, math.ceil(needed))


def nodes(needed: float, minimum: int) -> int:
    """NODE_CORES-core nodes for ``needed`` cores, at least ``minimum``."""
    return max(minimum, math.ceil(needed / NODE_CORES))


def power_of_two(n: float) -> int:
    """The smallest power of two >= ``n`` (1 at least)."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _per_s(rate: float, per_saga: int | None) -> float | None:
    return None if per_saga is None else rate * per_saga


@dataclass(frozen=True)
class OrchestrationNeeds:
    """What ``rate`` orchestrated orders a second need (None: its figure was not measured)."""

    rate: float
    worker_cores: float
    worker_processes: int
    api_cores: float
    api_processes: int
    server_cores: float
    service_cores: dict[str, float]  # SERVER_SPLIT of server_cores
    service_nodes: dict[str, int]
    state_transitions_per_s: float | None
    persistence_writes_per_s: float | None
    persistence_reads_per_s: float | None
    history_mb_per_s: float
    open_sagas: float
    shards_for_writes: float | None
    shards_for_open: float
    shards: int  # the power of two that holds both
    service_db_writes_per_s: float
    database_cores: float | None
    worker_open_gb: float | None


def orchestration_needs(inputs: SizingInputs, rate: float) -> OrchestrationNeeds:
    """Each part of the orchestrated saga at ``rate`` orders a second."""
    rate = float(rate)  # every rate on the page a float, an int rate included
    cpu = inputs.orchestration.cpu_ms_per_saga
    temporal = inputs.temporal
    worker = cores(rate, cpu["worker"])
    api = cores(rate, cpu["api"])
    server = cores(rate, cpu["server"])
    split = {service: server * share for service, share in SERVER_SPLIT.items()}
    transitions = _per_s(rate, temporal.state_transitions)
    open_sagas = rate * OPEN_SAGA_SECONDS
    for_writes = (
        None
        if transitions is None
        else transitions * PERSISTENCE_WRITE_MS / 1000 / TARGET_UTILISATION
    )
    for_open = open_sagas / OPEN_WORKFLOWS_PER_SHARD
    mb_per_open = inputs.scale.mb_per_open_saga if inputs.scale else None
    return OrchestrationNeeds(
        rate=rate,
        worker_cores=worker,
        worker_processes=python_processes(worker),
        api_cores=api,
        api_processes=python_processes(api),
        server_cores=server,
        service_cores=split,
        service_nodes={s: nodes(c, TEMPORAL_MIN_PODS) for s, c in split.items()},
        state_transitions_per_s=transitions,
        persistence_writes_per_s=_per_s(rate, temporal.persistence_writes),
        persistence_reads_per_s=_per_s(rate, temporal.persistence_reads),
        history_mb_per_s=rate * temporal.bytes / 1e6,
        open_sagas=open_sagas,
        shards_for_writes=for_writes,
        shards_for_open=for_open,
        shards=power_of_two(max(for_writes or 0, for_open)),
        service_db_writes_per_s=rate * inputs.orchestration_writes.total,
        database_cores=cores(rate, cpu["database"]) if "database" in cpu else None,
        worker_open_gb=None if mb_per_open is None else open_sagas * mb_per_open / 1000,
    )


@dataclass(frozen=True)
class ChoreographyNeeds:
    """What ``rate`` choreographed orders a second need (None: not measured)."""

    rate: float
    worker_cores: float
    worker_processes: int
    api_cores: float
    api_processes: int
    nats_cores: float  # every replica doing the measured single-node work
    nats_nodes: int
    published_per_s: float
    deliveries_per_s: float
    per_consumer_per_s: float
    service_db_writes_per_s: float
    database_cores: float | None


def choreography_needs(inputs: SizingInputs, rate: float) -> ChoreographyNeeds:
    """Each part of the choreographed saga at ``rate`` orders a second."""
    rate = float(rate)
    cpu = inputs.choreography.cpu_ms_per_saga
    replicas = inputs.deployment.stream_replicas
    worker = cores(rate, cpu["worker"])
    api = cores(rate, cpu["api"])
    nats = cores(rate, cpu["nats"]) * replicas
    messages = inputs.messages
    return ChoreographyNeeds(
        rate=rate,
        worker_cores=worker,
        worker_processes=python_processes(worker),
        api_cores=api,
        api_processes=python_processes(api),
        nats_cores=nats,
        nats_nodes=nodes(nats, replicas),
        published_per_s=rate * messages.published,
        deliveries_per_s=rate * messages.deliveries,
        per_consumer_per_s=rate * messages.deliveries / messages.consumers,
        service_db_writes_per_s=rate * inputs.choreography_writes.total,
        database_cores=cores(rate, cpu["database"]) if "database" in cpu else None,
    )


# --- what breaks first -----------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """One unit of a part (a node, a stream, a process, a configured count), what one order a
    second asks of it and what it takes: ``capacity`` is a published figure at
    TARGET_UTILISATION, or a configured value. ``scales_out``: more copies lift the limit
    without a redesign (processes); otherwise the part itself must be split."""

    part: str
    per_order: float
    capacity: float
    unit: str
    source: str  # a SOURCES key, or "" for a configured value
    remedy: str
    scales_out: bool

    @property
    def crossed_at(self) -> float:
        """The orders a second at which one unit is full."""
        return math.inf if self.per_order <= 0 else self.capacity / self.per_order


def orchestration_limits(inputs: SizingInputs) -> list[Limit]:
    """The orchestrated saga's one-unit limits (those whose figures were measured)."""
    cpu = inputs.orchestration.cpu_ms_per_saga
    temporal = inputs.temporal
    usable_tps = POSTGRES_TPS * TARGET_UTILISATION
    limits = [
        Limit(
            "one Python saga worker process",
            cpu["worker"] / 1000,
            TARGET_UTILISATION,
            "cores",
            "gil",
            "add worker processes: they share the task queues",
            scales_out=True,
        ),
        Limit(
            "the service PostgreSQL primary",
            inputs.orchestration_writes.total,
            usable_tps,
            "write transactions/s",
            "postgres",
            "one database per service (orders, payments, deliveries), then shard by order id",
            scales_out=False,
        ),
        Limit(
            f"{inputs.deployment.history_shards} history shards (docker-compose.yml)",
            _shards_per_order(temporal),
            inputs.deployment.history_shards,
            "shards",
            "",
            "a new cluster with more shards (the count is fixed at creation), sagas moved "
            "over as they close",
            scales_out=False,
        ),
    ]
    if temporal.persistence_writes is not None:
        limits.append(
            Limit(
                "Temporal's PostgreSQL primary",
                temporal.persistence_writes,
                usable_tps,
                "persistence writes/s",
                "postgres",
                "a persistence that shards (Cassandra, or MySQL on Vitess)",
                scales_out=False,
            )
        )
    return limits


def _shards_per_order(temporal: TemporalMeasured) -> float:
    for_open = OPEN_SAGA_SECONDS / OPEN_WORKFLOWS_PER_SHARD
    if temporal.state_transitions is None:
        return for_open
    for_writes = temporal.state_transitions * PERSISTENCE_WRITE_MS / 1000 / TARGET_UTILISATION
    return max(for_open, for_writes)


def choreography_limits(inputs: SizingInputs) -> list[Limit]:
    """The choreographed saga's one-unit limits."""
    cpu = inputs.choreography.cpu_ms_per_saga
    messages = inputs.messages
    return [
        Limit(
            "one Python consumer process",
            cpu["worker"] / 1000,
            TARGET_UTILISATION,
            "cores",
            "gil",
            "add worker processes: durable pull consumers share their messages",
            scales_out=True,
        ),
        Limit(
            "the service PostgreSQL primary",
            inputs.choreography_writes.total,
            POSTGRES_TPS * TARGET_UTILISATION,
            "write transactions/s",
            "postgres",
            "one database per service (each service's tables, inbox and outbox), then shard",
            scales_out=False,
        ),
        Limit(
            "the one event stream (its RAFT leader)",
            messages.published,
            STREAM_MSGS_PER_S * TARGET_UTILISATION,
            "messages/s",
            "nats-bench",
            "partition the subjects over several streams",
            scales_out=False,
        ),
        Limit(
            "one durable consumer",
            messages.deliveries / messages.consumers,
            CONSUMER_ACKS_PER_S * TARGET_UTILISATION,
            "acks/s",
            "nats-bench",
            "a consumer per partition",
            scales_out=False,
        ),
    ]


def breaks_first(limits: Sequence[Limit], rate: float) -> Limit | None:
    """The part that cannot scale out whose one unit is full at the lowest rate, if that rate
    is at most ``rate``; None when nothing such is full at ``rate``."""
    crossed = [lim for lim in limits if not lim.scales_out and lim.crossed_at <= rate]
    return min(crossed, key=lambda lim: lim.crossed_at, default=None)


def nearest(limits: Sequence[Limit]) -> Limit:
    """The part that cannot scale out and fills first as the rate grows."""
    return min((lim for lim in limits if not lim.scales_out), key=lambda lim: lim.crossed_at)


# --- the page --------------------------------------------------------------------------------


def render(inputs: SizingInputs) -> str:
    """The whole of ``docs/sizing.md``, from ``inputs`` alone."""
    orchestration = [orchestration_needs(inputs, r) for r in RATES]
    choreography = [choreography_needs(inputs, r) for r in RATES]
    parts = [
        _intro(inputs),
        _measured(inputs),
        _orchestration(inputs, orchestration),
        _breaks("orchestration", orchestration_limits(inputs), _unchecked(inputs)),
        _choreography(inputs, choreography),
        _breaks("choreography", choreography_limits(inputs)),
        _assumptions(inputs),
        _sources(),
        _regenerate(),
    ]
    return "\n\n".join(parts) + "\n"


def _unchecked(inputs: SizingInputs) -> str:
    if inputs.temporal.persistence_writes is not None:
        return ""
    return (
        "Not checked: Temporal's own PostgreSQL primary and the shards its writes need, as this "
        "bench run did not count the server's persistence requests (a bench that does fills "
        "them in)."
    )


def _intro(inputs: SizingInputs) -> str:
    m = inputs.machine
    rates = [inputs.orchestration.sagas_per_s, inputs.choreography.sagas_per_s]
    slowest, fastest = min(rates), max(rates)
    database = (
        "a local PostgreSQL for the service database (its CPU measured as `database`)"
        if m.database == "postgresql"
        else "SQLite for the service database (its work counted inside the worker and the API)"
    )
    return "\n".join(
        [
            "# Sizing: 100, 1,000 and 10,000 orders a second",
            "",
            "<!-- Generated by `make sizing` (tools/bench/sizing.py) from "
            "docs/sizing-inputs.json. Do not edit: tests fail when the two disagree. -->",
            "",
            "What each saga style needs at 100, 1,000 and 10,000 delivered orders a second, and "
            "which part breaks first. Orchestration runs on Temporal; choreography on NATS "
            "JetStream. Every figure is one of three kinds:",
            "",
            f"- **measured** by `make bench` on a {m.cores}-core machine (run of {m.started_at}, "
            f"`{m.run_dir}`): CPU per saga of each process, Temporal's history and persistence "
            "requests per saga. Everything ran on that one machine, competing for its cores: "
            f"the Temporal dev server (frontend, history and matching in one process, its own "
            f"SQLite in memory), {database}, NATS with one replica;",
            "- **counted from the code**: the service database's write transactions and the "
            "JetStream messages of a delivered saga;",
            "- **derived**: measured per saga times orders a second, over a target utilisation of "
            f"{TARGET_UTILISATION:.0%}; checked against the published figures at the end, and "
            "against the [assumptions](#assumptions), which are labelled as such.",
            "",
            "The CPU per saga was measured at this machine's own rate "
            f"({_sig(slowest)} to {_sig(fastest)} sagas a second), so fixed costs (polling, "
            "timers) are spread over few sagas: the cores below are on the high side; the rates "
            "of messages, transitions and writes do not depend on it.",
        ]
    )


@dataclass(frozen=True)
class _Column:
    """One measured loop on the page: its figures, its history (orchestrated) and its writes."""

    title: str
    measured: StyleMeasured
    temporal: TemporalMeasured | None
    writes: WritesFromCode | None
    choreographed: bool


def _columns(inputs: SizingInputs) -> list[_Column]:
    columns = [
        _Column(
            "orchestration, routing `workflow` (default)",
            inputs.orchestration,
            inputs.temporal,
            inputs.orchestration_writes,
            choreographed=False,
        )
    ]
    other, history = inputs.orchestration_other, inputs.temporal_other
    if other is not None:
        writes = (
            WritesFromCode(door=ORCHESTRATION_DOOR_WRITES, steps=history.activities, marks=0)
            if history is not None
            else None
        )
        columns.append(_Column("orchestration, routing `service`", other, history, writes, False))
    columns.append(
        _Column(
            "choreography",
            inputs.choreography,
            None,
            inputs.choreography_writes,
            choreographed=True,
        )
    )
    return columns


def _measured(inputs: SizingInputs) -> str:
    columns = _columns(inputs)

    def row(label: str, cell: Callable[[_Column], str]) -> list[str]:
        return [label, *(cell(c) for c in columns)]

    def cpu(role: str, *, choreographed: bool | None = None) -> Callable[[_Column], str]:
        def cell(c: _Column) -> str:
            if choreographed is not None and c.choreographed != choreographed:
                return ""
            return _ms(c.measured.cpu_ms_per_saga.get(role))

        return cell

    def history(field: str) -> Callable[[_Column], str]:
        return lambda c: "" if c.temporal is None else _count(getattr(c.temporal, field))

    messages = inputs.messages
    rows = [
        row("sagas/s on this machine (closed loop)", lambda c: _sig(c.measured.sagas_per_s)),
        row("order to delivered, p99 (ms)", lambda c: _sig(c.measured.p99_ms)),
        row("POST to IN_TRANSIT alone, p50 (ms)", lambda c: _sig(c.measured.unloaded_p50_ms)),
        row("CPU ms: saga worker, or consumers", cpu("worker")),
        row("CPU ms: Temporal server", cpu("server", choreographed=False)),
        row("CPU ms: API", cpu("api")),
        row("CPU ms: NATS", cpu("nats", choreographed=True)),
        row("CPU ms: service PostgreSQL", cpu("database")),
        row("service database write transactions (code)", lambda c: _wr(c.writes)),
        row("history events", history("events")),
        row("history bytes", history("bytes")),
        row("state transitions", history("state_transitions")),
        row("persistence writes", history("persistence_writes")),
        row("persistence reads", history("persistence_reads")),
        row(
            "JetStream messages published / delivered (code)",
            lambda c: f"{messages.published} / {messages.deliveries}" if c.choreographed else "",
        ),
    ]
    scale = inputs.scale
    memory = (
        f"Worker memory per open saga (`make bench-scale`, {scale.first_open:,} to "
        f"{scale.last_open:,} open, run of {scale.started_at}): "
        f"{scale.mb_per_open_saga * 1000:.1f} kB."
        if scale
        else "Worker memory per open saga: not measured (no `.bench/scale-latest.json`: run "
        "`make bench-scale`)."
    )
    notes = (
        "CPU in milliseconds per saga, of the processes each style runs (the load generator, "
        "and the Temporal server idling through the choreographed loop, left out). Empty: not "
        'that style\'s part; "not measured": the bench run did not record it.'
    )
    headers = ["per delivered saga", *(c.title for c in columns)]
    return "\n".join(["## Measured", "", _table(headers, rows), "", memory, "", notes])


def _orchestration(inputs: SizingInputs, needs: list[OrchestrationNeeds]) -> str:
    t = inputs.temporal
    shards = inputs.deployment.history_shards

    def each(cell: Callable[[OrchestrationNeeds], str]) -> list[str]:
        return [cell(n) for n in needs]

    def service(name: str) -> Callable[[OrchestrationNeeds], str]:
        return lambda n: f"{_cores(n.service_cores[name])}: {n.service_nodes[name]} nodes"

    def shard_cell(n: OrchestrationNeeds) -> str:
        writes = "not measured" if n.shards_for_writes is None else _sig(n.shards_for_writes)
        needed = f"**{n.shards:,}**" if n.shards > shards else f"{n.shards:,}"
        return f"{needed} (writes {writes}, open {_sig(n.shards_for_open)})"

    rows = [
        ["saga worker (Python)", *each(lambda n: _procs(n.worker_cores, n.worker_processes))],
        ["API (Python)", *each(lambda n: _procs(n.api_cores, n.api_processes))],
        ["Temporal server, all services", *each(lambda n: _cores(n.server_cores))],
        ["history (assumed share)", *each(service("history"))],
        ["matching (assumed share)", *each(service("matching"))],
        ["frontend (assumed share)", *each(service("frontend"))],
        ["state transitions/s", *each(lambda n: _rate(n.state_transitions_per_s))],
        ["persistence writes/s", *each(lambda n: _rate(n.persistence_writes_per_s))],
        ["persistence reads/s", *each(lambda n: _rate(n.persistence_reads_per_s))],
        [
            "Temporal's PostgreSQL: share of one primary",
            *each(lambda n: _share(n.persistence_writes_per_s)),
        ],
        ["history written", *each(lambda n: _bytes_rate(n.history_mb_per_s))],
        ["open sagas (assumed open time)", *each(lambda n: _sig(n.open_sagas))],
        [f"history shards needed, a power of two (have {shards:,})", *each(shard_cell)],
        ["worker memory for open sagas", *each(lambda n: _gb(n.worker_open_gb))],
        [
            "service PostgreSQL: write transactions/s",
            *each(lambda n: _rate(n.service_db_writes_per_s)),
        ],
        [
            "service PostgreSQL: share of one primary",
            *each(lambda n: _share(n.service_db_writes_per_s)),
        ],
        ["service PostgreSQL: cores", *each(lambda n: _maybe_cores(n.database_cores))],
    ]
    headers = ["part", *(f"{r:,}/s" for r in RATES)]
    other = inputs.orchestration_other
    differs = ""
    if other is not None:
        a, b = inputs.orchestration.cpu_ms_per_saga, other.cpu_ms_per_saga
        at = RATES[-1]
        differs = (
            f"\n\nWith `ACTIVITY_ROUTING=service` (each service's activities on its own task "
            f"queue) the saga worker needs {_cores(cores(at, b['worker']))} and the "
            f"Temporal server {_cores(cores(at, b['server']))} at {at:,}/s, against "
            f"{_cores(cores(at, a['worker']))} and {_cores(cores(at, a['server']))} above."
        )
    return (
        "\n".join(
            [
                "## Orchestration on Temporal",
                "",
                f"Sized from `{inputs.orchestration.phase}` and the `{t.history}` history. "
                f"Cores at {TARGET_UTILISATION:.0%}; a Python process uses one core at most, so "
                "processes = cores rounded up; Temporal services in "
                f"{NODE_CORES}-core nodes, {TEMPORAL_MIN_PODS} at least each. A share of one "
                "primary is the rate over the published PostgreSQL figure at "
                f"{TARGET_UTILISATION:.0%}: over 100% needs more than one.",
                "",
                _table(headers, rows),
            ]
        )
        + differs
    )


def _choreography(inputs: SizingInputs, needs: list[ChoreographyNeeds]) -> str:
    replicas = inputs.deployment.stream_replicas

    def each(cell: Callable[[ChoreographyNeeds], str]) -> list[str]:
        return [cell(n) for n in needs]

    def stream_share(n: ChoreographyNeeds) -> str:
        return _load(n.published_per_s / (STREAM_MSGS_PER_S * TARGET_UTILISATION))

    def consumer_share(n: ChoreographyNeeds) -> str:
        return _load(n.per_consumer_per_s / (CONSUMER_ACKS_PER_S * TARGET_UTILISATION))

    rows = [
        [
            "consumers, relay, sweepers (Python)",
            *each(lambda n: _procs(n.worker_cores, n.worker_processes)),
        ],
        ["API (Python)", *each(lambda n: _procs(n.api_cores, n.api_processes))],
        [f"NATS, R{replicas}", *each(lambda n: f"{_cores(n.nats_cores)}: {n.nats_nodes} nodes")],
        ["events published/s (one stream)", *each(lambda n: _rate(n.published_per_s))],
        ["share of one stream (R1 figure)", *each(stream_share)],
        ["deliveries acked/s (all consumers)", *each(lambda n: _rate(n.deliveries_per_s))],
        ["share of one durable consumer", *each(consumer_share)],
        [
            "service PostgreSQL: write transactions/s",
            *each(lambda n: _rate(n.service_db_writes_per_s)),
        ],
        [
            "service PostgreSQL: share of one primary",
            *each(lambda n: _share(n.service_db_writes_per_s)),
        ],
        ["service PostgreSQL: cores", *each(lambda n: _maybe_cores(n.database_cores))],
    ]
    headers = ["part", *(f"{r:,}/s" for r in RATES)]
    return "\n".join(
        [
            "## Choreography on NATS JetStream",
            "",
            f"Sized from `{inputs.choreography.phase}`. NATS's measured CPU (one server) is "
            f"counted once per replica (R{replicas}, docker-compose.yml), in {NODE_CORES}-core "
            f"nodes, {replicas} at least. A stream's and a consumer's share are the rate over "
            f"the published single-server (R1) figure at {TARGET_UTILISATION:.0%}; no R3 figure "
            "is published, and R3 is slower (each message reaches a quorum before its ack), so "
            "these shares are lower bounds.",
            "",
            _table(headers, rows),
        ]
    )


def _breaks(style: str, limits: list[Limit], unchecked: str = "") -> str:
    """Per rate, the part past its one-unit limit first (or the nearest), then every limit;
    ``unchecked`` says which limit could not be checked, and why."""
    lines = [f"### What breaks first ({style})", ""]
    for rate in RATES:
        first = breaks_first(limits, rate)
        if first is None:
            near = nearest(limits)
            lines.append(
                f"- **{rate:,}/s**: nothing is past a one-unit limit. The nearest is "
                f"{near.part}, full at about {_sig(near.crossed_at)} orders/s "
                f"({_load(rate / near.crossed_at)} of it used)."
            )
        else:
            lines.append(
                f"- **{rate:,}/s**: {first.part}, full at about {_sig(first.crossed_at)} "
                f"orders/s ({rate / first.crossed_at:.1f} times what one takes). Then: "
                f"{first.remedy}."
            )
    process = next(lim for lim in limits if lim.scales_out)
    outgrown = [r for r in RATES if r > process.crossed_at]
    lines += [
        "",
        f"{process.part[0].upper()}{process.part[1:]} is full at about "
        f"{_sig(process.crossed_at)} orders/s"
        + (
            f", so the table counts processes from {outgrown[0]:,}/s on ({process.remedy})."
            if outgrown
            else f": one is enough at every rate here ({process.remedy} beyond it)."
        ),
        *(["", unchecked] if unchecked else []),
        "",
        _table(
            ["one unit of", "per order a second", "one takes", "full at (orders/s)", "beyond it"],
            [
                [
                    lim.part,
                    f"{_sig(lim.per_order)} {lim.unit}",
                    f"{_sig(lim.capacity)} {lim.unit}" + _cite(lim.source),
                    _sig(lim.crossed_at),
                    lim.remedy,
                ]
                for lim in sorted(limits, key=lambda lim: lim.crossed_at)
            ],
            align="lrrrl",
        ),
    ]
    return "\n".join(lines)


def _cite(key: str) -> str:
    """A link to the source ``key`` ("": a configured value, cited by its part's name)."""
    if not key:
        return ""
    source = SOURCES[key]
    return f" ([{source.short}]({source.url}))"


def _assumptions(inputs: SizingInputs) -> str:
    window = SagaTimeouts().payment_window.total_seconds() / 60
    split = ", ".join(f"{s} {share:.0%}" for s, share in SERVER_SPLIT.items())
    return "\n".join(
        [
            "## Assumptions",
            "",
            f"- Target utilisation {TARGET_UTILISATION:.0%} of every core and of every "
            "published peak: headroom for bursts, retries and one node lost.",
            f"- A node is {NODE_CORES} cores.",
            f"- The Temporal server's measured CPU splits {split}: the dev server runs the three "
            "in one process, so the split is not measured. History gets half: it runs the "
            "state machines and every persistence write. The dev server's own SQLite work is "
            "in that CPU; with a separate PostgreSQL it moves there.",
            f"- A shard's serialised persistence write takes {PERSISTENCE_WRITE_MS:g} ms (a "
            "same-region PostgreSQL commit): the shards a rate needs are its state transitions "
            f"times that time, at {TARGET_UTILISATION:.0%}. Measure yours (`semaphore_latency`).",
            f"- A saga stays open {OPEN_SAGA_SECONDS / 60:g} minutes on average (the customer's "
            f"decision, up to the {window:g}-minute payment window, then the delivery); the "
            "bench's sagas close in seconds. Open sagas = rate times that; shards for them at "
            f"{OPEN_WORKFLOWS_PER_SHARD:,} open workflows each; worker memory at the measured "
            "kB per open saga (an upper bound: the worker caches a bounded number of workflows "
            "and evicts the rest).",
            f"- NATS at R{inputs.deployment.stream_replicas}: each replica does the CPU one "
            "server was measured doing.",
            "- A TPC-B transaction (3 updates, a select, an insert) costs about what one of the "
            "saga's write transactions does, so the published rate is a primary's ceiling for "
            "either.",
        ]
    )


def _sources() -> str:
    lines = ["## Published figures", ""]
    for source in SOURCES.values():
        lines.append(f"- [{source.title}]({source.url}): {source.says}.")
    return "\n".join(lines)


def _regenerate() -> str:
    return "\n".join(
        [
            "## Regenerate",
            "",
            "```bash",
            'make bench BENCH_ARGS="--database-url postgresql://postgres@127.0.0.1:5432/bench"',
            "make bench-scale",
            "make sizing   # docs/sizing-inputs.json and this page",
            "```",
        ]
    )


# --- formatting ------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A markdown table; ``align`` has an "l" or "r" per column (default: the first left)."""
    align = align or "l" + "r" * (len(headers) - 1)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return "\n".join([line(headers), rule, *map(line, rows)])


def _sig(x: float | None) -> str:
    """Three significant figures, thousands separated; "not measured" for None."""
    if x is None:
        return "not measured"
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else "-"
    digits = 2 - math.floor(math.log10(abs(x)))
    rounded = round(x, digits)
    return f"{rounded:,.{max(0, digits)}f}"


def _count(x: int | None) -> str:
    return "not measured" if x is None else f"{x:,}"


def _ms(x: float | None) -> str:
    return "not measured" if x is None else f"{x:.1f}"


def _cores(x: float) -> str:
    return f"{x:.1f} cores" if x < 10 else f"{x:,.0f} cores"


def _maybe_cores(x: float | None) -> str:
    return "not measured" if x is None else _cores(x)


def _procs(needed: float, processes: int) -> str:
    return f"{_cores(needed)}: {processes:,} processes"


def _rate(x: float | None) -> str:
    return _sig(x)


def _pct(x: float) -> str:
    return "<1%" if x < 0.01 else f"{x:.0%}"


def _load(x: float) -> str:
    """A share of one unit: a percentage, or "n times" past twice."""
    return f"{x:.1f} times" if x >= 2 else _pct(x)


def _share(per_s: float | None) -> str:
    if per_s is None:
        return "not measured"
    return _load(per_s / (POSTGRES_TPS * TARGET_UTILISATION))


def _bytes_rate(mb_per_s: float) -> str:
    return f"{_sig(mb_per_s)} MB/s ({_sig(mb_per_s * 86_400 / 1000)} GB a day)"


def _gb(x: float | None) -> str:
    return "not measured" if x is None else f"{_sig(x)} GB"


def _wr(writes: WritesFromCode | None) -> str:
    if writes is None:
        return ""
    parts = [(writes.door, "door"), (writes.steps, "steps"), (writes.marks, "outbox marks")]
    return f"{writes.total} (" + ", ".join(f"{n} {what}" for n, what in parts if n) + ")"


# --- the command -----------------------------------------------------------------------------


def generate(bench: Path, scale: Path | None, inputs: Path, page: Path) -> SizingInputs:
    """Extract the inputs from the bench's output files, write them and the page."""
    scale_json = json.loads(scale.read_text()) if scale is not None and scale.exists() else None
    extracted = extract(json.loads(bench.read_text()), scale_json)
    inputs.write_text(extracted.model_dump_json(indent=2) + "\n")
    page.write_text(render(extracted))
    return extracted


def load(inputs: Path) -> SizingInputs:
    return SizingInputs.model_validate_json(inputs.read_text())


def is_current(inputs: Path, page: Path) -> bool:
    """Whether ``page`` is exactly what ``inputs`` render."""
    return page.exists() and page.read_text() == render(load(inputs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.sizing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--inputs", type=Path, help="render from these saved inputs only")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if docs/sizing.md is not what they render"
    )
    args = parser.parse_args(argv)
    if args.check:
        if is_current(args.inputs or INPUTS, PAGE):
            return 0
        print(f"{PAGE} differs from its inputs: run `make sizing`", file=sys.stderr)
        return 1
    if args.inputs is not None:
        PAGE.write_text(render(load(args.inputs)))
        print(f"wrote {PAGE}")
        return 0
    latest = BENCH_DIR / "latest.json"
    if not latest.exists():
        print(f"no {latest}: run `make bench` first", file=sys.stderr)
        return 2
    try:
        generate(latest, BENCH_DIR / "scale-latest.json", INPUTS, PAGE)
    except SizingError as err:
        print(f"cannot size: {err}", file=sys.stderr)
        return 2
    print(f"wrote {INPUTS} and {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
