"""The real stack for end-to-end tests: Temporal dev server, nats-server with JetStream, the
database, the workers of both saga styles, and the API over HTTP, once per style (the
orchestrated one once per activity routing)."""

import asyncio
import base64
import dataclasses
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from api.auth.callers import API_KEY_HEADER
from api.auth.tokens import issue_customer_token
from choreography.metrics import SagaCounters
from choreography.outbox import Publisher
from choreography.runtime import Choreography, connect_broker
from domain import names
from domain.events import Event, EventType, Service
from domain.names import SEARCH_ATTRIBUTES
from domain.payloads import ServiceQueues
from domain.status import ActivityRouting, SagaStyle
from sagas.temporal import data_converter
from settings import Settings
from store.db import make_engine, session
from store.models import DeadLetterRow
from telemetry import metrics_runtime
from tests.conftest import database_url, reset_schema, temporal_binary
from tests.nats_server import NatsServer
from tests.saga_harness import activity_name
from tools.chaos.checks import steps_scheduled
from tools.chaos.stack import free_port
from worker import build_workers, every_step, service_activities, workflow_runner
from workflows import OrderProcessWorkflow

# uvicorn closes an idle keep-alive connection after 5 s, and httpx keeps one for 5 s too: a
# request sent on a connection at the moment the server closes it fails with ReadError. The
# client lets its idle connections go first.
LIMITS = httpx.Limits(keepalive_expiry=2)

# The routing a shop gets without choosing (settings.py): the stack's own API's, whatever the
# shell says.
DEFAULT_ROUTING = ActivityRouting(Settings.model_fields["activity_routing"].default)


@dataclass
class Stack:
    """Handles on every running part. ``http`` and ``settings`` are the API placing new
    orders in ``style`` (orchestrated ones routed by ``routing``, None for choreography);
    ``apis`` holds one API per style, ``routed_apis`` one orchestrated API per routing (same
    Temporal, broker, database, workers)."""

    http: httpx.AsyncClient
    client: Client
    engine: Engine
    settings: Settings
    nats: NatsServer
    apis: dict[SagaStyle, httpx.AsyncClient]
    routed_apis: dict[ActivityRouting, httpx.AsyncClient]
    # The process's Prometheus /metrics: the workflows', the choreography's and the APIs'.
    metrics: httpx.AsyncClient
    style: SagaStyle = SagaStyle.ORCHESTRATION
    routing: ActivityRouting | None = DEFAULT_ROUTING

    def in_style(self, style: SagaStyle, routing: ActivityRouting | None = None) -> "Stack":
        """The same stack, placing new orders in ``style``; orchestrated ones routed by
        ``routing`` (None: the default routing). A choreographed saga has no routing."""
        if style == SagaStyle.CHOREOGRAPHY:
            if routing is not None:
                raise ValueError("a choreographed saga has no activity routing")
            http = self.apis[style]
            update: dict[str, object] = {"saga_style": style}
        else:
            routing = routing or DEFAULT_ROUTING
            http = self.routed_apis[routing]
            update = {"saga_style": style, "activity_routing": routing}
        return dataclasses.replace(
            self,
            http=http,
            settings=self.settings.model_copy(update=update),
            style=style,
            routing=routing,
        )


# What the shared scenarios run in: each saga style, the orchestrated one in each routing.
VARIANTS: list[tuple[SagaStyle, ActivityRouting | None]] = [
    (SagaStyle.ORCHESTRATION, ActivityRouting.WORKFLOW),
    (SagaStyle.ORCHESTRATION, ActivityRouting.SERVICE),
    (SagaStyle.CHOREOGRAPHY, None),
]


# The stack's payload key (PAYLOAD_KEYS): every client and worker encrypts as in production.
PAYLOAD_KEYS = [SecretStr("e2e:" + base64.b64encode(b"e2e payload key, not a secret!!!").decode())]


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    metrics_address = f"127.0.0.1:{free_port()}"
    runtime = metrics_runtime(metrics_address)
    assert runtime is not None
    env = await WorkflowEnvironment.start_local(
        runtime=runtime,  # the workers' client: the workflow's metrics
        data_converter=data_converter(Settings(payload_keys=PAYLOAD_KEYS)),
        port=free_port(),  # not the SDK's pick: see tools.chaos.stack.free_port
        dev_server_existing_path=temporal_binary("temporal"),
        search_attributes=list(SEARCH_ATTRIBUTES),
        # A closed workflow is deleted once the queues' ack levels pass its close, which they
        # report every 30 s by default: every 1 s here, so a deletion (what retention does)
        # takes seconds in tests/e2e/test_idempotency.py.
        dev_server_extra_args=[
            "--dynamic-config-value",
            'history.visibilityProcessorUpdateAckInterval="1s"',
            "--dynamic-config-value",
            'history.transferProcessorUpdateAckInterval="1s"',
        ],
    )
    nats = NatsServer(tmp_path_factory.mktemp("nats"))
    nats.start()
    settings = Settings(
        database_url=database_url(tmp_path_factory.mktemp("e2e")),
        nats_url=nats.url,
        temporal_address=env.client.service_client.config.target_host,
        temporal_ui_url="http://localhost:8233",
        # Short windows so the no-dealer path ends in seconds on a real server.
        dealer_assignment_window_seconds=1.5,
        dealer_retry_initial_seconds=0.5,
        order_create_wait_seconds=10,
        # A poison event is dead-lettered after 3 deliveries (0.5 s, then 1 s apart).
        event_max_deliveries=3,
        # The open API of most tests; tests/e2e/test_auth.py runs a secured one beside it.
        auth_mode="dev",
        activity_routing=DEFAULT_ROUTING,
        metrics_bind_address=metrics_address,
        payload_keys=PAYLOAD_KEYS,
    )
    engine = make_engine(settings.database_url_value)
    reset_schema(engine)
    async with AsyncExitStack() as stack:
        stack.callback(nats.stop)
        stack.push_async_callback(env.shutdown)
        executor = stack.enter_context(ThreadPoolExecutor(16))
        for worker in build_workers(env.client, engine, executor):
            await stack.enter_async_context(worker)
        counters = SagaCounters(runtime.metric_meter)
        choreography = Choreography(engine, settings, connect_broker(settings), counters)
        await choreography.start()
        stack.push_async_callback(choreography.stop)
        apis = {
            style: await stack.enter_async_context(
                serve(create_app(settings.model_copy(update={"saga_style": style})))
            )
            for style in SagaStyle
        }
        # The other routings' orchestrated APIs, served by the same workers: the saga's
        # worker serves every step too.
        routed_apis = {DEFAULT_ROUTING: apis[SagaStyle.ORCHESTRATION]}
        for routing in ActivityRouting:
            if routing not in routed_apis:
                routed_apis[routing] = await stack.enter_async_context(
                    serve(
                        create_app(
                            settings.model_copy(
                                update={
                                    "saga_style": SagaStyle.ORCHESTRATION,
                                    "activity_routing": routing,
                                }
                            )
                        )
                    )
                )
        metrics = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://{metrics_address}", timeout=30)
        )
        yield Stack(
            http=apis[SagaStyle.ORCHESTRATION],
            client=env.client,
            engine=engine,
            settings=settings,
            nats=nats,
            apis=apis,
            routed_apis=routed_apis,
            metrics=metrics,
        )
    engine.dispose()


async def poison_event(stack: Stack, within: float = 20) -> DeadLetterRow:
    """Publish an event no consumer can apply (``order_created`` of an order that does not
    exist) and wait until PaymentService's consumer has dead-lettered it: the dead letter."""
    event = Event(order_id=str(uuid.uuid4()), type=EventType.ORDER_CREATED, source=Service.ORDERS)
    broker = connect_broker(stack.settings)
    await broker.start()
    try:
        await Publisher(stack.engine, broker).publish([event])
    finally:
        await broker.stop()
    deadline = asyncio.get_running_loop().time() + within
    while True:
        with session(stack.engine) as db:
            row = db.exec(select(DeadLetterRow).where(DeadLetterRow.event_id == event.event_id))
            found = row.first()
        if found is not None:
            return found
        assert asyncio.get_running_loop().time() < deadline, "the poison event never died"
        await asyncio.sleep(0.1)


async def scheduled_steps(client: Client, order_id: str) -> list[tuple[str, str]]:
    """Each step the order's saga has scheduled so far, in order: its name and task queue."""
    history = await client.get_workflow_handle(names.workflow_id_for(order_id)).fetch_history()
    return steps_scheduled(history)


async def assert_routed(stack: Stack, order_id: str) -> None:
    """The order's saga (placed through ``stack``) has scheduled steps, each on the queue
    ``stack.routing`` says: the saga's own (workflow), or its service's (service). Nothing for
    a choreographed order."""
    if stack.routing is None:
        return
    queues = ServiceQueues.routed(stack.routing, stack.settings.workflow_task_queue)
    queue_of_service = {
        names.ORDERS_TASK_QUEUE: queues.orders,
        names.PAYMENTS_TASK_QUEUE: queues.payments,
        names.DELIVERIES_TASK_QUEUE: queues.deliveries,
    }
    expected = {
        activity_name(fn): queue_of_service[service]
        for service, fns in service_activities(stack.engine).items()
        for fn in fns
    }
    scheduled = await scheduled_steps(stack.client, order_id)
    assert scheduled, f"the saga of {order_id} has scheduled no step"
    routed = [(step, expected[step]) for step, _ in scheduled]
    assert scheduled == routed, f"routing {stack.routing}: {scheduled}"


@pytest.fixture(
    params=VARIANTS,
    ids=lambda variant: "-".join(str(part) for part in variant if part is not None),
)
def styled(request: pytest.FixtureRequest, stack: Stack) -> Stack:
    """The stack, once per saga style, the orchestrated one once per activity routing: a
    shared scenario runs against each."""
    style, routing = request.param
    return stack.in_style(style, routing)


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app`` under uvicorn on a free port; an HTTP client for it, with no credentials."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=LIMITS
        ) as http:
            yield http
    finally:
        server.should_exit = True
        await serving


@asynccontextmanager
async def saga_worker(stack: Stack, task_queue: str) -> AsyncIterator[Worker]:
    """The saga's worker on a task queue of the test's own, for as long as the context lasts:
    sagas started there (an API with ``workflow_task_queue=task_queue``) do nothing until it
    runs. It serves their steps too when they are routed to its queue (as the saga's worker
    does); otherwise they run on the stack's service workers. A saga it had cached goes back
    to the queue within a second of its stop (the sticky queue's timeout), so another worker
    on the queue carries on at once."""
    with ThreadPoolExecutor(16, thread_name_prefix="saga-worker") as executor:
        async with Worker(
            stack.client,
            task_queue=task_queue,
            workflows=[OrderProcessWorkflow],
            workflow_runner=workflow_runner(),
            activities=every_step(stack.engine),
            activity_executor=executor,
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=1),
        ) as worker:
            yield worker


OPERATOR_KEY = "e2e-operator-key-0123456789"
OLD_OPERATOR_KEY = "e2e-operator-key-being-rotated-out"
CUSTOMER_TOKEN_SECRET = "e2e-customer-token-secret-0123456789abcdef"
OLD_CUSTOMER_TOKEN_SECRET = "e2e-customer-token-secret-being-rotated-out"
ORDER_ID_SECRET = "e2e-order-id-secret-0123456789abcdef0123"
TOKEN_TTL = timedelta(minutes=10)


@dataclass
class SecuredApi:
    """A second API with auth required (operator keys and customer tokens), over the stack's
    Temporal and database."""

    http: httpx.AsyncClient
    settings: Settings

    @staticmethod
    def operator(value: str = OPERATOR_KEY) -> dict[str, str]:
        """Headers of an operator's call."""
        return {API_KEY_HEADER: value}

    @staticmethod
    def customer(
        customer_id: str,
        *,
        secret: str = CUSTOMER_TOKEN_SECRET,
        ttl: timedelta = TOKEN_TTL,
        now: datetime | None = None,
    ) -> dict[str, str]:
        """Headers of a customer's own call: their bearer token."""
        token = issue_customer_token(secret, customer_id, ttl, now=now)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
async def secured(stack: Stack) -> AsyncIterator[SecuredApi]:
    settings = stack.settings.model_copy(
        update={
            "auth_mode": "required",
            "operator_api_keys": [SecretStr(OPERATOR_KEY), SecretStr(OLD_OPERATOR_KEY)],
            "customer_token_secrets": [
                SecretStr(CUSTOMER_TOKEN_SECRET),
                SecretStr(OLD_CUSTOMER_TOKEN_SECRET),
            ],
            "order_id_secret": SecretStr(ORDER_ID_SECRET),
        }
    )
    async with serve(create_app(settings)) as http:
        yield SecuredApi(http=http, settings=settings)
