"""Tracing on (telemetry.py): one trace from the HTTP request to the saga's activities.

The API (create_app with a tracer provider) starts sagas on a task queue of this test's
own, polled by a workflow worker whose client carries the tracing interceptor; the
activities run on the stack's workers, so the trace shows their StartActivity spans.
"""

import logging
import uuid

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.worker import Worker

from api.app import create_app
from domain import names
from domain.status import ActivityRouting
from sagas.temporal import data_converter
from telemetry import tracing_interceptors
from tests.e2e.conftest import Stack
from tests.e2e.test_api_saga import ORDER, eventually
from worker import workflow_runner
from workflows import OrderProcessWorkflow


async def test_one_trace_runs_from_the_http_request_into_the_saga(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    queue = f"order-process-traced-{uuid.uuid4()}"
    # The steps run on the stack's service workers: the trace must cross into them.
    settings = stack.settings.model_copy(
        update={"workflow_task_queue": queue, "activity_routing": ActivityRouting.SERVICE}
    )
    app = create_app(settings, tracer_provider=provider)
    client = await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        interceptors=tracing_interceptors(provider),
    )
    worker = Worker(
        client,
        task_queue=queue,
        workflows=[OrderProcessWorkflow],
        workflow_runner=workflow_runner(),
    )
    async with (
        worker,
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=30
        ) as http,
    ):
        with caplog.at_level(logging.INFO, logger="sagas"):
            response = await http.post("/orders", json=ORDER)
        assert response.status_code == 202, response.text
        body = response.json()
        # Let the saga end (compensated) rather than leave it waiting for payment; its steps
        # have run (and their spans ended) once it is cancelled.
        cancel = await http.post(f"/payments/{body['payment_id']}/cancel")
        assert cancel.status_code == 202, cancel.text
        await eventually(stack, body["order_id"], lambda o: o["phase"] == "CANCELLED")

    order_id, workflow_id = body["order_id"], names.workflow_id_for(body["order_id"])
    started = [r for r in caplog.records if r.getMessage().startswith("saga started")]
    assert len(started) == 1
    assert order_id in started[0].getMessage()
    assert workflow_id in started[0].getMessage()
    assert started[0].__dict__["workflow_id"] == workflow_id

    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.name == "POST /orders"]
    trace_id = server.context.trace_id
    in_trace = {s.name for s in spans if s.context.trace_id == trace_id}
    expected = {
        "StartWorkflow:OrderProcessWorkflow",
        "RunWorkflow:OrderProcessWorkflow",
        f"StartActivity:{names.CREATE_ORDER}",
        f"StartActivity:{names.CREATE_PAYMENT}",
    }
    assert expected <= in_trace, sorted(in_trace)
    start = next(s for s in spans if s.name == "StartWorkflow:OrderProcessWorkflow")
    assert start.parent is not None
    assert start.parent.span_id == server.context.span_id
