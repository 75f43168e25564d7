"""The sizing page (``python -m tools.bench.sizing``): computed from its inputs alone, its
inputs read right from the bench's output, its needs linear in the rate, and its "breaks
first" naming the part whose limit is crossed first."""

import json
import math
from pathlib import Path
from typing import Any

import pytest

from domain.status import SagaStyle
from tools.bench import sizing
from tools.bench.report import BenchResult, HistoryCounts, PhaseResult
from tools.bench.sizing import (
    INPUTS,
    PAGE,
    SizingInputs,
    breaks_first,
    choreography_limits,
    choreography_needs,
    extract,
    generate,
    is_current,
    load,
    orchestration_limits,
    orchestration_needs,
    render,
)
from tools.bench.stats import Latency


def phase(name: str, style: SagaStyle, cpu_ms_per_saga: dict[str, float]) -> PhaseResult:
    return PhaseResult(
        name=name,
        style=style,
        through="api",
        sagas=100,
        delivered=100,
        failures=0,
        failure_samples=[],
        warmup=10,
        rounds=2,
        seconds=10.0,
        sagas_per_s=10.0,
        e2e=Latency(count=100, p50_ms=1000, p95_ms=2000, p99_ms=2500, max_ms=3000),
        cpu_s={},
        cpu_ms_per_saga=cpu_ms_per_saga,
        rss_max_mb={},
    )


def bench_document(**history: Any) -> dict[str, Any]:
    """A BenchResult of a PostgreSQL run with round figures: the orchestrated saga's worker
    50 ms, server 60 ms, API 10 ms, database 5 ms a saga; 20 state transitions, 40
    persistence writes and 6 reads; the choreographed saga's worker 20, API 15, NATS 2,
    database 4."""
    saga = {
        "name": "saga-workflow",
        "events": 60,
        "bytes": 14_000,
        "workflow_tasks": 10,
        "activities": 8,
        "state_transitions": 20,
        "persistence_requests": {
            "CreateWorkflowExecution": 1,
            "UpdateWorkflowExecution": 19,
            "AppendHistoryNodes": 20,
            "GetWorkflowExecution": 2,
            "ReadHistoryBranch": 4,
        },
    }
    result = BenchResult(
        started_at="2026-01-01T00:00:00+0000",
        wall_seconds=60.0,
        run_dir="/runs/1",
        config={"database_url": "postgresql://bench:secret@db/bench"},
        phases=[
            phase(
                "orchestration-workflow",
                SagaStyle.ORCHESTRATION,
                {"worker": 50.0, "server": 60.0, "api": 10.0, "database": 5.0, "bench": 9.0},
            ),
            phase(
                "choreography",
                SagaStyle.CHOREOGRAPHY,
                {"worker": 20.0, "server": 2.0, "api": 15.0, "nats": 2.0, "database": 4.0},
            ),
        ],
        ratios=[],
        history=[HistoryCounts.model_validate({**saga, **history})],
        unloaded=[],
        rss_run_max_mb={},
        dealer_errors=[],
        failures=0,
        summary="",
        summary_routing=None,
        summary_choreography=None,
    )
    document: dict[str, Any] = json.loads(result.model_dump_json())
    return document


@pytest.fixture
def inputs() -> SizingInputs:
    return extract(bench_document(), None)


def test_the_page_is_exactly_what_its_inputs_render():
    assert PAGE.read_text() == render(load(INPUTS)), "docs/sizing.md is stale: `make sizing`"


def test_a_page_edited_by_hand_is_not_current(tmp_path: Path):
    page = tmp_path / "sizing.md"
    page.write_text(render(load(INPUTS)))
    assert is_current(INPUTS, page)
    page.write_text(page.read_text().replace("10,000/s", "20,000/s"))
    assert not is_current(INPUTS, page)


def test_extract_keeps_each_styles_per_saga_figures(inputs: SizingInputs):
    assert inputs.machine.database == "postgresql"
    assert "secret" not in inputs.model_dump_json()
    assert inputs.orchestration.cpu_ms_per_saga == {
        "worker": 50.0,
        "server": 60.0,
        "api": 10.0,
        "database": 5.0,
    }
    # The Temporal server idles through the choreographed loop: not a part of that style.
    assert inputs.choreography.cpu_ms_per_saga == {
        "worker": 20.0,
        "api": 15.0,
        "nats": 2.0,
        "database": 4.0,
    }
    assert inputs.temporal.state_transitions == 20
    assert inputs.temporal.persistence_writes == 40
    assert inputs.temporal.persistence_reads == 6
    assert inputs.orchestration_writes.total == 5 + 8  # the door's, then one per activity


def test_orchestration_at_1000_a_second_by_hand(inputs: SizingInputs):
    assert sizing.TARGET_UTILISATION == 0.6, "the figures below are computed at 60%"
    needs = orchestration_needs(inputs, 1_000)
    assert needs.worker_cores == pytest.approx(1_000 * 0.050 / 0.6)  # 83.3
    assert needs.worker_processes == 84
    assert needs.server_cores == pytest.approx(100.0)  # 1,000 x 60 ms / 0.6
    assert needs.service_cores["history"] == pytest.approx(50.0)
    assert needs.service_nodes["history"] == 13  # 50 cores in 4-core nodes
    assert needs.state_transitions_per_s == 20_000
    assert needs.persistence_writes_per_s == 40_000
    assert needs.persistence_reads_per_s == 6_000
    assert needs.history_mb_per_s == pytest.approx(14.0)
    assert needs.service_db_writes_per_s == 13_000
    assert needs.database_cores == pytest.approx(1_000 * 0.005 / 0.6)
    # Writes: 20,000 transitions x 5 ms / 0.6 = 167 shards busy; open: 3.6 M / 10,000 = 360.
    assert needs.shards_for_writes == pytest.approx(166.67, rel=1e-3)
    assert needs.shards_for_open == pytest.approx(360.0)
    assert needs.shards == 512


def test_choreography_at_1000_a_second_by_hand(inputs: SizingInputs):
    needs = choreography_needs(inputs, 1_000)
    assert needs.worker_processes == 34  # 1,000 x 20 ms / 0.6 = 33.3 cores
    assert needs.api_processes == 25  # 25.0 cores
    assert needs.nats_cores == pytest.approx(1_000 * 0.002 / 0.6 * 3)  # three replicas
    assert needs.nats_nodes == 3
    assert needs.published_per_s == 6_000
    assert needs.deliveries_per_s == 4_000
    assert needs.service_db_writes_per_s == 13_000


def test_a_delivered_choreographed_saga_sends_six_events_to_four_consumers(
    inputs: SizingInputs,
):
    # order_created, payment_confirmed, order_confirmed, delivery_assigned,
    # delivery_completed, order_delivered; only delivery_assigned and order_delivered have
    # no consumer.
    assert inputs.messages.published == 6
    assert inputs.messages.deliveries == 4
    # Three door transactions, one per consumed event, one outbox mark per event sent.
    assert inputs.choreography_writes.total == 3 + 4 + 6


@pytest.mark.parametrize("needs", [orchestration_needs, choreography_needs])
def test_every_need_but_a_minimum_grows_ten_times_with_the_rate(inputs: SizingInputs, needs):
    low, high = needs(inputs, 1_000), needs(inputs, 10_000)
    compared = 0
    for field, value in vars(low).items():
        if isinstance(value, float):
            assert getattr(high, field) == pytest.approx(10 * value), field
            compared += 1
    assert compared >= 5


def test_an_older_bench_leaves_the_persistence_counts_unmeasured():
    document = bench_document(persistence_requests={}, state_transitions=0)
    inputs = extract(document, None)
    assert inputs.temporal.state_transitions is None
    assert inputs.temporal.persistence_writes is None
    needs = orchestration_needs(inputs, 100)
    assert needs.state_transitions_per_s is None
    assert needs.shards_for_writes is None
    assert "Temporal's PostgreSQL primary" not in [lim.part for lim in orchestration_limits(inputs)]
    assert "not measured" in render(inputs)


def test_extract_refuses_a_run_whose_sagas_failed():
    document = bench_document()
    document["phases"][1]["failures"] = 3
    with pytest.raises(sizing.SizingError, match="choreography"):
        extract(document, None)


def test_nothing_breaks_at_100_a_second_with_these_figures(inputs: SizingInputs):
    assert breaks_first(orchestration_limits(inputs), 100) is None
    assert breaks_first(choreography_limits(inputs), 100) is None


def test_temporals_persistence_breaks_first_when_it_writes_the_most(inputs: SizingInputs):
    # 40 writes a saga against the service database's 13: one primary fills at
    # 27,012 x 0.6 / 40 = 405 orders/s, the service's at 1,247.
    first = breaks_first(orchestration_limits(inputs), 1_000)
    assert first is not None
    assert first.part == "Temporal's PostgreSQL primary"
    assert first.crossed_at == pytest.approx(27_012 * 0.6 / 40)


def test_the_stream_breaks_first_when_a_saga_publishes_thousands_of_events(
    inputs: SizingInputs,
):
    flooded = inputs.model_copy(
        update={"messages": inputs.messages.model_copy(update={"published": 5_000})}
    )
    first = breaks_first(choreography_limits(flooded), 100)
    assert first is not None
    assert first.part == "the one event stream (its RAFT leader)"
    # ...while the service database, 13 writes a saga, still has room at that rate.
    assert breaks_first(choreography_limits(inputs), 100) is None


def test_generate_writes_inputs_that_render_the_page_it_writes(tmp_path: Path):
    bench = tmp_path / "latest.json"
    bench.write_text(json.dumps(bench_document()))
    inputs, page = tmp_path / "sizing-inputs.json", tmp_path / "sizing.md"
    generate(bench, tmp_path / "no-scale-run.json", inputs, page)
    assert is_current(inputs, page)
    assert math.isclose(load(inputs).orchestration.cpu_ms_per_saga["worker"], 50.0)
