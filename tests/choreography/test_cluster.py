"""The choreographed saga on a three-node NATS JetStream cluster set up as docker-compose.yml
sets it up: the compose file's broker settings proven on real servers, not only its YAML.

Three local ``nats-server`` processes run the nats services' own command lines from
docker-compose.yml (``--name``, ``--jetstream``, ``--store_dir``, ``--http_port``,
``--cluster_name``, ``--cluster``, ``--routes``), moved to loopback ports and temporary
stores, and are waited for as compose waits for them (``/healthz``). The choreography runs in
this process over the test's database with ``NATS_URL`` naming the three nodes and
``NATS_STREAM_REPLICAS=3``; orders are placed, decided and reported through its door
(``ChoreographedSagas``) as the API does, with a broker connection of the door's own.

- Both streams, and every service's durable consumer, keep three replicas, one per node.
- The event stream's leader killed with SIGKILL while orders are in flight: every order
  still ends as it should (delivered; refunded and cancelled when nobody delivers), orders
  placed while the node is down go through too, and every effect happens once: one payment,
  one delivery, a refund only for the refunded, each event emitted once and applied once by
  each of its consumers, nothing dead-lettered, every dealer freed.
- The node started again on its store rejoins: every replica of both streams is current,
  and an order placed then is delivered.
"""

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml  # type: ignore[import-untyped]
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.js.api import ClusterInfo
from sqlalchemy import Engine
from sqlmodel import col, func, select

from choreography.handlers import CONSUMERS
from choreography.outbox import Publisher
from choreography.runtime import Choreography, connect_broker, keep_connecting
from domain import names
from domain.events import DEAD_LETTER_STREAM, STREAM, EventType
from domain.status import Decision, SagaPhase, SagaStyle
from domain.views import OrderView
from sagas import views
from sagas.door import Sagas
from settings import Settings
from store.db import read_session
from store.models import DeadLetterRow, DealerRow, InboxRow, OutboxRow, PaymentRow, RefundRow
from tests.choreography.observe import choreographed_door
from tests.conftest import temporal_binary as installed_binary
from tests.saga_harness import add_dealer, db_statuses, order_request
from tools.chaos.stack import free_port

pytestmark = pytest.mark.e2e

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"

DELIVERED = [
    EventType.ORDER_CREATED,
    EventType.PAYMENT_CONFIRMED,
    EventType.ORDER_CONFIRMED,
    EventType.DELIVERY_ASSIGNED,
    EventType.DELIVERY_COMPLETED,
    EventType.ORDER_DELIVERED,
]
REFUNDED = [
    EventType.ORDER_CREATED,
    EventType.PAYMENT_CONFIRMED,
    EventType.ORDER_CONFIRMED,
    EventType.DELIVERY_FAILED,
    EventType.PAYMENT_REFUNDED,
    EventType.ORDER_CANCELLED,
]
# Which consumers apply each event type.
CONSUMERS_OF: dict[str, set[str]] = {
    kind.value: {name for (_, of), name in CONSUMERS.items() if of == kind} for _, kind in CONSUMERS
}


# ---------------------------------------------------------------- the cluster


@dataclass
class Node:
    """One nats-server of the cluster, on loopback ports of its own; killable and startable
    again on the same ports and store (what a crashed container restarting is)."""

    name: str
    store: Path
    client_port: int
    cluster_port: int
    http_port: int
    args: list[str] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    async def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        with (self.store.parent / f"{self.name}.log").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                installed_binary("nats-server"),
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    async def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, no flush of its store."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            await self.kill()

    async def healthy(self, http: httpx.AsyncClient) -> bool:
        """What the compose healthcheck asks: JetStream up and this node current."""
        try:
            response = await http.get(f"http://127.0.0.1:{self.http_port}/healthz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def compose_nats_commands() -> dict[str, list[str]]:
    """The command line of each nats service of docker-compose.yml."""
    commands = {
        name: [str(arg) for arg in service["command"]]
        for name, service in compose_services().items()
        if str(service.get("image", "")).startswith("nats:")
    }
    assert sorted(commands) == ["nats-1", "nats-2", "nats-3"], sorted(commands)
    return commands


def on_loopback(command: list[str], node: Node, cluster: dict[str, Node]) -> list[str]:
    """``command`` of the compose file for ``node`` here: its hosts and ports on loopback,
    its store in a temporary directory, every other flag as it is. A flag this does not know
    fails the test (adapt it here, so the cluster stays the compose file's)."""
    args = ["--addr=127.0.0.1", f"--port={node.client_port}"]
    for arg in command:
        flag, _, value = arg.partition("=")
        if flag in ("--name", "--jetstream", "--cluster_name"):
            args.append(arg)
        elif flag == "--store_dir":
            args.append(f"--store_dir={node.store}")
        elif flag == "--http_port":
            args.append(f"--http_port={node.http_port}")
        elif flag == "--cluster":
            args.append(f"--cluster=nats://127.0.0.1:{node.cluster_port}")
        elif flag == "--routes":
            routes = [
                re.sub(
                    r"//([\w-]+):\d+",
                    lambda m: f"//127.0.0.1:{cluster[m[1]].cluster_port}",
                    route,
                )
                for route in value.split(",")
            ]
            args.append(f"--routes={','.join(routes)}")
        else:
            pytest.fail(f"docker-compose.yml's {node.name} runs with {arg}: adapt it here")
    assert f"--name={node.name}" in args, args
    return args


async def until(probe: Callable[[], Any], what: str, within: float = 30) -> Any:
    """Await ``probe()`` (a coroutine function) until it returns a truthy value; a deadline."""
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.1)


async def all_healthy(nodes: list[Node], within: float = 30) -> None:
    async with httpx.AsyncClient(timeout=1) as http:

        async def every_node() -> bool:
            return all(await asyncio.gather(*(node.healthy(http) for node in nodes)))

        await until(every_node, "every node healthy (/healthz)", within)


async def places_replicated_streams(nodes: list[Node], within: float = 60) -> None:
    """Wait until the cluster creates a stream replicated on every node. Healthy nodes have
    a meta leader, but a freshly formed cluster on two busy cores can still take longer than
    a client's request timeout to place the first stream's raft group (a worker's broker
    then fails to start, as a restarted container would wait out)."""
    connection = await nats.connect([node.url for node in nodes], connect_timeout=2)
    try:
        js = connection.jetstream(timeout=10)

        async def placed() -> bool:
            try:
                await js.add_stream(name="readiness", subjects=["readiness"], num_replicas=3)
            except (nats.errors.TimeoutError, nats.js.errors.APIError):
                return False
            await js.delete_stream("readiness")
            return True

        await until(placed, "a stream replicated on every node", within)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Node]]:
    """The compose file's three nats nodes, clustered on loopback, healthy."""
    root = tmp_path_factory.mktemp("nats-cluster")
    commands = compose_nats_commands()
    ports = iter([free_port() for _ in range(3 * len(commands))])
    nodes = {
        name: Node(name, root / name, next(ports), next(ports), next(ports)) for name in commands
    }
    for name, node in nodes.items():
        node.args = on_loopback(commands[name], node, nodes)
    try:
        for node in nodes.values():
            await node.start()
        await all_healthy(list(nodes.values()))
        await places_replicated_streams(list(nodes.values()))
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop()


def settings_for(cluster: dict[str, Node], engine: Engine) -> Settings:
    """The compose file's app settings for the broker (``NATS_URL`` with each node's address
    here, ``NATS_STREAM_REPLICAS``), over the test's database; short dealer windows."""
    app = compose_services()["api"]["environment"]
    nats_url = re.sub(
        r"//([\w-]+):\d+", lambda m: f"//127.0.0.1:{cluster[m[1]].client_port}", app["NATS_URL"]
    )
    assert nats_url == ",".join(node.url for node in cluster.values()), nats_url
    assert int(app["NATS_STREAM_REPLICAS"]) == 3
    return Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        saga_style=SagaStyle.CHOREOGRAPHY,
        nats_url=nats_url,
        nats_stream_replicas=int(app["NATS_STREAM_REPLICAS"]),
        dealer_assignment_window_seconds=2,
        dealer_retry_initial_seconds=0.5,
        auth_mode="dev",
    )


@contextlib.asynccontextmanager
async def choreographed(settings: Settings, engine: Engine) -> AsyncIterator["Shop"]:
    """The worker's side (consumers, relay, sweepers) and the API's side (the door, on a
    broker connection of its own), as ``worker.py --events`` and the API run them."""
    choreography = Choreography(engine, settings, connect_broker(settings))
    await choreography.start()
    api_broker = connect_broker(settings)
    try:
        await asyncio.wait_for(keep_connecting(api_broker), 30)
        placing = settings.model_copy(update={"saga_style": SagaStyle.CHOREOGRAPHY})
        door = choreographed_door(engine, placing, Publisher(engine, api_broker))
        yield Shop(engine, settings, door, choreography.broker)
    finally:
        await api_broker.stop()
        await choreography.stop()


@contextlib.asynccontextmanager
async def admin(settings: Settings) -> AsyncIterator[NatsClient]:
    """A plain client of the cluster (any node that answers), for the streams' state."""
    connection = await nats.connect(
        [url for url in (settings.nats_url or "").split(",")], connect_timeout=2
    )
    try:
        yield connection
    finally:
        await connection.close()


def connected_node(broker: NatsBroker, cluster: dict[str, Node]) -> Node:
    """The node ``broker`` is connected to now."""
    connection = getattr(broker, "_connection", None)
    assert connection is not None
    assert connection.is_connected
    port = connection.connected_url.port
    (node,) = [node for node in cluster.values() if node.client_port == port]
    return node


async def lead_from(nc: NatsClient, stream: str, node: Node) -> None:
    """Move ``stream``'s leader to ``node`` (a leader step-down that prefers it)."""
    js = nc.jetstream(timeout=5)

    async def leads() -> bool:
        try:
            info = (await js.stream_info(stream)).cluster
        except nats.errors.TimeoutError:  # no leader to answer yet: an election is on
            return False
        return info is not None and info.leader == node.name

    if await leads():
        return
    request = json.dumps({"placement": {"preferred": node.name}}).encode()
    reply = await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=5)
    answer = json.loads(reply.data)
    assert answer.get("success"), answer
    await until(leads, f"{node.name} leading {stream}")


def placement(info: ClusterInfo | None) -> dict[str, bool]:
    """Each node holding a replica: whether it is current (the leader is)."""
    assert info is not None, "no cluster information: not a clustered stream"
    replicas = {
        peer.name or "?": bool(peer.current and not peer.offline) for peer in info.replicas or []
    }
    return {info.leader or "?": True} | replicas


# ---------------------------------------------------------------- the shop


@dataclass
class Shop:
    """The door, and what the rows say."""

    engine: Engine
    settings: Settings
    door: Sagas
    worker_broker: NatsBroker  # the consumers' connection

    async def place(self, city: str) -> str:
        """Place an order (its saga takes it from here); its id."""
        return (await self.door.place(order_request(city=city), None)).order_id

    async def view(self, order_id: str) -> OrderView | None:
        return await asyncio.to_thread(views.order_view, self.engine, self.settings, order_id)

    async def reaches(
        self, order_id: str, check: Callable[[OrderView], bool], what: str, within: float = 30
    ) -> OrderView:
        async def probe() -> OrderView | None:
            view = await self.view(order_id)
            return view if view is not None and check(view) else None

        found: OrderView = await until(probe, f"order {order_id}: {what}", within)
        return found

    async def confirm(self, order_id: str) -> None:
        """The customer confirms, once PaymentService has written the payment."""
        await self.reaches(order_id, lambda v: v.payment is not None, "its payment written")
        await self.door.decide_payment(names.payment_id_for(order_id), Decision.CONFIRM)

    async def ended(self, order_id: str) -> bool:
        view = await self.view(order_id)
        return view is not None and view.phase in (SagaPhase.DELIVERED, SagaPhase.CANCELLED)

    async def deliver(self, order_id: str) -> OrderView:
        await self.reaches(order_id, lambda v: v.phase == SagaPhase.IN_TRANSIT, "in transit")
        await self.door.report_delivered(names.delivery_id_for(order_id))
        return await self.reaches(order_id, lambda v: v.phase == SagaPhase.DELIVERED, "delivered")

    async def refunded(self, order_id: str) -> OrderView:
        view = await self.reaches(order_id, lambda v: v.phase == SagaPhase.CANCELLED, "cancelled")
        assert view.payment is not None
        assert view.delivery is not None
        assert (view.payment.status, view.delivery.status, view.failure_type) == (
            "REFUNDED",
            "CANCELLED",
            names.NO_DEALER_AVAILABLE,
        )
        return view


def effects(engine: Engine, order_id: str) -> dict[str, Any]:
    """What happened to an order, counted: rows, refunds, events emitted, and who applied
    each event how many times."""
    with read_session(engine) as db:
        emitted = db.exec(
            select(OutboxRow).where(OutboxRow.order_id == order_id).order_by(col(OutboxRow.id))
        ).all()
        applied = db.exec(select(InboxRow).where(InboxRow.order_id == order_id)).all()
        refunds = db.exec(
            select(func.count())
            .select_from(RefundRow)
            .join(PaymentRow, col(PaymentRow.id) == col(RefundRow.payment_id))
            .where(PaymentRow.order_id == order_id)
        ).one()
        dead = db.exec(
            select(func.count())
            .select_from(DeadLetterRow)
            .where(DeadLetterRow.order_id == order_id)
        ).one()
    statuses = db_statuses(engine, order_id)
    applications = Counter((row.consumer, row.event_id) for row in applied)
    return {
        "payments": statuses["payments"],
        "deliveries": statuses["deliveries"],
        "refunds": refunds,
        "events": [row.type for row in emitted],
        "unpublished": sum(row.published_at is None for row in emitted),
        # Each event by each consumer that applies its type: exactly once.
        "applied": {
            (row.type, consumer): applications[(consumer, row.event_id)]
            for row in emitted
            for consumer in CONSUMERS_OF.get(row.type, set())
        },
        "dead_letters": dead,
    }


def dealer_loads(engine: Engine) -> dict[int, int]:
    with read_session(engine) as db:
        return {d.id or 0: d.active_deliveries for d in db.exec(select(DealerRow)).all()}


def a_city() -> str:
    return f"City {uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------- the tests


async def test_both_streams_and_every_consumer_keep_a_replica_on_each_node(
    cluster: dict[str, Node], engine: Engine
) -> None:
    settings = settings_for(cluster, engine)
    async with choreographed(settings, engine) as shop, admin(settings) as nc:
        js = nc.jetstream(timeout=5)
        for stream in (STREAM, DEAD_LETTER_STREAM):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
            assert set(placement(info.cluster)) == set(cluster), (stream, info.cluster)
        for consumer in CONSUMERS.values():
            info = await js.consumer_info(STREAM, consumer)
            assert info.config.num_replicas in (None, 0, 3), (consumer, info.config)
            assert set(placement(info.cluster)) == set(cluster), (consumer, info.cluster)
        # And the cluster carries an order end to end.
        city = a_city()
        add_dealer(shop.engine, city=city, province="Tehran")
        order_id = await shop.place(city)
        await shop.confirm(order_id)
        await shop.deliver(order_id)
        await until(
            lambda: asyncio.to_thread(lambda: effects(engine, order_id)["unpublished"] == 0),
            "every event published",
        )
        assert effects(engine, order_id)["events"] == DELIVERED


async def test_a_node_killed_mid_flow_loses_nothing_and_rejoins_when_started_again(
    cluster: dict[str, Node], engine: Engine
) -> None:
    settings = settings_for(cluster, engine)
    city, nowhere = a_city(), a_city()
    add_dealer(engine, city=city, province="Tehran", capacity=100)
    async with choreographed(settings, engine) as shop, admin(settings) as nc:
        js = nc.jetstream(timeout=5)
        # The node to kill: the one the consumers' connection is on, made the event stream's
        # leader, so its death costs both a leader election and a client failover.
        victim = connected_node(shop.worker_broker, cluster)
        await lead_from(nc, STREAM, victim)
        delivered = [await shop.place(city) for _ in range(6)]
        refunded = [await shop.place(nowhere) for _ in range(3)]
        await asyncio.gather(*(shop.confirm(order_id) for order_id in delivered + refunded))

        await victim.kill()
        in_flight = [o for o in delivered + refunded if not await shop.ended(o)]
        assert in_flight, "every order had ended before the kill: not mid-flow"

        # Two nodes of three are a quorum: new orders go through while the node is down.
        delivered_during = [await shop.place(city) for _ in range(2)]
        refunded_during = [await shop.place(nowhere)]
        for order_id in delivered_during + refunded_during:
            await shop.confirm(order_id)
        for order_id in delivered + delivered_during:
            await shop.deliver(order_id)
        for order_id in refunded + refunded_during:
            await shop.refunded(order_id)
        # The consumers carried on from another node.
        assert connected_node(shop.worker_broker, cluster) != victim

        # Every effect once.
        everything = delivered + delivered_during + refunded + refunded_during

        async def all_published() -> bool:
            counted = await asyncio.to_thread(lambda: [effects(engine, o) for o in everything])
            return all(c["unpublished"] == 0 for c in counted)

        await until(all_published, "every event published (the relay publishes what failed)")
        for order_id in everything:
            counted = effects(engine, order_id)
            expected = DELIVERED if order_id in delivered + delivered_during else REFUNDED
            assert counted["events"] == expected, (order_id, counted)
            assert set(counted["applied"].values()) == {1}, (order_id, counted["applied"])
            assert (counted["payments"], counted["deliveries"], counted["dead_letters"]) == (
                1,
                1,
                0,
            ), (order_id, counted)
            assert counted["refunds"] == (0 if expected == DELIVERED else 1), (order_id, counted)
        assert set(dealer_loads(engine).values()) == {0}

        # Started again on its store, the node catches up: every replica current again.
        await victim.start()
        await all_healthy(list(cluster.values()))

        async def caught_up() -> bool:
            for stream in (STREAM, DEAD_LETTER_STREAM):
                try:
                    state = placement((await js.stream_info(stream)).cluster)
                except nats.errors.TimeoutError:  # its leader is being elected
                    return False
                if set(state) != set(cluster) or not all(state.values()):
                    return False
            return True

        await until(caught_up, f"{victim.name} current again in both streams")
        order_id = await shop.place(city)
        await shop.confirm(order_id)
        await shop.deliver(order_id)


@pytest.fixture(autouse=True)
async def _every_node_running(cluster: dict[str, Node]) -> AsyncIterator[None]:
    """Whatever a test did to a node (a failure before it was started again), the next test
    starts with all three running."""
    yield
    for node in cluster.values():
        if node.process is not None and node.process.returncode is not None:
            await node.start()
    await all_healthy(list(cluster.values()))
