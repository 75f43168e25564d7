"""Prometheus metrics of the saga, scraped from a real SDK runtime (telemetry.py)."""

import asyncio
import re

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from domain import names
from domain.payloads import DeliveredReport, PaymentDecision
from domain.status import SagaPhase
from settings import Settings
from telemetry import metrics_runtime
from tests.saga_harness import (
    FailingRefund,
    add_dealer,
    confirm_payment,
    saga_workers,
    start_saga,
    wait_for_phase,
)
from tools.chaos.stack import free_port
from workflows import OrderProcessWorkflow as Saga


def samples(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``metric`` (its name as served): labels and value."""
    found = []
    pattern = re.compile(rf"^{metric}\{{(.*)\}} (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            found.append((labels, float(match.group(2))))
    return found


def total(text: str, metric: str, **labels: str) -> float:
    return sum(
        value
        for have, value in samples(text, metric)
        if all(have.get(k) == v for k, v in labels.items())
    )


def test_metrics_runtime_is_off_by_default_and_built_once_per_address():
    assert Settings().metrics_bind_address is None
    assert metrics_runtime(None) is None
    address = f"127.0.0.1:{free_port()}"
    assert metrics_runtime(address) is metrics_runtime(address)


async def test_saga_metrics_are_scraped_from_prometheus(
    time_skipping_env, engine, executor, task_queue_suffix
):
    port = free_port()
    runtime = metrics_runtime(f"127.0.0.1:{port}")
    assert runtime is not None
    client = await Client.connect(
        time_skipping_env.client.service_client.config.target_host,
        namespace=time_skipping_env.client.namespace,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )
    add_dealer(engine)
    refund = FailingRefund(engine, failures=1)  # one retry of the refund compensation
    overrides = [refund.cancel_or_refund_payment]
    async with saga_workers(client, engine, executor, task_queue_suffix, overrides=overrides):
        cancelled = await start_saga(client, engine, task_queue_suffix)
        waiting = await wait_for_phase(cancelled, SagaPhase.AWAITING_PAYMENT)
        assert waiting.payment_id is not None
        await cancelled.signal(Saga.cancel_payment, PaymentDecision(payment_id=waiting.payment_id))
        assert (await cancelled.result()).phase == SagaPhase.CANCELLED

        delivered = await start_saga(client, engine, task_queue_suffix)
        await confirm_payment(delivered)
        transit = await wait_for_phase(delivered, SagaPhase.IN_TRANSIT)
        assert transit.delivery_id is not None
        await delivered.signal(
            Saga.mark_delivered, DeliveredReport(delivery_id=transit.delivery_id)
        )
        assert (await delivered.result()).phase == SagaPhase.DELIVERED

    queue = names.WORKFLOW_TASK_QUEUE + task_queue_suffix
    style = {"style": "orchestration"}
    expected = {
        ("order_saga_started_total", ()): 2,
        ("order_saga_ended_total", (("outcome", "delivered"),)): 1,
        (
            "order_saga_ended_total",
            (("outcome", "cancelled"), ("reason", names.PAYMENT_CANCELLED)),
        ): 1,
        ("order_saga_refunded_total", ()): 0,  # cancelled before the payment was taken
        (
            "order_saga_compensation_retries_total",
            (("compensation", names.CANCEL_OR_REFUND_PAYMENT),),
        ): 1,
        ("order_saga_payment_wait_seconds_count", (("decision", "CANCEL"),)): 1,
        ("order_saga_payment_wait_seconds_count", (("decision", "CONFIRM"),)): 1,
        ("order_saga_phase_seconds_count", (("phase", "AWAITING_PAYMENT"),)): 2,
        ("order_saga_phase_seconds_count", (("phase", "COMPENSATING"),)): 1,
        ("order_saga_phase_seconds_count", (("phase", "IN_TRANSIT"),)): 1,
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for _ in range(50):
            text = (await http.get("/metrics")).text
            seen = {
                key: total(text, key[0], task_queue=queue, **style, **dict(key[1]))
                for key in expected
            }
            if seen == expected:
                break
            await asyncio.sleep(0.1)
    assert seen == expected, text
    # The saga's metrics carry the workflow's labels; the SDK's own are prefixed temporal_.
    labels, _ = samples(text, "order_saga_started_total")[0]
    assert labels["workflow_type"] == "OrderProcessWorkflow"
    assert labels["namespace"] == time_skipping_env.client.namespace
    assert "temporal_workflow_completed_total" in text or "temporal_request_total" in text
