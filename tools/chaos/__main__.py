"""``python -m tools.chaos``: drive sagas through the real stack while breaking it, then check.

    python -m tools.chaos                             # default size, PostgreSQL, orchestration
    python -m tools.chaos --routing service           # its steps on each service's task queue
    python -m tools.chaos --style choreography        # the choreographed saga (NATS JetStream)
    python -m tools.chaos --sagas 40 --kills 3 --restarts 1 --outages 1   # the CI size
    python -m tools.chaos --database sqlite

Orchestration: the worker is killed at the workflow's fault points, the Temporal server is
restarted. Choreography: the worker is killed at the outbox's and the consumers' fault
points, the API once after it commits an event, and the NATS server is restarted. Both: the
database is taken away. Prints a table of outcomes and ends with one line:
``chaos: <style>, [routing <R>,] seed <S>, <N> sagas, <K> worker kills, [<A> API kills,] <M>
Temporal|broker restarts, <D> db outages, <V> violations, <T> s`` (the routing of the
orchestrated saga's steps: ``--routing``, or the default the processes read). Exits non-zero
when any invariant is violated.
"""

import argparse
import asyncio
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlmodel import select
from temporalio.client import Client

from domain.payloads import ServiceQueues
from domain.status import ActivityRouting
from sagas.temporal import data_converter
from settings import Settings
from store.db import drop_schema, make_engine, migrate, normalise_url, session
from store.models import OrderRow, new_dealer
from tools.chaos.checks import (
    check_consumers,
    check_database,
    check_events,
    check_intent,
    check_style,
    check_temporal,
    event_summary,
    outcome_table,
    wait_until_events_settle,
)
from tools.chaos.customers import Api, DeadLetteredError, Saga, pick_scenario, run_saga
from tools.chaos.stack import Stack

ORCHESTRATION, CHOREOGRAPHY = "orchestration", "choreography"
# Where a crash hurts most, per saga style (see faults.py): armed first, one per worker kill.
FAULT_POINTS = {
    ORCHESTRATION: [
        "after_commit.create_order",
        "after_commit.create_payment",
        "after_commit.complete_payment",
        "refund",
        "assign_dealer",
        "after_commit.assign_dealer",
        "compensation",
    ],
    CHOREOGRAPHY: [
        "outbox.after_commit",  # committed, not published: the relay must publish it
        "outbox.after_publish",  # published, not marked: published again, a duplicate
        "consumer.after_commit",  # applied, not acknowledged: redelivered, the inbox drops it
    ],
}
# The API publishes what it commits (choreography): killed there once, the worker's relay
# must publish the event for it.
API_FAULT_POINT = "outbox.after_commit"
# How long the relay and the consumers get to finish the last sagas' events before the checks.
EVENTS_SETTLE_WITHIN = 60
DEALERS = [("Tehran", "Tehran", 10)] * 6 + [("Isfahan", "Isfahan", 2)]


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Database:
    """The service database of the run, and how to take it away for a while."""

    def __init__(self, kind: str, url: str | None, data_dir: Path) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.path = data_dir / "orders.db"
            self.url = f"sqlite:///{self.path}"
        else:
            self.url = normalise_url(url or "postgresql://postgres@127.0.0.1:5432/chaos")

    def reset(self) -> None:
        if self.kind == "postgresql":
            self._create_database()
        engine = make_engine(self.url)
        drop_schema(engine)  # every table, alembic_version included
        migrate(engine)
        with session(engine) as db:
            for i, (province, city, capacity) in enumerate(DEALERS):
                db.add(new_dealer(f"Dealer {i}", f"+0-{i:04d}", province, city, capacity))
            db.commit()
        engine.dispose()

    def _create_database(self) -> None:
        base, _, name = self.url.rpartition("/")
        admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if exists.first() is None:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()

    async def outage(self, seconds: float) -> None:
        if self.kind == "sqlite":
            await asyncio.to_thread(self._hold_exclusive_lock, seconds)
            return
        version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
        ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
        await asyncio.to_thread(subprocess.run, [*ctl, "stop", "-m", "fast"], check=True)
        try:
            await asyncio.sleep(seconds)
        finally:
            # Also when the run is interrupted meanwhile: never leave the database stopped.
            await asyncio.to_thread(subprocess.run, [*ctl, "start"], check=True)

    def _hold_exclusive_lock(self, seconds: float) -> None:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            time.sleep(seconds)
            conn.execute("ROLLBACK")
        finally:
            conn.close()


class Chaos:
    """Performs the planned worker (and API) kills, server restarts and database outages.

    The server restarted is the one the run's saga style depends on: Temporal for the
    orchestrated saga, NATS for the choreographed one."""

    def __init__(
        self, stack: Stack, database: Database, rng: random.Random, args: argparse.Namespace
    ) -> None:
        self.stack, self.database, self.rng, self.args = stack, database, rng, args
        self.kills = self.api_kills = self.restarts = self.outages = 0
        self.fault_points_fired: list[str] = []
        self.settled = 0  # sagas settled so far, counted by the driver

    async def _until_settled(self, count: float) -> None:
        # Spread the chaos over the whole run: the next blow waits for the sagas to move on.
        while self.settled < min(count, self.args.sagas - 1):
            await asyncio.sleep(0.2)

    async def run(self) -> None:
        """The fault points first, then the other blows in a random order, spread over the
        run."""
        await self._fire_fault_points()
        actions = ["kill"] * (self.args.kills - self.kills)
        actions += ["restart"] * self.args.restarts + ["outage"] * self.args.outages
        self.rng.shuffle(actions)
        step = self.args.sagas / (len(actions) + 1)
        for i, action in enumerate(actions, start=1):
            await self._until_settled(i * step)
            await asyncio.sleep(self.rng.uniform(0.0, 1.0))
            await self._strike(action)

    async def _fire_fault_points(self) -> None:
        """The worker killed at each of the style's fault points (up to ``--kills``), and
        for the choreographed saga the API once where it has committed an event."""
        for point in FAULT_POINTS[self.args.style][: self.args.kills]:
            if await self._fire_fault_point(self.stack.fault_dir, point, "worker"):
                self.kills += 1
                self.fault_points_fired.append(point)
        api_faults = self.stack.api_fault_dir
        if api_faults is not None and await self._fire_fault_point(
            api_faults, API_FAULT_POINT, "API"
        ):
            self.api_kills += 1
            self.fault_points_fired.append(f"{API_FAULT_POINT} (API)")

    async def _strike(self, action: str) -> None:
        if action == "kill":
            await self._kill_worker()
        elif action == "restart":
            await self._restart_server()
        else:
            log(f"database outage ({self.database.kind}) for {self.args.outage_seconds}s")
            await self.database.outage(self.args.outage_seconds)
            self.outages += 1

    async def _kill_worker(self) -> None:
        # A worker the supervisor has not brought back yet cannot die again: wait for it.
        while not self.stack.worker.alive:
            await asyncio.sleep(0.1)
        log("SIGKILL worker")
        await self.stack.kill_worker()
        self.kills += 1

    async def _restart_server(self) -> None:
        """Restart the saga's server on its data (SIGTERM and SIGKILL in turn): Temporal for
        the orchestrated saga; NATS, same port and store, for the choreographed one."""
        sig = signal.SIGKILL if self.restarts % 2 else signal.SIGTERM
        if self.args.style == CHOREOGRAPHY:
            log(f"restart NATS server ({sig.name})")
            await self.stack.restart_broker(sig)
        else:
            log(f"restart Temporal server ({sig.name})")
            await self.stack.restart_temporal(sig)
        self.restarts += 1

    async def _fire_fault_point(self, folder: Path, point: str, who: str) -> bool:
        """Arm ``point`` in ``folder`` and wait (up to 60 s) for ``who`` to die there."""
        armed = folder / point
        armed.touch()
        log(f"armed fault point {point} ({who})")
        deadline = time.monotonic() + 60
        while armed.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if armed.exists():
            armed.unlink(missing_ok=True)
            log(f"fault point {point} was not reached by the {who}; a random kill replaces it")
            return False
        log(f"{who} killed at {point}")
        await asyncio.sleep(self.rng.uniform(0.5, 1.5))
        return True


async def main(args: argparse.Namespace) -> int:
    """The whole run: set up, drive the sagas while the blows fall, check, report."""
    _stop_on_sigterm()
    started = time.monotonic()
    rng = random.Random(args.seed)
    database, stack = _set_up(args)
    await stack.start()
    api = Api(stack.api_url)
    chaos = Chaos(stack, database, rng, args)
    sagas = _plan_sagas(args, rng)
    try:
        await _drive(api, chaos, sagas, rng, args)
        violations, summary = await _check(database, stack, api, sagas, args)
    finally:
        await api.close()
        await stack.stop()
    _report(sagas, chaos, api, stack, summary, violations)
    print(_result_line(args, chaos, len(violations), time.monotonic() - started))
    return 1 if violations else 0


def _stop_on_sigterm() -> None:
    """Make SIGTERM stop the run as Ctrl-C does: a cancel of the running task."""
    # The cancel lets the stack's ``finally`` stop every child process (they run in their own
    # sessions and would outlive us).
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def _set_up(args: argparse.Namespace) -> tuple[Database, Stack]:
    """A fresh database with its dealers, and the stack over it (not started yet)."""
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="chaos-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(args.database, args.database_url, data_dir)
    database.reset()
    choreography = args.style == CHOREOGRAPHY
    if choreography:  # a fresh database needs a fresh broker: no events of an earlier run
        shutil.rmtree(data_dir / "nats", ignore_errors=True)
    stack = Stack(
        data_dir=data_dir,
        database_url=database.url,
        payment_window=args.payment_window,
        dealer_window=args.dealer_window,
        nats=choreography,
        saga_style=args.style,
        activity_routing=args.routing,
        api_fault_dir=data_dir / "faults" / "api" if choreography else None,
        supervise_api=choreography,
    )
    routing = _routing(args)
    style = args.style if routing is None else f"{args.style}, routing {routing}"
    log(f"data in {data_dir}; database {database.kind}; saga style {style}")
    return database, stack


def _routing(args: argparse.Namespace) -> ActivityRouting | None:
    """The routing of the run's orchestrated sagas: ``--routing``, else the one the stack's
    processes read (``ACTIVITY_ROUTING`` or the settings' default). None for choreography."""
    if args.style == CHOREOGRAPHY:
        return None
    if args.routing is not None:
        return ActivityRouting(args.routing)
    return Settings(auth_mode="dev").activity_routing


def _plan_sagas(args: argparse.Namespace, rng: random.Random) -> list[Saga]:
    """The run's sagas, each with its scenario and an Idempotency-Key unique to the run."""
    run_id = f"{int(time.time())}-{rng.randrange(10**6)}"
    return [Saga(i, pick_scenario(rng), f"chaos-{run_id}-{i}") for i in range(args.sagas)]


async def _drive(
    api: Api, chaos: Chaos, sagas: list[Saga], rng: random.Random, args: argparse.Namespace
) -> None:
    """Every saga through the API, ``--in-flight`` at a time, while the blows fall."""
    slots = asyncio.Semaphore(args.in_flight)
    started = time.monotonic()
    settling = (_settle(api, chaos, saga, rng, slots, args) for saga in sagas)
    await asyncio.gather(chaos.run(), *settling)
    log(f"driving done in {time.monotonic() - started:.0f}s; checking")


async def _settle(
    api: Api,
    chaos: Chaos,
    saga: Saga,
    rng: random.Random,
    slots: asyncio.Semaphore,
    args: argparse.Namespace,
) -> None:
    """Drive one saga to its end in a free slot, and count it settled (it paces the blows)."""
    async with slots:
        try:
            await run_saga(api, saga, random.Random(rng.random()), args.settle_within)
        except (TimeoutError, DeadLetteredError) as err:
            saga.problems.append(str(err))
        chaos.settled += 1
        if chaos.settled % max(1, args.sagas // 10) == 0:
            log(f"{chaos.settled}/{args.sagas} sagas settled")


async def _check(
    database: Database, stack: Stack, api: Api, sagas: list[Saga], args: argparse.Namespace
) -> tuple[list[str], str]:
    """Every invariant: those of both styles in SQL and over HTTP, then the style's own.
    Returns the violations and a one-line summary of the style's records."""
    style = args.style
    engine = make_engine(database.url)
    try:
        if style == CHOREOGRAPHY:
            await wait_until_events_settle(engine, stack.nats_url, EVENTS_SETTLE_WITHIN)
        violations = _check_both_styles(engine, api, sagas, style)
        if style == CHOREOGRAPHY:
            style_violations, summary = await _check_choreography(engine, stack)
        else:
            routing = _routing(args)
            assert routing is not None
            style_violations, summary = await _check_orchestration(stack, sagas, routing)
    finally:
        engine.dispose()
    return violations + style_violations, summary


def _check_both_styles(engine: Engine, api: Api, sagas: list[Saga], style: str) -> list[str]:
    """Orders, payments, refunds, deliveries and dealers consistent; what the API accepted
    took effect; no 5xx but 503; every order in the run's style."""
    with session(engine) as db:
        orders_in_db = set(db.exec(select(OrderRow.id)).all())
    violations = check_database(engine) + check_style(engine, style)
    violations += check_intent(sagas, orders_in_db)
    violations += [f"HTTP 5xx other than 503: {e}" for e in api.server_errors]
    return violations


async def _check_orchestration(
    stack: Stack, sagas: list[Saga], routing: ActivityRouting
) -> tuple[list[str], str]:
    """No workflow failed, the running ones wait legitimately, every history replays and
    scheduled its steps only on the queues of ``routing``."""
    # The stack's processes run with AUTH_MODE=dev and this environment's PAYLOAD_KEYS, if any.
    settings = Settings(auth_mode="dev")
    converter = data_converter(settings)
    client = await Client.connect(stack.temporal_address, data_converter=converter)
    routed = ServiceQueues.routed(routing, settings.workflow_task_queue)
    step_queues = {routed.orders, routed.payments, routed.deliveries}
    violations, statuses = await check_temporal(client, sagas, step_queues)
    return violations, f"workflow runs: {dict(statuses)}"


async def _check_choreography(engine: Engine, stack: Stack) -> tuple[list[str], str]:
    """Every event published and applied once by each consumer, no dead letter, every
    consumer caught up."""
    violations = check_events(engine) + await check_consumers(stack.nats_url)
    return violations, event_summary(engine)


def _report(
    sagas: list[Saga], chaos: Chaos, api: Api, stack: Stack, summary: str, violations: list[str]
) -> None:
    """Print the outcomes, what was done to the stack and the violations."""
    print()
    print(outcome_table(sagas))
    print()
    print(summary)
    print(f"HTTP statuses: {dict(sorted(api.statuses.items()))} (0 = connection failed)")
    print(f"fault points fired: {', '.join(chaos.fault_points_fired) or 'none'}")
    print(f"worker deaths seen by the supervisor: {stack.worker_deaths}")
    if stack.supervise_api:
        print(f"API deaths seen by the supervisor: {stack.api_deaths}")
    for v in violations[:50]:
        print(f"VIOLATION {v}")
    if len(violations) > 50:
        print(f"... and {len(violations) - 50} more violations")


def _result_line(args: argparse.Namespace, chaos: Chaos, violations: int, seconds: float) -> str:
    """The run's last line: its style and seed, what was done, what broke, how long it took."""
    if args.style == CHOREOGRAPHY:
        style = args.style
        blows = f"{chaos.api_kills} API kills, {chaos.restarts} broker restarts"
    else:
        style = f"{args.style}, routing {_routing(args)}"
        blows = f"{chaos.restarts} Temporal restarts"
    return (
        f"chaos: {style}, seed {args.seed}, {args.sagas} sagas, {chaos.kills} worker kills, "
        f"{blows}, {chaos.outages} db outages, {violations} violations, {seconds:.0f} s"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--style",
        choices=[ORCHESTRATION, CHOREOGRAPHY],
        default=ORCHESTRATION,
        help="the saga style the API places orders in (choreography: with a NATS server)",
    )
    parser.add_argument(
        "--routing",
        choices=[routing.value for routing in ActivityRouting],
        default=None,
        help="where the orchestrated saga's steps run: 'workflow' (the saga's own worker) or "
        "'service' (each service's task queue); default: ACTIVITY_ROUTING or the settings'",
    )
    parser.add_argument("--sagas", type=int, default=300)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument(
        "--restarts", type=int, default=4, help="Temporal (orchestration) or NATS restarts"
    )
    parser.add_argument("--outages", type=int, default=2)
    parser.add_argument("--outage-seconds", type=float, default=4)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: local database 'chaos')")
    parser.add_argument("--payment-window", type=float, default=8, help="seconds")
    parser.add_argument("--dealer-window", type=float, default=3, help="seconds")
    parser.add_argument("--settle-within", type=float, default=240, help="seconds per saga")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data-dir", help="default: a new temporary folder")
    args = parser.parse_args(argv)
    if args.routing is not None and args.style == CHOREOGRAPHY:
        parser.error("--routing is the orchestrated saga's: drop it with --style choreography")
    if args.seed is None:
        args.seed = random.randrange(10**6)
    return args


if __name__ == "__main__":
    arguments = parse()
    print(f"seed {arguments.seed}", flush=True)
    try:
        sys.exit(asyncio.run(main(arguments)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chaos: interrupted; the stack is stopped", file=sys.stderr)
        sys.exit(130)
