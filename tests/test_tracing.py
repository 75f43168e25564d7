"""OpenTelemetry tracing of the saga (telemetry.py): one trace from the caller's span
through StartWorkflow, RunWorkflow and every StartActivity/RunActivity."""

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from domain.payloads import DeliveredReport
from domain.status import SagaPhase
from settings import Settings
from telemetry import configure_tracing, tracing_interceptors
from tests.saga_harness import (
    DELIVERED_STEPS,
    add_dealer,
    confirm_payment,
    saga_workers,
    start_saga,
    wait_for_phase,
)
from workflows import OrderProcessWorkflow as Saga


def in_memory_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_tracing_is_off_by_default():
    settings = Settings()
    assert settings.otel_exporter is None
    assert configure_tracing(settings, "test") is None
    assert tracing_interceptors(None) == []


async def test_one_trace_runs_from_the_caller_through_every_activity(
    time_skipping_env, engine, executor, task_queue_suffix
):
    provider, exporter = in_memory_provider()
    client = await Client.connect(
        time_skipping_env.client.service_client.config.target_host,
        namespace=time_skipping_env.client.namespace,
        data_converter=pydantic_data_converter,
        interceptors=tracing_interceptors(provider),
    )
    add_dealer(engine)
    async with saga_workers(client, engine, executor, task_queue_suffix):
        with provider.get_tracer("test").start_as_current_span("POST /orders") as root:
            handle = await start_saga(client, engine, task_queue_suffix)
        await confirm_payment(handle)
        state = await wait_for_phase(handle, SagaPhase.IN_TRANSIT)
        assert state.delivery_id is not None
        await handle.signal(Saga.mark_delivered, DeliveredReport(delivery_id=state.delivery_id))
        assert (await handle.result()).phase == SagaPhase.DELIVERED

    trace_id = root.get_span_context().trace_id
    in_trace = {s.name for s in exporter.get_finished_spans() if s.context.trace_id == trace_id}
    expected = {"StartWorkflow:OrderProcessWorkflow", "RunWorkflow:OrderProcessWorkflow"}
    for step in DELIVERED_STEPS:
        expected |= {f"StartActivity:{step}", f"RunActivity:{step}"}
    assert expected <= in_trace, sorted(in_trace)
