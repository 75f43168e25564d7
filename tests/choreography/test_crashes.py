"""Crashes of the choreographed saga's processes, at each named fault point, against a real
``nats-server -js`` and a database of the test's own.

The worker runs as it does in production (``python worker.py --events``, a subprocess) and
SIGKILLs itself where ``faults.point`` is armed:

- ``outbox.after_commit``: an event is committed in the outbox, not published;
- ``outbox.after_publish``: an event is published, not marked published;
- ``consumer.after_commit``: an event is applied (its effect, inbox row and emitted events
  committed), not acknowledged.

Each test arms one point, drives a delivered order and a no-dealer (refunded) order, sees
the worker die there, starts it again and proves that both orders end right with every
effect once: one payment each, a refund only for the refunded payment, the dealer freed,
each event applied once by each of its consumers (redeliveries absorbed by the inbox), every
event published and nothing dead-lettered. A last test kills the door's process (the API's
side) between its commit and its publish: the worker's relay publishes the order's
``order_created`` and the order goes on.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from nats.js import JetStreamContext
from sqlalchemy import Engine
from sqlmodel import col, select

from bootstrap import open_parts
from choreography.handlers import CONSUMERS
from domain import names
from domain.events import STREAM
from domain.payloads import OrderItem, OrderRequest
from domain.status import Decision, SagaPhase, SagaStyle
from domain.views import OrderView
from sagas import views
from sagas.door import Sagas
from settings import Settings
from store.db import make_engine, session
from store.models import (
    DeadLetterRow,
    DealerRow,
    DeliveryRow,
    InboxRow,
    OutboxRow,
    PaymentRow,
    RefundRow,
)
from tests.conftest import database_url, reset_schema
from tests.nats_server import NatsServer
from tests.saga_harness import add_dealer, db_statuses

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
WORKER_FAULT_POINTS = ("outbox.after_commit", "outbox.after_publish", "consumer.after_commit")
DEALER_CITY = "Crashville"
ACK_WAIT = 2.0  # seconds a killed worker's unacknowledged events wait to be delivered again
# What each path leaves in the outbox, in order: one row per event, none twice.
DELIVERED_EVENTS = [
    "order_created",
    "payment_confirmed",
    "order_confirmed",
    "delivery_assigned",
    "delivery_completed",
    "order_delivered",
]
REFUNDED_EVENTS = [
    "order_created",
    "payment_confirmed",
    "order_confirmed",
    "delivery_failed",
    "payment_refunded",
    "order_cancelled",
]
CANCELLED_EVENTS = ["order_created", "payment_cancelled", "order_cancelled"]
# The door's side of ``POST /orders``, in a process of its own (killed at its fault point).
PLACE_AN_ORDER = """
import asyncio, sys
from decimal import Decimal
from bootstrap import open_parts
from domain.payloads import OrderItem, OrderRequest
from settings import Settings

async def main(key: str) -> None:
    async with open_parts(Settings(), temporal="none") as parts:
        request = OrderRequest(
            customer_id="crash-door",
            items=[OrderItem(product_id="book", quantity=1, unit_price=Decimal("9.90"))],
            province="Tehran",
            city="Tehran",
        )
        await parts.sagas.place(request, key)

asyncio.run(main(sys.argv[1]))
"""


@dataclass
class Rig:
    """A nats-server, a database and the processes run against them (all stopped at the
    end): workers, and a door of its own when a test needs one to die."""

    engine: Engine
    settings: Settings
    fault_dir: Path
    logs: Path
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def arm(self, point: str) -> None:
        """The next process of this rig to reach ``point`` dies there."""
        (self.fault_dir / point).touch()

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """``python *args`` in the repository, with the rig's environment, its output in
        ``logs/<name>-<n>.log``."""
        with (self.logs / f"{name}-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def start_worker(self) -> subprocess.Popen[bytes]:
        """The choreographed saga's worker: consumers, relay and sweepers."""
        return self.spawn("worker", "worker.py", "--events")

    async def killed_at(
        self, process: subprocess.Popen[bytes], point: str, within: float = 20
    ) -> None:
        """Wait until ``process`` has died of ``point`` (SIGKILL, the armed file claimed by
        its pid)."""
        deadline = time.monotonic() + within
        while process.poll() is None:
            assert time.monotonic() < deadline, f"never died at {point}:\n{self.output()}"
            await asyncio.sleep(0.05)
        assert process.returncode == -signal.SIGKILL, self.output()
        assert (self.fault_dir / f"{point}.fired.{process.pid}").exists()
        assert not (self.fault_dir / point).exists()

    def output(self) -> str:
        """The tail of every process's log, for a failure's message."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.logs.iterdir())
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    # Fault points are armed for the subprocesses only: this process never dies of one.
    monkeypatch.delenv("CHAOS_FAULT_DIR", raising=False)
    with ExitStack() as cleanup:
        server = NatsServer(tmp_path / "nats")
        cleanup.callback(server.stop)
        server.start()
        url = database_url(tmp_path)
        engine = make_engine(url)
        cleanup.callback(engine.dispose)
        reset_schema(engine)
        settings = Settings(
            database_url=url,
            nats_url=server.url,
            auth_mode="dev",
            saga_style=SagaStyle.CHOREOGRAPHY,
            dealer_assignment_window_seconds=1.5,
            dealer_retry_initial_seconds=0.5,
            event_ack_wait_seconds=ACK_WAIT,
        )
        fault_dir = tmp_path / "faults"
        fault_dir.mkdir()
        logs = tmp_path / "logs"
        logs.mkdir()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "NATS_URL": server.url,
            "CHAOS_FAULT_DIR": str(fault_dir),
            "DEALER_ASSIGNMENT_WINDOW_SECONDS": "1.5",
            "DEALER_RETRY_INITIAL_SECONDS": "0.5",
            # A killed worker's unacknowledged events come back after this, not 15 s.
            "EVENT_ACK_WAIT_SECONDS": str(ACK_WAIT),
            "AUTH_MODE": "dev",
            "SAGA_STYLE": "choreography",
        }
        rig = Rig(engine, settings, fault_dir, logs, env)
        cleanup.callback(rig.stop)  # first out: the processes, then the engine and the server
        yield rig


@pytest.fixture
async def door(rig: Rig) -> AsyncIterator[Sagas]:
    """The door in this process, publishing on a connection of its own (as the API does)."""
    async with open_parts(rig.settings, temporal="none") as parts:  # declares the streams
        yield parts.sagas


@pytest.fixture
async def jetstream(rig: Rig) -> AsyncIterator[JetStreamContext]:
    """A plain JetStream client, to read the consumers' state."""
    assert rig.settings.nats_url is not None
    connection = await nats.connect(rig.settings.nats_url)
    try:
        yield connection.jetstream()
    finally:
        await connection.close()


async def until(check: Callable[[], T | None], what: str, within: float = 20) -> T:
    """``check()`` once it answers (neither None nor False), polled until a deadline."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found is not None and found is not False:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def view(rig: Rig, order_id: str) -> OrderView:
    found = views.order_view(rig.engine, rig.settings, order_id)
    assert found is not None, order_id
    return found


async def reaches(rig: Rig, order_id: str, phase: SagaPhase, within: float = 45) -> OrderView:
    """The order's view once it is in ``phase``. The deadline leaves room for a redelivery
    of what a killed worker had taken (after the ack wait, ACK_WAIT) on a loaded machine."""

    def there() -> OrderView | None:
        current = view(rig, order_id)
        return current if current.phase == phase else None

    try:
        return await until(there, f"order {order_id} {phase}", within)
    except AssertionError:
        raise AssertionError(f"{view(rig, order_id)}\n{rig.output()}") from None


async def place(door: Sagas, city: str) -> str:
    """A new order, placed through the door, its payment written by the worker."""
    request = OrderRequest(
        customer_id="crash-customer",
        items=[OrderItem(product_id="book", quantity=2, unit_price=Decimal("12.50"))],
        province="Tehran",
        city=city,
    )
    placed = await door.place(request, None, wait=15)
    assert placed.view is not None, "the order is not written"
    assert placed.view.payment is not None, "no payment written: is the worker running?"
    return placed.order_id


def unpublished(engine: Engine) -> list[str]:
    """The types of the outbox's unpublished events, in the order they were written."""
    with session(engine) as db:
        rows = db.exec(
            select(OutboxRow)
            .where(col(OutboxRow.published_at).is_(None))
            .order_by(col(OutboxRow.id))
        ).all()
    return [row.type for row in rows]


async def settled(rig: Rig, js: JetStreamContext, within: float = 45) -> None:
    """Wait until every outbox event is published and every consumer has applied and
    acknowledged all it was given (a redelivery of what a killed worker never acknowledged
    comes after the ack wait, ACK_WAIT)."""

    async def idle() -> bool:
        for name in CONSUMERS.values():
            info = await js.consumer_info(STREAM, name)
            if info.num_pending or info.num_ack_pending:
                return False
        return not unpublished(rig.engine)

    deadline = time.monotonic() + within
    while not await idle():
        assert time.monotonic() < deadline, f"never settled:\n{rig.output()}"
        await asyncio.sleep(0.1)


def assert_every_effect_once(engine: Engine, expected: dict[str, list[str]]) -> None:
    """Each order emitted exactly ``expected`` (one outbox row each, all published), each
    event was applied once by each consumer of its type and by no one else, refunds exist
    for refunded payments only (one each), every dealer's load is what it carries, and
    nothing was dead-lettered."""
    with session(engine) as db:
        outbox = db.exec(select(OutboxRow).order_by(col(OutboxRow.id))).all()
        inbox = db.exec(select(InboxRow)).all()
        payments = db.exec(select(PaymentRow)).all()
        refunds = db.exec(select(RefundRow)).all()
        dealers = db.exec(select(DealerRow)).all()
        in_transit = db.exec(select(DeliveryRow).where(DeliveryRow.status == "IN_TRANSIT")).all()
        dead = db.exec(select(DeadLetterRow)).all()
    for order_id, types in expected.items():
        assert [r.type for r in outbox if r.order_id == order_id] == types, order_id
    assert {r.order_id for r in outbox} == set(expected)
    assert all(r.published_at is not None for r in outbox)
    applied = Counter((r.consumer, r.event_id) for r in inbox)
    should = Counter(
        (consumer, row.event_id)
        for row in outbox
        for (_, type), consumer in CONSUMERS.items()
        if type == row.type
    )
    assert applied == should
    assert Counter(p.order_id for p in payments) == Counter(dict.fromkeys(expected, 1))
    refunded = {p.id: p.amount_cents for p in payments if p.status == "REFUNDED"}
    assert sorted((r.payment_id, r.amount_cents) for r in refunds) == sorted(refunded.items())
    carried = Counter(d.dealer_id for d in in_transit)
    assert {d.id: d.active_deliveries for d in dealers} == {d.id: carried[d.id] for d in dealers}
    assert dead == []


@pytest.mark.parametrize("point", WORKER_FAULT_POINTS)
async def test_a_worker_killed_at_a_fault_point_ends_every_order_right_after_its_restart(
    rig: Rig, door: Sagas, jetstream: JetStreamContext, point: str
) -> None:
    dealer = add_dealer(rig.engine, city=DEALER_CITY, capacity=1)
    first = rig.start_worker()
    delivered = await place(door, DEALER_CITY)
    refunded = await place(door, f"Nowhere {uuid.uuid4().hex[:8]}")  # no dealer there
    rig.arm(point)
    for order_id in (delivered, refunded):
        await door.decide_payment(names.payment_id_for(order_id), Decision.CONFIRM)
    # The worker's first event out (order_confirmed) or in (payment_confirmed) kills it.
    await rig.killed_at(first, point)
    # What the crash left: an order confirmed whose order_confirmed nobody marked published.
    assert unpublished(rig.engine) == ["order_confirmed"], rig.output()

    rig.start_worker()
    moving = await reaches(rig, delivered, SagaPhase.IN_TRANSIT)
    assert moving.delivery is not None
    assert moving.delivery.dealer_id == dealer
    await door.report_delivered(moving.delivery.delivery_id)
    done = await reaches(rig, delivered, SagaPhase.DELIVERED)
    undone = await reaches(rig, refunded, SagaPhase.CANCELLED)
    await settled(rig, jetstream)

    assert db_statuses(rig.engine, delivered) == {
        "order": "DELIVERED",
        "payment": "COMPLETED",
        "delivery": "DELIVERED",
        "dealer_id": dealer,
        "payments": 1,
        "deliveries": 1,
    }
    assert done.failure_type is None
    assert db_statuses(rig.engine, refunded) == {
        "order": "CANCELLED",
        "payment": "REFUNDED",
        "delivery": "CANCELLED",
        "dealer_id": None,
        "payments": 1,
        "deliveries": 1,
    }
    assert undone.failure_type == names.NO_DEALER_AVAILABLE
    assert_every_effect_once(rig.engine, {delivered: DELIVERED_EVENTS, refunded: REFUNDED_EVENTS})


async def test_a_door_killed_after_its_commit_leaves_order_created_to_the_relay(
    rig: Rig, door: Sagas, jetstream: JetStreamContext
) -> None:
    key = str(uuid.uuid4())
    order_id = names.new_order_id(rig.settings.order_id_key, "crash-door", key)
    rig.arm("outbox.after_commit")
    placing = rig.spawn("door", "-c", PLACE_AN_ORDER, key)
    await rig.killed_at(placing, "outbox.after_commit", within=30)
    # The order is written and its event is in the outbox, unpublished; nothing else is.
    assert db_statuses(rig.engine, order_id)["order"] == "PENDING"
    assert db_statuses(rig.engine, order_id)["payments"] == 0
    assert unpublished(rig.engine) == ["order_created"]

    rig.start_worker()  # its relay publishes order_created; PaymentService opens the payment
    waiting = await reaches(rig, order_id, SagaPhase.AWAITING_PAYMENT)
    assert waiting.payment is not None
    await door.decide_payment(waiting.payment.payment_id, Decision.CANCEL)
    cancelled = await reaches(rig, order_id, SagaPhase.CANCELLED)
    assert cancelled.failure_type == names.PAYMENT_CANCELLED
    await settled(rig, jetstream)
    assert db_statuses(rig.engine, order_id)["payments"] == 1
    assert_every_effect_once(rig.engine, {order_id: CANCELLED_EVENTS})
