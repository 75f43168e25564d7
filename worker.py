"""Run the sagas' workers: the orchestrated saga's Temporal workers and, with ``NATS_URL``
set, the choreographed saga's consumers, relay and sweepers.

    python worker.py                      # everything in one process
    python worker.py --queue payments     # only PaymentService's activities
    python worker.py --queue order-process --queue orders
    python worker.py --events             # only the choreographed saga's parts
    python worker.py --check [...]        # exit 0 if what it would run can reach its services
    python worker.py --drain              # an older build's workers, until its sagas end

Each service's activities poll their own task queue, so each can scale as its own process;
the saga's worker serves them too, on its own queue, for sagas routed there (ACTIVITY_ROUTING).
Temporal workers run as this build's Worker Deployment Version (``versions.py``): a saga runs
on the build it started on. Any number of ``--events`` processes share the JetStream consumers.
"""

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client, WorkflowHistory
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer, Worker, WorkerDeploymentConfig
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.deliveries import DeliveryActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from bootstrap import open_parts
from choreography.runtime import jetstream_answers
from domain import names
from sagas import builds
from sagas.temporal import check_namespace, connect_temporal, temporal_misconfiguration
from services import retention
from settings import WORKER_POLLERS, WORKFLOW_CACHE_SIZE, Settings, load_settings
from store.db import make_engine, transaction
from store.models import utcnow
from telemetry import configure_tracing, tracing_interceptors
from versions import code_build_id
from workflows import OrderProcessWorkflow

log = logging.getLogger("worker")
GRACEFUL_SHUTDOWN = timedelta(seconds=10)


def service_activities(engine: Engine) -> dict[str, list[Callable[..., Any]]]:
    """The activities of each service task queue, bound to ``engine``."""
    orders = OrderActivities(engine)
    payments = PaymentActivities(engine)
    deliveries = DeliveryActivities(engine)
    return {
        names.ORDERS_TASK_QUEUE: [
            orders.create_order,
            orders.confirm_order,
            orders.mark_order_delivered,
            orders.cancel_order,
        ],
        names.PAYMENTS_TASK_QUEUE: [
            payments.create_payment,
            payments.complete_payment,
            payments.expire_payment,
            payments.cancel_or_refund_payment,
        ],
        names.DELIVERIES_TASK_QUEUE: [
            deliveries.create_delivery,
            deliveries.assign_dealer,
            deliveries.complete_delivery,
            deliveries.cancel_delivery,
        ],
    }


def every_step(engine: Engine) -> list[Callable[..., Any]]:
    """Every service's activities, bound to ``engine``: what the saga's worker serves."""
    return [fn for fns in service_activities(engine).values() for fn in fns]


def workflow_runner(*workflow_modules: str) -> SandboxedWorkflowRunner:
    """The saga's sandbox, still checking every call, with ``domain``, ``workflows`` and
    ``workflow_modules`` imported once per process rather than per run: they hold no mutable
    module state, and re-importing them for every run is costly."""
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(
            "domain", "pydantic", "workflows", *workflow_modules
        )
    )


def saga_replayer(
    workflow: type = OrderProcessWorkflow, converter: DataConverter = pydantic_data_converter
) -> Replayer:
    """Replays saga histories as a worker rebuilding a saga does (same sandbox; ``converter``:
    the one that wrote them, a client's ``data_converter`` for a server's histories)."""
    return Replayer(
        workflows=[workflow],
        data_converter=converter,
        workflow_runner=workflow_runner(),
    )


async def replay_failures_at_every_task(
    history: WorkflowHistory, converter: DataConverter = pydantic_data_converter
) -> list[str]:
    """Replay ``history`` cut after each workflow task start (what a worker rebuilding the
    saga gets then), and whole. Returns the failures as ``"<events> events: <error>"``."""
    events = list(history.events)
    cuts = [
        index + 1
        for index, event in enumerate(events)
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
    ]
    replayer = saga_replayer(converter=converter)
    failures = []
    for cut in dict.fromkeys([*cuts, len(events)]):
        replay = await replayer.replay_workflow(
            WorkflowHistory(history.workflow_id, events[:cut]), raise_on_replay_failure=False
        )
        if replay.replay_failure is not None:
            failures.append(f"{cut} events: {replay.replay_failure}")
    return failures


def deployment_version(settings: Settings) -> WorkerDeploymentVersion | None:
    """The Worker Deployment Version this process's workers run as (None: unversioned)."""
    if not settings.worker_versioning:
        return None
    build_id = settings.worker_build_id or code_build_id()
    return WorkerDeploymentVersion(settings.worker_deployment_name, build_id)


def deployment_config(version: WorkerDeploymentVersion | None) -> WorkerDeploymentConfig | None:
    """A worker's deployment options for ``version`` (None: unversioned). Every saga is
    pinned to the build it started on, so a change to the saga is a new build."""
    if version is None:
        return None
    return WorkerDeploymentConfig(
        version, use_worker_versioning=True, default_versioning_behavior=VersioningBehavior.PINNED
    )


def workflow_worker(
    client: Client,
    task_queue: str,
    *,
    activities: Sequence[Callable[..., Any]] = (),
    executor: ThreadPoolExecutor | None = None,
    max_concurrent_activities: int = 16,
    cache_size: int = WORKFLOW_CACHE_SIZE,
    pollers: int = WORKER_POLLERS,
    version: WorkerDeploymentVersion | None = None,
    workflow: type = OrderProcessWorkflow,
) -> Worker:
    """The saga's workflow worker (``workflow``: another build's saga, in the deploy drill).
    With ``activities`` (run on ``executor``) it also serves the steps of sagas routed to its
    own queue (``ActivityRouting.WORKFLOW``): Temporal then hands each step to this worker in
    its reply to the workflow task that scheduled it."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[workflow],
        workflow_runner=workflow_runner(),
        max_cached_workflows=cache_size,
        deployment_config=deployment_config(version),
        max_concurrent_workflow_task_polls=pollers,
        max_concurrent_activity_task_polls=pollers,
        activities=list(activities),
        activity_executor=executor if activities else None,
        max_concurrent_activities=max_concurrent_activities,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )


def build_workers(
    client: Client,
    engine: Engine,
    executor: ThreadPoolExecutor,
    queues: Sequence[str] = names.ALL_TASK_QUEUES,
    *,
    max_concurrent_activities: int = 16,
    cache_size: int = WORKFLOW_CACHE_SIZE,
    pollers: int = WORKER_POLLERS,
    version: WorkerDeploymentVersion | None = None,
) -> list[Worker]:
    """One worker per requested task queue, each as ``version`` (None: unversioned);
    activities run on ``executor``'s threads. The saga's worker serves every step too, so a
    saga runs whichever routing it started with."""
    activities = service_activities(engine)
    workers = []
    for queue in queues:
        if queue == names.WORKFLOW_TASK_QUEUE:
            workers.append(
                workflow_worker(
                    client,
                    queue,
                    activities=every_step(engine),
                    executor=executor,
                    max_concurrent_activities=max_concurrent_activities,
                    cache_size=cache_size,
                    pollers=pollers,
                    version=version,
                )
            )
        else:
            workers.append(
                Worker(
                    client,
                    task_queue=queue,
                    activities=activities[queue],
                    activity_executor=executor,
                    max_concurrent_activities=max_concurrent_activities,
                    max_concurrent_activity_task_polls=pollers,
                    # On shutdown, let running activities finish their transaction and
                    # report, rather than have Temporal retry them after a timeout.
                    graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
                    deployment_config=deployment_config(version),
                )
            )
    return workers


async def promote(
    client: Client, version: WorkerDeploymentVersion, policy: str, *, within: float = 60
) -> bool:
    """Make ``version`` its deployment's current version as ``policy`` says (``always``;
    ``first``, while there is none; ``never``), retrying until the server knows it. Returns
    whether this call made it current."""
    if policy == "never":
        return False
    namespace, name = client.namespace, version.deployment_name
    if policy == "first":
        try:
            described = await client.workflow_service.describe_worker_deployment(
                DescribeWorkerDeploymentRequest(namespace=namespace, deployment_name=name)
            )
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        else:
            if described.worker_deployment_info.routing_config.current_deployment_version.build_id:
                return False
    request = SetWorkerDeploymentCurrentVersionRequest(
        namespace=namespace, deployment_name=name, build_id=version.build_id, identity="worker.py"
    )
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            await client.workflow_service.set_worker_deployment_current_version(request)
        except RPCError as err:
            # The version is created by its workers' first polls, a moment after they start.
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.debug("%s not current yet: %s", version, err.message)
            await asyncio.sleep(0.2)
            continue
        log.info("build %s is now the current version of %s", version.build_id, name)
        return True


async def until_drained(
    client: Client, version: WorkerDeploymentVersion, *, interval: float = 5
) -> None:
    """Return once no open saga is pinned to ``version`` (twice in a row, ``interval`` apart,
    so a saga just moving is seen)."""
    quiet = 0
    while quiet < 2:
        open_sagas = await builds.open_sagas(client, version.deployment_name, version.build_id)
        quiet = quiet + 1 if open_sagas == 0 else 0
        if open_sagas:
            log.info("build %s: %d saga(s) still pinned to it", version.build_id, open_sagas)
        await asyncio.sleep(interval)


def delete_expired(engine: Engine, settings: Settings) -> int:
    """Delete every row past its retention (``services.retention``), a batch per
    transaction; returns how many."""
    total = 0
    while True:
        with transaction(engine) as db:
            deleted = retention.delete_expired(
                db,
                utcnow(),
                event_log=settings.event_log_retention,
                idempotency_keys=settings.idempotency_key_retention,
            )
        total += sum(deleted.values())
        if not any(deleted.values()):
            return total


async def keep_tidy(engine: Engine, settings: Settings) -> None:
    """:func:`delete_expired` every ``RETENTION_INTERVAL_SECONDS``, until cancelled (several
    workers doing it at once delete each row once)."""
    while True:
        try:
            deleted = await asyncio.to_thread(delete_expired, engine, settings)
            if deleted:
                log.info("retention: deleted %d rows", deleted)
        except Exception as err:
            log.warning("retention failed, trying again later: %s", err)
        await asyncio.sleep(settings.retention_interval_seconds)


async def run(
    settings: Settings, queues: Sequence[str], *, events: bool, drain: bool = False
) -> None:
    """Wire engine, client and workers once, run until SIGINT/SIGTERM, then shut down cleanly.
    ``queues``: the task queues to poll (none: no Temporal); ``events``: the choreographed
    saga's parts too; ``drain``: an older build's workers only, until no saga is pinned to it.
    """
    tracer_provider = configure_tracing(settings, "order-saga-worker")
    parts = open_parts(
        settings,
        temporal="now" if queues else "none",
        nats="consume" if events and not drain else "none",
        migrate_schema=not drain,  # waits if the API is migrating too
        interceptors=tracing_interceptors(tracer_provider),
        tracer_provider=tracer_provider,
    )
    version = deployment_version(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        with ThreadPoolExecutor(
            settings.activity_threads, thread_name_prefix="activity"
        ) as executor:
            async with parts as opened, contextlib.AsyncExitStack() as stack:
                client, engine = opened.client, opened.engine
                if opened.broker is not None:
                    log.info("choreographed saga's consumers on %s", settings.nats_url)
                if client is not None:
                    workers = build_workers(
                        client,
                        engine,
                        executor,
                        queues,
                        max_concurrent_activities=settings.activity_threads,
                        cache_size=settings.workflow_cache_size,
                        pollers=settings.worker_pollers,
                        version=version,
                    )
                    for worker in workers:
                        await stack.enter_async_context(worker)
                    log.info(
                        "worker polling %s on %s as %s",
                        ", ".join(queues),
                        settings.temporal_address,
                        version or "unversioned",
                    )
                    if version is not None and not drain:
                        await promote(client, version, settings.worker_promote)
                if not drain:
                    tidying = asyncio.create_task(keep_tidy(engine, settings), name="retention")
                    stack.callback(tidying.cancel)
                if settings.metrics_bind_address:
                    log.info(
                        "Prometheus metrics on http://%s/metrics", settings.metrics_bind_address
                    )
                # What is built so far lives as long as the process: keep it out of the
                # collector's full passes. Collect first: frozen garbage is never freed.
                gc.collect()
                gc.freeze()
                if drain and client is not None and version is not None:
                    drained = asyncio.create_task(until_drained(client, version))
                    await asyncio.wait(
                        [drained, asyncio.create_task(stop.wait())],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if drained.done():
                        log.info("build %s is drained: its workers stop", version.build_id)
                    drained.cancel()
                else:
                    await stop.wait()
                log.info("worker shutting down")
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # flush the last spans


async def reachable(settings: Settings, queues: Sequence[str], *, events: bool) -> list[str]:
    """What a worker running ``queues`` (and ``events``) cannot reach: the database, Temporal
    and its namespace, NATS with JetStream. Empty when everything answers."""
    problems = []
    try:
        engine = make_engine(settings.database_url_value, **settings.engine_options())
        try:
            await asyncio.to_thread(lambda: engine.connect().close())
        finally:
            engine.dispose()
    except Exception as err:
        problems.append(f"database: {type(err).__name__}: {err}")
    if queues:
        try:
            async with asyncio.timeout(10):
                await check_namespace(await connect_temporal(settings))
        except RPCError as err:
            problems.append(f"temporal: {temporal_misconfiguration(err) or err.message}")
        except Exception as err:
            problems.append(f"temporal: {type(err).__name__}: {err}")
    if events:
        try:
            async with asyncio.timeout(10):
                await jetstream_answers(settings)
        except TimeoutError:
            problems.append(f"nats: no server answered within 10 s at {settings.nats_url}")
        except Exception as err:
            problems.append(f"nats: {type(err).__name__}: {err}")
    return problems


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--queue",
        action="append",
        choices=names.ALL_TASK_QUEUES,
        help="task queue to poll (repeatable); default: all of them",
    )
    parser.add_argument(
        "--events",
        action="store_true",
        help="only the choreographed saga's consumers, relay and sweepers (needs NATS_URL)",
    )
    parser.add_argument(
        "--drain",
        action="store_true",
        help="run this build's Temporal workers until no saga is pinned to it, then exit 0",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check that the services this worker needs answer, then exit (0: they all do)",
    )
    args = parser.parse_args(argv)
    settings = load_settings("worker")
    if args.events and settings.nats_url is None:
        parser.error("--events needs NATS_URL (the NATS JetStream server)")
    if args.events and args.queue:
        parser.error("--events runs no Temporal task queue: drop --queue")
    if args.drain and (args.events or not settings.worker_versioning):
        parser.error(
            "--drain runs a versioned build's Temporal workers: no --events, versioning on"
        )
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.events:
        queues: Sequence[str] = ()
    else:
        queues = args.queue or names.ALL_TASK_QUEUES
    # By default one process runs everything there is: the choreography too when NATS is set.
    events = args.events or (not args.queue and settings.nats_url is not None)
    if args.check:
        problems = asyncio.run(reachable(settings, queues, events=events))
        for problem in problems:
            print(problem, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Without finalizing: a process leaving with a Temporal client connected can abort
        # in the SDK's native runtime, and a health check must exit with what it found.
        os._exit(1 if problems else 0)
    asyncio.run(run(settings, queues, events=events and not args.drain, drain=args.drain))


if __name__ == "__main__":
    main()
