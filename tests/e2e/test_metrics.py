"""The saga's metrics on the real stack, once per saga style: the counters move as sagas start
and end, the phase gauges read the rows, and the choreography's gauges read the outbox, the
dead letters and JetStream (docs/operations.md#metrics)."""

import asyncio
import re
from pathlib import Path

from choreography.runtime import connect_broker
from domain.status import SagaStyle
from sagas.gauges import SagaGauges
from telemetry import metrics_runtime
from tests.e2e.conftest import Stack, poison_event
from tests.e2e.test_both_styles import a_city, place
from tests.e2e.test_races import poll

SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "order-saga.json"
ALERTS = MONITORING / "prometheus" / "alerts.yml"


async def scrape(stack: Stack) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample on the stack's /metrics, by name: its labels and value."""
    response = await stack.metrics.get("/metrics")
    assert response.status_code == 200, response.text
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in response.text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            found.setdefault(match.group(1), []).append((labels, float(match.group(3))))
    return found


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """The sum of ``name``'s samples that carry ``labels`` (0 when there are none)."""
    return sum(
        sample
        for have, sample in samples.get(name, [])
        if all(have.get(key) == wanted for key, wanted in labels.items())
    )


async def until_moved(
    stack: Stack, name: str, past: float, labels: dict[str, str], within: float = 30
) -> float:
    """``name`` (with ``labels``) once it is above ``past``; a deadline, not a sleep."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        now = value(await scrape(stack), name, **labels)
        if now > past:
            return now
        assert asyncio.get_running_loop().time() < deadline, f"{name}{labels} stayed at {now}"
        await asyncio.sleep(0.2)


def gauges(stack: Stack) -> SagaGauges:
    """The collector the API runs, on the same meter: one look on demand, not every 15 s."""
    runtime = metrics_runtime(stack.settings.metrics_bind_address)
    assert runtime is not None
    return SagaGauges(stack.engine, runtime.metric_meter, broker=None)


async def collect_with_the_broker(stack: Stack) -> None:
    """One look of the collector the worker runs: the rows, and JetStream's own account of
    the stack's consumers, through a connection of the test's."""
    runtime = metrics_runtime(stack.settings.metrics_bind_address)
    assert runtime is not None
    broker = connect_broker(stack.settings)
    await broker.start()
    try:
        await SagaGauges(stack.engine, runtime.metric_meter, broker=broker).collect()
    finally:
        await broker.stop()


async def test_a_cancelled_and_a_refunded_saga_move_the_counters(styled: Stack) -> None:
    style = styled.style.value
    before = await scrape(styled)
    started = value(before, "order_saga_started_total", style=style)
    ended = "order_saga_ended_total"
    cancelled = value(before, ended, style=style, outcome="cancelled", reason="PaymentCancelled")
    no_dealer = value(before, ended, style=style, outcome="cancelled", reason="NoDealerAvailable")
    refunded = value(before, "order_saga_refunded_total", style=style)

    first = await place(styled)
    second = await place(styled, city=a_city())  # nobody delivers there: refunded
    # Both counted: above started + 1.
    assert await until_moved(styled, "order_saga_started_total", started + 1, {"style": style})
    cancel = await styled.http.post(f"/payments/{first['payment']['payment_id']}/cancel")
    assert cancel.status_code == 202, cancel.text
    confirm = await styled.http.post(f"/payments/{second['payment']['payment_id']}/confirm")
    assert confirm.status_code == 202, confirm.text
    for placed in (first, second):
        await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "CANCELLED")

    labels = {"style": style, "outcome": "cancelled"}
    await until_moved(styled, ended, cancelled, {**labels, "reason": "PaymentCancelled"})
    await until_moved(styled, ended, no_dealer, {**labels, "reason": "NoDealerAvailable"})
    await until_moved(styled, "order_saga_refunded_total", refunded, {"style": style})
    if styled.style == SagaStyle.ORCHESTRATION:  # the workflow times its phases
        after = await scrape(styled)
        assert value(after, "order_saga_phase_seconds_count", style=style, phase="COMPENSATING")


async def test_the_phase_gauges_count_the_sagas_waiting_in_the_rows(styled: Stack) -> None:
    style = styled.style.value
    collector = gauges(styled)
    waiting = {"style": style, "phase": "AWAITING_PAYMENT"}
    placed = await place(styled)
    await collector.collect()
    with_it = await scrape(styled)
    # Earlier tests' sagas only leave phases now, so the counts below are bounds, not guesses.
    count = value(with_it, "order_saga_waiting", **waiting)
    assert count >= 1
    assert value(with_it, "order_saga_waiting_oldest_seconds", **waiting) >= 0
    for phase in ("CREATING", "ASSIGNING_DEALER", "IN_TRANSIT", "COMPENSATING"):
        labels = [have for have, _ in with_it["order_saga_waiting"]]
        assert any(have.get("style") == style and have.get("phase") == phase for have in labels)

    cancel = await styled.http.post(f"/payments/{placed['payment']['payment_id']}/cancel")
    assert cancel.status_code == 202, cancel.text
    await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "CANCELLED")
    await collector.collect()
    assert value(await scrape(styled), "order_saga_waiting", **waiting) <= count - 1


async def test_the_choreography_gauges_read_dead_letters_outbox_and_consumer_lag(
    stack: Stack,
) -> None:
    dead = await poison_event(stack)
    await collect_with_the_broker(stack)
    samples = await scrape(stack)
    pending = value(samples, "order_saga_dead_letters", consumer=dead.consumer, state="pending")
    assert pending >= 1
    assert "order_saga_outbox_backlog" in samples
    assert "order_saga_outbox_oldest_seconds" in samples
    consumers = {labels["consumer"] for labels, _ in samples["order_saga_consumer_pending"]}
    assert dead.consumer in consumers
    assert {labels["sweeper"] for labels, _ in samples["order_saga_sweeper_overdue_seconds"]} == {
        "payment_window",
        "dealer_retry",
    }


def queried(path: Path) -> set[str]:
    """The saga's and the SDK's metric names a dashboard or rule file queries."""
    names = set(re.findall(r"\b((?:order_saga|temporal)_\w+)", path.read_text()))
    # A histogram is queried through its series; the name it is served under is the same.
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def served(samples: dict[str, list[tuple[dict[str, str], float]]]) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in samples}


# Served once a compensation has failed: tests/test_telemetry.py makes one fail.
ONLY_AFTER_A_FAILURE = {"order_saga_compensation_retries_total"}


async def test_the_dashboard_and_the_alerts_query_only_metrics_that_are_served(
    stack: Stack,
) -> None:
    for style in SagaStyle:  # a saga down the longest path of each style: every phase
        styled = stack.in_style(style)
        placed = await place(styled, city=a_city())
        await styled.http.post(f"/payments/{placed['payment']['payment_id']}/confirm")
        await poll(styled.http, placed["order_id"], lambda o: o["phase"] == "CANCELLED")
    await collect_with_the_broker(stack)
    # The workflow's phase time is recorded as it leaves the phase: wait for the last one.
    await until_moved(stack, "order_saga_ended_total", 0, {"style": "orchestration"})
    samples = await scrape(stack)
    for path in (DASHBOARD, ALERTS):
        missing = queried(path) - served(samples) - ONLY_AFTER_A_FAILURE
        assert sorted(missing) == [], path.name
