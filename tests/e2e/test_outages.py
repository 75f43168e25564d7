"""Outages and configuration mistakes answer 503 with Retry-After: never a 500, never a 404 or
409 that is not true, and never an answer that invites a duplicate order.

Each test builds its own API (in-process, over the stack's Temporal and worker) with the
fault it needs: an exhausted connection pool, a read-only database (a failover to a
replica), a corrupt SQLite file, a namespace that does not exist.
"""

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool
from sqlmodel import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from api.app import create_app
from domain.names import order_id_for_idempotency_key, payment_id_for, workflow_id_for
from settings import Settings
from store.db import make_engine, migrate, session
from store.models import PaymentDecisionRow
from tests.e2e.conftest import Stack, saga_worker
from tests.e2e.test_api_saga import ORDER, WAIT, saga_of
from tests.e2e.test_hostile_input import row_counts
from tests.saga_harness import db_statuses


@asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """An API with ``settings``, started (lifespan) and served in-process."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
    ):
        yield http, app


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0


def corrupt(path: Path) -> None:
    """What a disk returning garbage leaves: the file is no database any more."""
    for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    path.write_bytes(os.urandom(8192))


@contextmanager
def every_connection_taken(engine: Engine) -> Iterator[None]:
    """Check out every connection the engine's pool will give (pool size and overflow)."""
    held = []
    try:
        while True:
            try:
                held.append(engine.connect())
            except Exception:  # the pool's TimeoutError: it is exhausted
                break
        yield
    finally:
        for connection in held:
            connection.close()


def is_accepted(engine: Engine, order_id: str) -> bool:
    """Whether the order has been accepted in the database (its payment decision opened)."""
    with session(engine) as db:
        return (
            db.exec(
                select(PaymentDecisionRow).where(PaymentDecisionRow.order_id == order_id)
            ).first()
            is not None
        )


async def test_an_exhausted_pool_is_503_and_an_order_already_started_is_202(stack: Stack) -> None:
    # Sagas of this API wait for a worker of the test's own (saga_worker).
    queue = f"outage-{uuid.uuid4()}"
    settings = stack.settings.model_copy(
        update={
            "database_pool_size": 1,
            "database_pool_timeout_seconds": 0.2,
            "workflow_task_queue": queue,
        }
    )
    key = f"outage-{uuid.uuid4()}"
    order_id = order_id_for_idempotency_key(settings.order_id_key, ORDER["customer_id"], key)
    handle = stack.client.get_workflow_handle(workflow_id_for(order_id))
    async with api(settings) as (http, app):
        engine: Engine = app.state.services.engine
        with every_connection_taken(engine):
            assert_unavailable(await http.get("/orders"))
            assert_unavailable(await http.post("/dealers", json=dealer()))
            # An order is accepted in the database before its saga starts: without a
            # connection nothing is started, and the retry the 503 invites is safe.
            refused = await http.post("/orders", json=ORDER, headers={"Idempotency-Key": key})
            assert_unavailable(refused)
        assert not await is_accepted_async(stack, order_id)
        with pytest.raises(RPCError):
            await handle.describe()

        # The retry is accepted and its saga starts (one RPC, waiting for the payment); the
        # pool runs dry before the order can be read back: 202 with its Location, never an
        # error inviting a retry that would start a second order.
        placing = asyncio.create_task(
            http.post("/orders", json=ORDER, headers={"Idempotency-Key": key, **WAIT})
        )
        deadline = time.monotonic() + 10
        pool = engine.pool
        assert isinstance(pool, QueuePool)
        while not (await is_accepted_async(stack, order_id) and pool.checkedout() == 0):
            assert time.monotonic() < deadline, "the order was never accepted"
            await asyncio.sleep(0.02)
        with every_connection_taken(engine):
            async with saga_worker(stack, queue):
                placed = await placing
                assert placed.status_code == 202, placed.text
                assert placed.json()["order_id"] == order_id
                assert placed.headers["Location"] == f"/orders/{order_id}"
                assert placed.json()["payment_id"] == payment_id_for(order_id)
                # The wait was for the payment: it exists, only unreadable for the API.
                assert db_statuses(stack.engine, order_id)["payment"] == "PENDING"
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        polled = await http.get(f"/orders/{order_id}")
        assert polled.status_code == 200, polled.text
        assert (polled.json()["phase"], polled.json()["payment"]["status"]) == (
            "AWAITING_PAYMENT",
            "PENDING",
        )
    await handle.terminate("test cleanup: no worker will run it any more")


async def is_accepted_async(stack: Stack, order_id: str) -> bool:
    return await asyncio.to_thread(is_accepted, stack.engine, order_id)


@pytest.fixture
def throwaway_database(stack: Stack) -> Iterator[str]:
    """A database of its own (PostgreSQL, a fresh database; SQLite, a fresh file), migrated."""
    url = stack.settings.database_url_value
    if not url.startswith("postgres"):
        path = Path(make_url(url).database or "").parent / f"outage-{uuid.uuid4().hex}.db"
        migrate(f"sqlite:///{path}")
        yield f"sqlite:///{path}"
        return
    name = f"outage_{uuid.uuid4().hex[:12]}"
    admin = make_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    own = make_url(url).set(database=name).render_as_string(hide_password=False)
    migrate(own)
    try:
        yield own
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def dealer() -> dict[str, Any]:
    return {
        "name": "Outage Dealer",
        "phone": f"+1 {uuid.uuid4().int % 10**9}",
        "province": "Tehran",
        "city": "Tehran",
        "capacity": 1,
    }


async def test_a_read_only_database_after_a_failover_is_503(
    stack: Stack, throwaway_database: str
) -> None:
    if not throwaway_database.startswith("postgres"):
        pytest.skip("a read-only failover is a PostgreSQL situation (run with DATABASE_URL)")
    settings = stack.settings.model_copy(update={"database_url": SecretStr(throwaway_database)})
    async with api(settings) as (http, _app):
        engine = make_engine(throwaway_database).execution_options(isolation_level="AUTOCOMMIT")
        name = make_url(throwaway_database).database
        with engine.connect() as connection:
            connection.execute(
                text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            )
            # New sessions see it; the API's pooled connections are replaced as a failover would.
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
        engine.dispose()
        # The terminated connections fail their pre-ping and are replaced by read-only ones.
        assert (await http.get("/dealers")).status_code == 200
        assert_unavailable(await http.post("/dealers", json=dealer()))


async def test_a_corrupt_database_file_is_503(stack: Stack, throwaway_database: str) -> None:
    if throwaway_database.startswith("postgres"):
        pytest.skip("a corrupt file is an SQLite situation")
    settings = stack.settings.model_copy(update={"database_url": SecretStr(throwaway_database)})
    async with api(settings) as (http, app):
        assert (await http.get("/dealers")).status_code == 200
        path = Path(make_url(throwaway_database).database or "")
        app.state.services.engine.dispose()
        await asyncio.to_thread(corrupt, path)
        for call in (http.get("/dealers"), http.post("/dealers", json=dealer())):
            assert_unavailable(await call)
        ready = await http.get("/readyz")
        assert_unavailable(ready)
        assert ready.json()["database"].startswith("error")


async def test_a_namespace_that_does_not_exist_is_503_and_not_ready(stack: Stack) -> None:
    # An order the real stack knows, so the database holds its rows.
    placed = await stack.http.post("/orders", json=ORDER, headers=WAIT)
    assert placed.status_code == 201, placed.text
    order = placed.json()
    before = await asyncio.to_thread(row_counts, stack.engine)
    settings = stack.settings.model_copy(update={"temporal_namespace": f"nope-{uuid.uuid4()}"})
    async with api(settings) as (http, _app):
        ready = await http.get("/readyz")
        assert_unavailable(ready)
        assert "namespace" in ready.json()["temporal"]
        assert ready.json()["database"] == "ok"
        for response in await asyncio.gather(
            http.post("/orders", json=ORDER),
            http.post(f"/payments/{order['payment']['payment_id']}/confirm"),
            http.post(f"/orders/{order['order_id']}/cancel"),
            http.get(f"/orders/{order['order_id']}/saga"),
        ):
            # Not a 404 ("no such saga") nor a 409 ("its saga has ended"): both would be lies.
            assert_unavailable(response)
            assert "TEMPORAL_NAMESPACE" in response.json()["detail"], response.text
    # Nothing reached the real saga, and no order, payment or delivery moved.
    body = (await stack.http.get(f"/orders/{order['order_id']}")).json()
    assert (body["phase"], body["payment"]["status"]) == ("AWAITING_PAYMENT", "PENDING")
    assert (await saga_of(stack.http, order["order_id"]))["signals"] == []
    after = await asyncio.to_thread(row_counts, stack.engine)
    # What the database records before Temporal is reached stays (a 503 says "retry", and the
    # retry finds it): the decision the confirm took (the other decision is now refused, the
    # same one accepted), and the acceptance of the order that was never started.
    assert body["payment"]["decision"] in (None, "CONFIRM")
    decisions = ("payment_decisions", "payment decisions taken")
    assert {k: v for k, v in after.items() if k not in decisions} == {
        k: v for k, v in before.items() if k not in decisions
    }
