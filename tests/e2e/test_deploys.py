"""The deploy drill: a rainbow deploy of an incompatible saga, and its rollback, on the real
Temporal dev server, through the HTTP API.

Build A (this code) runs as the Worker Deployment Version ``drill.A``, every task queue of it:
the saga's workflow and the services' activities. Sagas are left at each place a saga waits
(the customer's decision, a free dealer, the dealer's report). Build B, whose saga has one
more step (``RecheckingSaga``: an incompatible change), starts beside it and is made current.
Then:

- new orders run on B, with its extra step;
- A's sagas go on through the API (a confirm, a dealer freed, a report) and finish on A, with
  no workflow task failed and their histories replaying on A's code at every task;
- A is reported drained once its last saga closed, and its workers stop;
- B turns out broken: A is started again and made current; new orders go back to A, while
  B's saga, pinned to B, finishes on B.

A Temporal dev server of its own (the deployment's routing is the server's, and the drill must
not route the other tests' tasks), the shared database, an API pointed at that server.
"""

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkerDeploymentVersion
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from domain import names
from domain.names import SEARCH_ATTRIBUTES
from sagas.builds import builds, open_sagas
from tests.conftest import temporal_binary
from tests.e2e.conftest import Stack, serve
from tests.e2e.test_api_saga import add_dealer
from tests.saga_harness import set_dealer_load
from tests.workflows.altered_saga import RecheckingSaga
from tools.chaos.stack import free_port
from worker import (
    build_workers,
    every_step,
    promote,
    replay_failures_at_every_task,
    workflow_worker,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "drill"
A = WorkerDeploymentVersion(DEPLOYMENT, "A")
B = WorkerDeploymentVersion(DEPLOYMENT, "B")
T = TypeVar("T")


@dataclass
class Drill:
    client: Client
    http: httpx.AsyncClient
    stack: Stack
    executor: ThreadPoolExecutor

    @asynccontextmanager
    async def build(self, version: WorkerDeploymentVersion) -> AsyncIterator[None]:
        """The workers of a build, every task queue: A runs this code; B runs the saga with
        its extra step (the services' activities are this code's in both)."""
        queues: tuple[str, ...] = names.ALL_TASK_QUEUES
        if version == B:  # B's saga is RecheckingSaga; its services are this code's
            queues = tuple(q for q in queues if q != names.WORKFLOW_TASK_QUEUE)
        workers = build_workers(
            self.client, self.stack.engine, self.executor, queues, version=version
        )
        if version == B:  # serving the steps too: its sagas are routed with the workflow
            workers.append(
                workflow_worker(
                    self.client,
                    names.WORKFLOW_TASK_QUEUE,
                    activities=every_step(self.stack.engine),
                    executor=self.executor,
                    version=version,
                    workflow=RecheckingSaga,
                )
            )
        async with AsyncExitStack() as stack:
            for worker in workers:
                await stack.enter_async_context(worker)
            yield

    async def place(self, city: str) -> dict[str, Any]:
        body = {
            "customer_id": f"drill-{uuid.uuid4().hex[:8]}",
            "items": [{"product_id": "book", "quantity": 1, "unit_price": "9.99"}],
            "province": "Tehran",
            "city": city,
        }
        response = await self.http.post("/orders", json=body, headers={"Prefer": "wait=10"})
        assert response.status_code == 201, response.text
        placed: dict[str, Any] = response.json()
        return placed

    async def confirm(self, order: dict[str, Any]) -> None:
        response = await self.http.post(f"/payments/{order['payment']['payment_id']}/confirm")
        assert response.status_code == 202, response.text

    async def deliver(self, order_id: str) -> None:
        moving = await self.phase(order_id, "IN_TRANSIT")
        delivery = moving["delivery"]["delivery_id"]
        response = await self.http.post(f"/deliveries/{delivery}/delivered")
        assert response.status_code == 202, response.text
        await self.phase(order_id, "DELIVERED")

    async def phase(self, order_id: str, phase: str, within: float = 30) -> dict[str, Any]:
        async def seen() -> dict[str, Any] | None:
            body: dict[str, Any] = (await self.http.get(f"/orders/{order_id}")).json()
            return body if body["phase"] == phase else None

        return await until(seen, f"order {order_id} in {phase}", within)

    def handle(self, order_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(names.workflow_id_for(order_id))

    async def pinned_build(self, order_id: str) -> str:
        info = (await self.handle(order_id).describe()).raw_description.workflow_execution_info
        return str(info.versioning_info.deployment_version.build_id)

    async def finished_on(self, order_id: str, build: str) -> list[str]:
        """The order's saga, finished on ``build``: its steps (no workflow task failed, its
        history replays at every task on this code when ``build`` is A)."""
        handle = self.handle(order_id)
        await asyncio.wait_for(handle.result(), 30)
        assert await self.pinned_build(order_id) == build
        history = await handle.fetch_history()
        failed = [
            e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]
        assert failed == [], failed
        if build == A.build_id:
            converter = self.client.data_converter
            assert await replay_failures_at_every_task(history, converter) == []
        return [
            e.activity_task_scheduled_event_attributes.activity_type.name
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]

    async def cli_builds(self) -> list[str]:
        """What ``ordersaga builds`` prints for the drill's deployment (its table's lines)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "cli.py",
            "builds",
            cwd=ROOT,
            env={
                **os.environ,
                "TEMPORAL_ADDRESS": self.client.service_client.config.target_host,
                "WORKER_DEPLOYMENT_NAME": DEPLOYMENT,
                "AUTH_MODE": "dev",
            },
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        assert process.returncode == 0, out
        lines = out.decode().splitlines()
        assert lines[0] == f"deployment {DEPLOYMENT}:", lines
        return lines[1:]

    async def status(self, build: str) -> str:
        return next(b.status for b in await builds(self.client, DEPLOYMENT) if b.build_id == build)


async def until(probe: Callable[[], Awaitable[T | None]], what: str, within: float = 30) -> T:
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found is not None and found is not False:
            return found
        assert time.monotonic() < deadline, f"never happened within {within} s: {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def drill(stack: Stack) -> AsyncIterator[Drill]:
    env = await WorkflowEnvironment.start_local(
        data_converter=stack.client.data_converter,
        port=free_port(),
        dev_server_existing_path=temporal_binary("temporal"),
        search_attributes=list(SEARCH_ATTRIBUTES),
        # A build is reported drained a second after its last saga closed, not minutes.
        dev_server_extra_args=[
            "--dynamic-config-value",
            'matching.wv.VersionDrainageStatusRefreshInterval="1s"',
            "--dynamic-config-value",
            'matching.wv.VersionDrainageStatusVisibilityGracePeriod="1s"',
        ],
    )
    settings = stack.settings.model_copy(
        update={
            "temporal_address": env.client.service_client.config.target_host,
            "dealer_assignment_window_seconds": 120,  # a saga waits for a dealer meanwhile
        }
    )
    try:
        with ThreadPoolExecutor(16, thread_name_prefix="drill") as executor:
            async with serve(create_app(settings)) as http:
                yield Drill(env.client, http, stack, executor)
    finally:
        await env.shutdown()


async def test_a_rainbow_deploy_keeps_each_saga_on_its_build_and_rolls_back(
    drill: Drill,
) -> None:
    free_city, busy_city = f"Drill {uuid.uuid4().hex[:6]}", f"Busy {uuid.uuid4().hex[:6]}"
    await add_dealer(drill, free_city, capacity=10)
    busy_dealer = (await add_dealer(drill, busy_city))["id"]
    set_dealer_load(drill.stack.engine, busy_dealer, 1)  # full: a saga waits for it

    builds_running = AsyncExitStack()
    a_workers = AsyncExitStack()  # build A's first workers, retired half-way
    async with a_workers, builds_running:
        await a_workers.enter_async_context(drill.build(A))
        assert await promote(drill.client, A, "always")

        # Build A's sagas, at each place a saga waits.
        deciding = await drill.place(free_city)
        seeking = await drill.place(busy_city)
        await drill.confirm(seeking)
        await drill.phase(seeking["order_id"], "ASSIGNING_DEALER")
        in_transit = await drill.place(free_city)
        await drill.confirm(in_transit)
        await drill.phase(in_transit["order_id"], "IN_TRANSIT")
        on_a = [deciding["order_id"], seeking["order_id"], in_transit["order_id"]]
        assert [await drill.pinned_build(o) for o in on_a] == ["A"] * 3

        # Build B, incompatible, beside A, made current: new orders run on B.
        await builds_running.enter_async_context(drill.build(B))
        assert await promote(drill.client, B, "always")
        assert (await drill.status("B"), await drill.status("A")) == ("current", "draining")
        shown = await drill.cli_builds()
        assert [line.split()[:3] for line in shown[2:]] == [
            ["B", "current", "0"],
            ["A", "draining", "3"],
        ]
        on_b = await drill.place(free_city)
        await drill.confirm(on_b)
        await drill.phase(on_b["order_id"], "IN_TRANSIT")
        assert await drill.pinned_build(on_b["order_id"]) == "B"

        # A's sagas go on through the API and finish on A, with no non-determinism.
        await drill.confirm(deciding)
        set_dealer_load(drill.stack.engine, busy_dealer, 0)
        for order_id in on_a:
            await drill.deliver(order_id)
            steps = await drill.finished_on(order_id, "A")
            assert steps.count(names.CREATE_ORDER) == 1, steps  # A's shape
        # A has no saga left: reported drained, its workers stop.
        assert await open_sagas(drill.client, DEPLOYMENT, "A") == 0
        await until(lambda: _is(drill.status("A"), "drained"), "A reported drained")
        await a_workers.aclose()

        # B is broken: A again, made current. New orders go back to A; B's saga ends on B.
        await builds_running.enter_async_context(drill.build(A))
        assert await promote(drill.client, A, "always")
        rolled_back = await drill.place(free_city)
        await drill.confirm(rolled_back)
        await drill.deliver(rolled_back["order_id"])
        assert await drill.finished_on(rolled_back["order_id"], "A")
        await drill.deliver(on_b["order_id"])
        steps = await drill.finished_on(on_b["order_id"], "B")
        assert steps.count(names.CREATE_ORDER) == 2, steps  # B's extra step
        assert await open_sagas(drill.client, DEPLOYMENT, "B") == 0


async def _is(status: Awaitable[str], wanted: str) -> bool:
    return await status == wanted
