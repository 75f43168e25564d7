"""The stack of one bench run: Temporal (in memory), saga worker, API, baseline worker, and
for the choreographed saga a NATS server and a second API.

Built on :class:`tools.chaos.stack.Stack` (the chaos run's processes) with no fault points and
no worker supervision (a worker that dies fails the run instead of hiding in the numbers).
The second API has ``SAGA_STYLE=choreography``: each API places new orders in its own style.
"""

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import ClauseElement
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from domain import names
from domain.status import ActivityRouting, SagaStyle
from sagas.door import Sagas
from sagas.temporal import COMPRESSION, data_converter
from settings import Settings
from store.db import drop_schema, make_engine, migrate, normalise_url, read_session, session
from store.models import new_dealer
from tools.bench.baseline import BASELINE_ACTIVITY_TASK_QUEUE, BASELINE_TASK_QUEUE
from tools.bench.procstat import ResourceMonitor
from tools.chaos.stack import ROOT, Proc, Stack, free_port

BENCH_DIR = ROOT / ".bench"
PROVINCE = CITY = "Tehran"
# Capacity never runs out: the scale run leaves ~1,400 parcels with their dealers.
DEALERS = 20
DEALER_CAPACITY = 10_000
DEALER_WINDOW_SECONDS = 20.0
READY_SECONDS = 60.0
# The names the resource monitor gives the choreography's processes (CPU and RSS by name).
NATS = "nats"
CHOREOGRAPHY_API = "api-choreography"
# A local PostgreSQL server, measured as one more process when the bench runs on it.
DATABASE = "database"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", None)
# The routing a shop gets without choosing (settings.py), whatever the shell says: the stack's
# API places orchestrated orders so; a second API (OTHER_ROUTING_API) routes them the other way.
DEFAULT_ROUTING = ActivityRouting(Settings.model_fields["activity_routing"].default)
OTHER_ROUTING = next(r for r in ActivityRouting if r != DEFAULT_ROUTING)
OTHER_ROUTING_API = f"api-{OTHER_ROUTING}"

# The dev server's single history shard polls each queue 20 times a second by default, so
# under load the whole stack moves in waves 50 ms apart; a cluster's many shards do not
# (docs/performance.md#the-dev-servers-waves).
POLLED_QUEUES = ("transfer", "timer", "visibility")
DEFAULT_POLL_RPS = 100


def poll_rate_args(rps: int) -> list[str]:
    """``temporal server start-dev`` flags for each history queue to poll at most ``rps`` times
    a second."""
    return [
        arg
        for queue in POLLED_QUEUES
        for arg in ("--dynamic-config-value", f"history.{queue}ProcessorMaxPollRPS={rps}")
    ]


WORKFLOW = TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
ACTIVITY = TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
SAGA_QUEUES = (
    (names.WORKFLOW_TASK_QUEUE, WORKFLOW),
    (names.ORDERS_TASK_QUEUE, ACTIVITY),
    (names.PAYMENTS_TASK_QUEUE, ACTIVITY),
    (names.DELIVERIES_TASK_QUEUE, ACTIVITY),
)
BASELINE_QUEUES = ((BASELINE_TASK_QUEUE, WORKFLOW), (BASELINE_ACTIVITY_TASK_QUEUE, ACTIVITY))


class BenchError(RuntimeError):
    """The bench could not run (a process did not start or died); the message says where."""


@dataclass(frozen=True)
class StackOptions:
    """What the command line chooses about the stack."""

    database_url: str | None = None
    poll_rps: int = DEFAULT_POLL_RPS
    server_config: tuple[str, ...] = ()  # more dynamic config of the dev server, KEY=VALUE
    payment_window_seconds: float = 1800.0
    baseline: bool = True
    choreography: bool = False  # also a NATS server and an API placing choreographed orders
    other_routing_api: bool = False  # also an API placing orchestrated orders OTHER_ROUTING


def new_run_dir(out: Path, suffix: str = "") -> Path:
    """A fresh ``<out>/<timestamp><suffix>/`` folder (``out`` is ``.bench/``, gitignored)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = out / f"{stamp}{suffix}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = out / f"{stamp}{suffix}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def prepare_database(url: str) -> Engine:
    """Empty schema at the latest migration, plus dealers with capacity to spare; returns
    the bench's engine."""
    engine = make_engine(url)
    drop_schema(engine)  # a PostgreSQL database may hold an earlier run
    migrate(engine)
    with session(engine) as db:
        for i in range(DEALERS):
            db.add(
                new_dealer(
                    f"Bench dealer {i}", f"+0-bench-{i:04d}", PROVINCE, CITY, DEALER_CAPACITY
                )
            )
        db.commit()
    return engine


def compile_query(engine: Engine, statement: ClauseElement) -> str:
    """``statement`` as SQL text for ``engine``'s dialect, constants inlined."""
    return str(statement.compile(engine, compile_kwargs={"literal_binds": True}))


def read_rows(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    """Run a read-only query in a ``read_session`` (on SQLite: no write lock taken)."""
    with read_session(engine) as db:
        return [tuple(row) for row in db.connection().exec_driver_sql(sql).fetchall()]


def door_settings(url: str, routing: ActivityRouting = ActivityRouting.WORKFLOW) -> Settings:
    """The bench's own door: orchestrated sagas in the run's database routed by ``routing``,
    no credentials (order ids need ``AUTH_MODE=dev`` or an ORDER_ID_SECRET), no NATS."""
    return Settings(
        database_url=url,
        auth_mode="dev",
        saga_style=SagaStyle.ORCHESTRATION,
        activity_routing=routing,
        nats_url=None,
        # The bench decides each payment once; the limit is there for looping clients.
        decisions_per_minute=100_000,
    )


@dataclass
class BenchStack:
    """The running processes, a Temporal client, the engine, the doors, the resource monitor;
    ``choreography_api`` only with ``StackOptions.choreography``, ``other_routing_api`` only with
    ``StackOptions.other_routing_api``."""

    run_dir: Path
    stack: Stack
    baseline: Proc | None
    client: Client
    engine: Engine
    # The doors, orchestrated style, one per routing: the bench places and steers sagas here.
    doors: dict[ActivityRouting, Sagas]
    monitor: ResourceMonitor
    choreography_api: Proc | None = None
    choreography_api_url: str | None = None
    other_routing_api: Proc | None = None
    other_routing_api_url: str | None = None
    server_metrics_url: str | None = None  # the Temporal server's Prometheus endpoint

    @property
    def sagas(self) -> Sagas:
        """The door of the default routing."""
        return self.doors[DEFAULT_ROUTING]

    def check_alive(self) -> None:
        """Raise BenchError if any process of the stack has exited."""
        procs: list[Proc | None] = [self.stack.temporal, self.stack.worker, self.stack.api]
        procs += [self.stack.broker, self.choreography_api, self.other_routing_api, self.baseline]
        for proc in filter(None, procs):
            if not proc.alive:
                raise BenchError(f"the {proc.name} process exited; see {proc.log}")


@contextlib.asynccontextmanager
async def running_stack(run_dir: Path, options: StackOptions) -> AsyncIterator[BenchStack]:
    """Start everything in ``run_dir`` and stop all of it (SIGTERM, bounded waits) on exit,
    on error and on cancellation (Ctrl-C)."""
    url = normalise_url(options.database_url or f"sqlite:///{run_dir / 'orders.db'}")
    try:
        engine = await asyncio.to_thread(prepare_database, url)
    except SQLAlchemyError as err:
        shown = make_url(url).render_as_string(hide_password=True)
        raise BenchError(f"cannot prepare the database {shown}: {err}") from err
    metrics_port = free_port()
    stack = Stack(
        data_dir=run_dir,
        database_url=url,
        payment_window=options.payment_window_seconds,
        dealer_window=DEALER_WINDOW_SECONDS,
        temporal_in_memory=True,
        server_args=[
            *poll_rate_args(options.poll_rps),
            *(arg for kv in options.server_config for arg in ("--dynamic-config-value", kv)),
            "--metrics-port",
            str(metrics_port),
        ],
        # Without a NATS server of its own, a NATS_URL inherited from the shell (a system NATS)
        # is blanked: the worker would otherwise run the choreography against it.
        extra_env={
            "LOG_LEVEL": "WARNING",
            # The stack's API routes the default way, whatever the shell says.
            "ACTIVITY_ROUTING": DEFAULT_ROUTING.value,
            **({} if options.choreography else {"NATS_URL": ""}),
        },
        fault_injection=False,
        supervise_worker=False,
        nats=options.choreography,
        # Explicit, whatever the shell says: this API measures the orchestrated saga.
        saga_style=SagaStyle.ORCHESTRATION.value,
    )
    baseline = (
        Proc(
            "baseline",
            [sys.executable, "-m", "tools.bench.baseline_worker"],
            stack.env,
            run_dir / "logs" / "baseline.log",
        )
        if options.baseline
        else None
    )
    choreography_port, other_routing_port = free_port(), free_port()
    choreography_api = (
        _second_api(
            stack, CHOREOGRAPHY_API, choreography_port, SAGA_STYLE=SagaStyle.CHOREOGRAPHY.value
        )
        if options.choreography
        else None
    )
    other_routing_api = (
        _second_api(
            stack, OTHER_ROUTING_API, other_routing_port, ACTIVITY_ROUTING=OTHER_ROUTING.value
        )
        if options.other_routing_api
        else None
    )
    extras = [p for p in (baseline, choreography_api, other_routing_api) if p is not None]
    _started.extend([stack.temporal, stack.worker, stack.api, *extras])
    if stack.broker is not None:
        _started.append(stack.broker)
    monitor: ResourceMonitor | None = None
    doors: dict[ActivityRouting, Sagas] = {}
    try:
        await _start(stack, extras)
        # Compressed or not as the stack's own processes (they read the same environment).
        client = await Client.connect(
            stack.temporal_address,
            data_converter=data_converter(door_settings(url)),
            grpc_compression=COMPRESSION[Settings().temporal_grpc_compression],
        )
        for routing in ActivityRouting:
            doors[routing] = Sagas(engine, door_settings(url, routing), client=client)
        bench = BenchStack(run_dir, stack, baseline, client, engine, doors, ResourceMonitor({}))
        bench.server_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        if choreography_api is not None:
            bench.choreography_api = choreography_api
            bench.choreography_api_url = f"http://127.0.0.1:{choreography_port}"
            await _wait_healthy(bench, bench.choreography_api_url)
        if other_routing_api is not None:
            bench.other_routing_api = other_routing_api
            bench.other_routing_api_url = f"http://127.0.0.1:{other_routing_port}"
            await _wait_healthy(bench, bench.other_routing_api_url)
        queues = SAGA_QUEUES + (BASELINE_QUEUES if baseline is not None else ())
        await _wait_for_pollers(bench, queues)
        monitor = bench.monitor = ResourceMonitor(_leaders(bench))
        monitor.start()
        yield bench
    finally:
        if monitor is not None:
            await monitor.stop()
        for door in doors.values():
            await door.aclose()
        await _stop_all(stack, extras)
        engine.dispose()


def _second_api(stack: Stack, name: str, port: int, **env: str) -> Proc:
    """Another API (not started) named ``name``: the stack's API command line and environment,
    on ``port``, with ``env`` on top (e.g. ``SAGA_STYLE=choreography``)."""
    argv = list(stack.api.argv)
    argv[argv.index("--port") + 1] = str(port)
    return Proc(name, argv, {**stack.env, **env}, stack.data_dir / "logs" / f"{name}.log")


def _leaders(bench: BenchStack) -> dict[str, int]:
    """The session leader of each process the monitor measures, by the name it reports."""
    stack = bench.stack
    leaders = {"worker": _pid(stack.worker), "server": _pid(stack.temporal), "api": _pid(stack.api)}
    postmaster = _local_postmaster(bench.engine)
    if postmaster is not None:
        leaders[DATABASE] = postmaster
    if bench.baseline is not None:
        leaders["baseline"] = _pid(bench.baseline)
    if stack.broker is not None:
        leaders[NATS] = _pid(stack.broker)
    if bench.choreography_api is not None:
        leaders[CHOREOGRAPHY_API] = _pid(bench.choreography_api)
    if bench.other_routing_api is not None:
        leaders[OTHER_ROUTING_API] = _pid(bench.other_routing_api)
    return leaders


def _local_postmaster(engine: Engine) -> int | None:
    """The pid of the PostgreSQL server of ``engine`` when it runs on this machine and this
    user may read its data directory (a superuser); None otherwise (SQLite: in-process)."""
    if engine.dialect.name != "postgresql" or engine.url.host not in LOCAL_HOSTS:
        return None
    try:
        with engine.connect() as db:
            data_dir = db.exec_driver_sql("SHOW data_directory").scalar_one()
        return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
    except (SQLAlchemyError, OSError, ValueError, IndexError):
        return None


async def _wait_healthy(bench: BenchStack, url: str) -> None:
    """Wait until the API at ``url`` answers ``/healthz`` (BenchError if a process dies or
    it does not within READY_SECONDS)."""
    # The stack's own readiness check, for an API the stack does not start itself.
    waiting = asyncio.create_task(Stack._wait_http(f"{url}/healthz", READY_SECONDS))
    try:
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=0.2)
            bench.check_alive()
        waiting.result()
    except TimeoutError:
        raise BenchError(f"the API at {url} did not answer within {READY_SECONDS:.0f} s") from None
    finally:
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting


# Every process started, for kill_leftovers().
_started: list[Proc] = []


def kill_leftovers() -> None:
    """Last resort once the event loop is gone (a second Ctrl-C interrupted the orderly
    stop): SIGKILL the process group of every child not seen to exit. An unreaped child's
    pid cannot have been reused, so this never hits a stranger."""
    for proc in _started:
        if proc.process is not None and proc.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.process.pid, signal.SIGKILL)


async def _start(stack: Stack, extras: Sequence[Proc]) -> None:
    """Start the stack, failing fast (with the log to read) when a process exits meanwhile:
    Stack.start would otherwise wait out its full readiness timeout. Then start ``extras``
    (the bench's own processes: baseline worker, choreography API), without waiting."""
    starting = asyncio.create_task(stack.start())
    procs = [p for p in (stack.temporal, stack.broker, stack.worker, stack.api) if p]
    try:
        while not starting.done():
            await asyncio.wait({starting}, timeout=0.2)
            for proc in procs:
                if proc.process is not None and proc.process.returncode is not None:
                    raise BenchError(f"the {proc.name} process exited at startup; see {proc.log}")
        try:
            starting.result()
        except TimeoutError:
            raise BenchError(
                f"the stack did not come up within 60 s; see the logs in {stack.data_dir / 'logs'}"
            ) from None
    finally:
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
    for proc in extras:
        await proc.start()


async def _stop_all(stack: Stack, extras: Sequence[Proc]) -> None:
    for proc in extras:
        await proc.stop()
    await stack.stop()


def _pid(proc: Proc) -> int:
    assert proc.process is not None, f"{proc.name} was started"
    return proc.process.pid


async def _wait_for_pollers(
    bench: BenchStack, queues: Sequence[tuple[str, TaskQueueType.ValueType]]
) -> None:
    """Wait until a worker polls every queue, so the first measured start is not the one
    that waits for workers to come up."""
    deadline = time.monotonic() + READY_SECONDS
    for queue, kind in queues:
        while True:
            bench.check_alive()
            described = await bench.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=bench.client.namespace,
                    task_queue=TaskQueue(name=queue),
                    task_queue_type=kind,
                )
            )
            if described.pollers:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"no worker polls {queue} after {READY_SECONDS:.0f}s")
            await asyncio.sleep(0.1)
