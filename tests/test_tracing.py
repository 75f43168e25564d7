"""OpenTelemetry tracing of the saga (telemetry.py): one trace per order, in both styles.

Orchestrated: the caller's span through StartWorkflow, RunWorkflow and every
StartActivity/RunActivity, each signal handled in it. Choreographed: the outbox row keeps the
trace context it was written in, its message carries it, each consumer continues it.
"""

import asyncio
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack

import httpx
from fastapi import FastAPI
from faststream.nats import NatsBroker
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from api.app import create_app
from choreography.handlers import CONSUMERS
from choreography.outbox import Publisher
from choreography.runtime import Choreography, connect_broker
from domain import names
from domain.events import EventType, Service
from domain.payloads import DeliveredReport
from domain.status import ActivityRouting, Decision, DeliveryStatus, OrderStatus, SagaPhase
from sagas.temporal import data_converter
from settings import Settings
from telemetry import (
    ORDER_ID_ATTRIBUTE,
    configure_tracing,
    tracer,
    tracing_interceptors,
)
from tests.choreography.observe import (
    choreographed_door,
    choreography_settings,
    eventually,
    outbox,
    payment_of,
)
from tests.e2e.test_api_saga import ORDER
from tests.nats_server import NatsServer
from tests.saga_harness import (
    DELIVERED_STEPS,
    add_dealer,
    confirm_payment,
    db_statuses,
    order_request,
    saga_workers,
    start_saga,
    wait_for_phase,
)
from worker import build_workers, workflow_worker
from workflows import OrderProcessWorkflow as Saga

# No server listens here: a broker never started there fails every publish.
UNUSED_NATS_URL = "nats://127.0.0.1:4222"


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


# --- Through the API, both styles: one trace per order, from POST to DELIVERED ------------


async def until_phase(http: httpx.AsyncClient, order_id: str, phase: str, within: float = 60):
    """GET /orders/{id} until the order is in ``phase`` (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + within
    while True:
        response = await http.get(f"/orders/{order_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["phase"] == phase:
            return body
        assert time.monotonic() < deadline, f"order never reached {phase}: {body}"
        await asyncio.sleep(0.1)


async def place_confirm_deliver(http: httpx.AsyncClient, engine) -> tuple[str, str]:
    """One order through the API: placed, confirmed, delivered. Its order and payment ids."""
    add_dealer(engine)
    placed = await http.post("/orders", json=ORDER)
    assert placed.status_code == 202, placed.text
    order_id, payment_id = placed.json()["order_id"], placed.json()["payment_id"]
    await until_phase(http, order_id, "AWAITING_PAYMENT")
    confirmed = await http.post(f"/payments/{payment_id}/confirm")
    assert confirmed.status_code == 202, confirmed.text
    await until_phase(http, order_id, "IN_TRANSIT")
    delivered = await http.post(f"/deliveries/{names.delivery_id_for(order_id)}/delivered")
    assert delivered.status_code == 202, delivered.text
    await until_phase(http, order_id, "DELIVERED")
    return order_id, payment_id


def api_app(settings: Settings, provider: TracerProvider) -> tuple[FastAPI, httpx.AsyncClient]:
    app = create_app(settings, tracer_provider=provider)
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=30
    )
    return app, http


def server_span(spans: Sequence[ReadableSpan], method: str, path_end: str) -> ReadableSpan:
    """The API's one server span of the request ``method`` to a path ending in ``path_end``."""
    (found,) = [
        s
        for s in spans
        if s.kind == SpanKind.SERVER
        and s.name.startswith(f"{method} ")
        and str((s.attributes or {}).get("http.target", s.name)).endswith(path_end)
    ]
    return found


def linked_to(span: ReadableSpan, request: ReadableSpan) -> bool:
    """Whether ``span`` links to the trace of ``request`` (its span, or one of its own)."""
    return any(link.context.trace_id == request.context.trace_id for link in span.links)


async def test_an_orchestrated_order_is_one_trace_from_post_to_delivered(
    time_skipping_env, engine, executor, task_queue_suffix
):
    provider, exporter = in_memory_provider()
    env_client = time_skipping_env.client
    queue = names.WORKFLOW_TASK_QUEUE + task_queue_suffix
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        temporal_address=env_client.service_client.config.target_host,
        temporal_namespace=env_client.namespace,
        workflow_task_queue=queue,
        activity_routing=ActivityRouting.SERVICE,
        auth_mode="dev",
    )
    client = await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),  # the API's: its payloads are encrypted
        interceptors=tracing_interceptors(provider),
    )
    # The API starts sagas on the test's own workflow queue; their steps go to the service
    # queues, polled here by workers whose client traces too.
    service_queues = [q for q in names.ALL_TASK_QUEUES if q != names.WORKFLOW_TASK_QUEUE]
    app, http = api_app(settings, provider)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(workflow_worker(client, queue))
        for service in build_workers(client, engine, executor, service_queues):
            await stack.enter_async_context(service)
        await stack.enter_async_context(app.router.lifespan_context(app))
        await stack.enter_async_context(http)
        order_id, payment_id = await place_confirm_deliver(http, engine)

    spans = exporter.get_finished_spans()
    post = server_span(spans, "POST", "/orders")
    trace_id = post.context.trace_id
    in_trace = {s.name for s in spans if s.context.trace_id == trace_id}
    expected = {"StartWorkflow:OrderProcessWorkflow", "RunWorkflow:OrderProcessWorkflow"}
    for step in DELIVERED_STEPS:
        expected |= {f"StartActivity:{step}", f"RunActivity:{step}"}
    assert expected <= in_trace, sorted(in_trace)
    # Each signal is handled in the order's trace, linked to the request that sent it.
    confirm = server_span(spans, "POST", f"/payments/{payment_id}/confirm")
    report = server_span(spans, "POST", f"/deliveries/{names.delivery_id_for(order_id)}/delivered")
    handled = [s for s in spans if s.name.startswith("HandleSignal:")]
    assert all(s.context.trace_id == trace_id for s in handled)
    for request in (confirm, report):
        assert request.context.trace_id != trace_id  # a request of its own...
        assert any(linked_to(s, request) for s in handled), request.name  # ...linked in


async def test_a_choreographed_order_is_one_trace_from_post_to_delivered(engine, tmp_path):
    provider, exporter = in_memory_provider()
    nats_server = NatsServer(tmp_path / "nats")
    nats_server.start()
    settings = choreography_settings(engine, nats_server.url)
    choreography = Choreography(engine, settings, connect_broker(settings), tracer=tracer(provider))
    app, http = api_app(settings, provider)
    try:
        await choreography.start()
        async with app.router.lifespan_context(app), http:
            order_id, payment_id = await place_confirm_deliver(http, engine)
    finally:
        await choreography.stop()
        nats_server.stop()

    rows = outbox(engine, order_id)
    consumed = {CONSUMERS[key] for key in CONSUMERS if key[1] in {r.type for r in rows}}
    assert consumed >= {
        CONSUMERS[Service.PAYMENTS, EventType.ORDER_CREATED],
        CONSUMERS[Service.ORDERS, EventType.PAYMENT_CONFIRMED],
        CONSUMERS[Service.DELIVERIES, EventType.ORDER_CONFIRMED],
        CONSUMERS[Service.ORDERS, EventType.DELIVERY_COMPLETED],
    }
    post = server_span(exporter.get_finished_spans(), "POST", "/orders")
    trace_id = post.context.trace_id

    def handled() -> set[str] | None:
        names_ = {
            s.name.removeprefix("HandleEvent:")
            for s in exporter.get_finished_spans()
            if s.kind == SpanKind.CONSUMER
            and (s.attributes or {}).get(ORDER_ID_ATTRIBUTE) == order_id
        }
        return names_ if names_ >= consumed else None

    await eventually(handled, what="every consumer's span of the order")
    spans = exporter.get_finished_spans()
    of_order = [s for s in spans if (s.attributes or {}).get(ORDER_ID_ATTRIBUTE) == order_id]
    assert {s.context.trace_id for s in of_order} == {trace_id}
    # Every event of the order was written in that trace, and its consumer continued it.
    assert all(r.traceparent and f"{trace_id:032x}" in r.traceparent for r in rows)
    in_trace = {s.context.span_id for s in spans if s.context.trace_id == trace_id}
    consumers = [s for s in of_order if s.kind == SpanKind.CONSUMER]
    assert all(s.parent is not None and s.parent.span_id in in_trace for s in consumers)
    # The confirm and the report are requests of their own, linked into the order's trace.
    (decided,) = [s for s in of_order if s.name == "DecidePayment"]
    (reported,) = [s for s in of_order if s.name == "ReportDelivered"]
    assert linked_to(decided, server_span(spans, "POST", f"/payments/{payment_id}/confirm"))
    delivery_id = names.delivery_id_for(order_id)
    assert linked_to(reported, server_span(spans, "POST", f"/deliveries/{delivery_id}/delivered"))


async def test_untraced_events_keep_no_trace_context_and_still_flow(engine, tmp_path):
    """Tracing off: rows are written with no traceparent and publish as ever (also those a
    traced producer left: a consumer without tracing ignores the header)."""
    nats_server = NatsServer(tmp_path / "nats")
    nats_server.start()
    settings = choreography_settings(engine, nats_server.url)
    choreography = Choreography(engine, settings, connect_broker(settings))
    try:
        await choreography.start()
        door = choreographed_door(engine, settings, choreography.publisher)
        add_dealer(engine)
        placed = await door.place(order_request(), None, wait=10)
        order_id = placed.order_id
        await door.decide_payment(placed.payment_id, Decision.CONFIRM)
        await eventually(
            lambda: db_statuses(engine, order_id)["delivery"] == DeliveryStatus.IN_TRANSIT,
            what="the delivery under way",
        )
        await door.report_delivered(names.delivery_id_for(order_id))
        await eventually(
            lambda: db_statuses(engine, order_id)["order"] == OrderStatus.DELIVERED,
            what="the order delivered",
        )
    finally:
        await choreography.stop()
        nats_server.stop()
    rows = outbox(engine, order_id)
    assert rows
    assert all(r.traceparent is None for r in rows)


async def test_the_relay_sends_a_rows_trace_context_to_its_consumer(engine, tmp_path):
    """A row left for the relay (its producer could not publish it) is published with the
    trace context it was written in, and its consumer's span continues that trace."""
    provider, exporter = in_memory_provider()
    nats_server = NatsServer(tmp_path / "nats")
    nats_server.start()
    settings = choreography_settings(engine, nats_server.url)
    choreography = Choreography(engine, settings, connect_broker(settings), tracer=tracer(provider))
    # A producer whose broker is down: its rows are left to the choreography's relay.
    down = Publisher(engine, NatsBroker(UNUSED_NATS_URL), tracer=tracer(provider))
    try:
        await choreography.start()
        with provider.get_tracer("test").start_as_current_span("a producer") as writer:
            placed = await choreographed_door(engine, settings, down).place(
                order_request(), None, wait=0
            )
        order_id = placed.order_id
        await eventually(lambda: payment_of(engine, order_id), what="the payment", within=30)
    finally:
        await choreography.stop()
        nats_server.stop()
    (consumed,) = [
        s
        for s in exporter.get_finished_spans()
        if s.name == f"HandleEvent:{CONSUMERS[Service.PAYMENTS, EventType.ORDER_CREATED]}"
    ]
    assert consumed.parent is not None
    assert consumed.parent.span_id == writer.get_span_context().span_id
    assert consumed.context.trace_id == writer.get_span_context().trace_id


async def test_a_closed_payment_window_continues_the_orders_trace(engine, tmp_path):
    """The sweeper fires the window in the order's trace: its event and the cancellation it
    brings are part of the order's trace too."""
    provider, exporter = in_memory_provider()
    nats_server = NatsServer(tmp_path / "nats")
    nats_server.start()
    settings = choreography_settings(engine, nats_server.url, payment_window_seconds=1)
    choreography = Choreography(engine, settings, connect_broker(settings), tracer=tracer(provider))
    expired = f"HandleEvent:{CONSUMERS[Service.ORDERS, EventType.PAYMENT_EXPIRED]}"

    def spans_named(name: str) -> list[ReadableSpan]:
        return [s for s in exporter.get_finished_spans() if s.name == name]

    try:
        await choreography.start()
        door = choreographed_door(engine, settings, choreography.publisher)
        with provider.get_tracer("test").start_as_current_span("POST /orders") as root:
            placed = await door.place(order_request(), None, wait=10)
        await eventually(lambda: spans_named(expired), what="the expiry handled", within=30)
    finally:
        await choreography.stop()
        nats_server.stop()
    assert db_statuses(engine, placed.order_id)["order"] == OrderStatus.CANCELLED
    swept = spans_named("Sweep:close_window")
    (handled,) = spans_named(expired)
    trace_id = root.get_span_context().trace_id
    assert {s.context.trace_id for s in [*swept, handled]} == {trace_id}
    assert handled.parent is not None
    assert handled.parent.span_id in {s.context.span_id for s in swept}
