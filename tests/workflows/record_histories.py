"""Record the history of every saga path, for the replay tests (tests/workflows/test_replay.py).

    .venv/bin/python -m tests.workflows.record_histories               # every path (make histories)
    .venv/bin/python -m tests.workflows.record_histories no_dealer ... # only the paths named
    .venv/bin/python -m tests.workflows.record_histories --out DIR     # not in tests/histories

Each path runs once on Temporal's time-skipping test server with the real workers (real
activities over a fresh temporary SQLite database, fakes registered under real activity
names where a fault is needed), and its closed history is written to
``tests/histories/<path>.json``. Inputs are fixed (order id derived from the path name,
same items, same timeouts, same dealers), so a refresh changes timestamps, run ids and, where
an activity and a signal race, how events are grouped into workflow tasks; never the path.
The paths the tests drive too (``scenarios.py``) are defined there, once for both.

``tests/histories/BUILD`` records the build id of the code the histories were recorded with
(``versions.code_build_id``). Refresh them when the saga's shape changes on purpose: a new
build, which Worker Versioning keeps apart from the sagas of the old one
(docs/changing-the-saga.md). The replay test then proves the new shape against its own
histories; until the refresh, a change that breaks them fails CI.
"""

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment

from domain import names
from domain.payloads import SagaState, SagaTimeouts
from domain.status import RecordStatus, SagaPhase
from store.db import make_engine, migrate
from tests.saga_harness import (
    BUILD_FILE,
    HISTORIES_DIR,
    FailingRefund,
    SagaHandle,
    add_dealer,
    confirm_payment,
    recorded_order_id,
    saga_workers,
    start_saga,
    wait_for_phase,
)
from tests.workflows import scenarios
from tests.workflows.scenarios import cancel_the_payment, mark_delivered, signal_log
from versions import code_build_id
from workflows import OrderProcessWorkflow as Saga

TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"
# Short dealer window: a no-dealer saga gives up after 4 attempts (0 s, 2 s, 6 s, 10 s).
TIMEOUTS = SagaTimeouts(
    payment_window=timedelta(minutes=30),
    dealer_assignment_window=timedelta(seconds=10),
    dealer_retry_initial_interval=timedelta(seconds=2),
)


class RecordingError(Exception):
    """A path did not end the way it should: its history is not worth keeping."""


def expect(condition: bool, what: str, state: SagaState | None = None) -> None:
    if not condition:
        shown = state.model_dump_json(indent=1) if state else ""
        raise RecordingError(f"expected {what}; {shown}")


@dataclass
class Recording:
    """One saga path being recorded: its own database and task queues, a fixed order id."""

    path: str
    client: Client
    engine: Engine
    executor: ThreadPoolExecutor

    def workers(
        self, overrides: Sequence[Callable[..., Any]] = ()
    ) -> AbstractAsyncContextManager[None]:
        return saga_workers(
            self.client, self.engine, self.executor, f"-{self.path}", overrides=overrides
        )

    async def start(self, timeouts: SagaTimeouts = TIMEOUTS) -> SagaHandle:
        return await start_saga(
            self.client,
            self.engine,
            f"-{self.path}",
            timeouts=timeouts,
            order_id=recorded_order_id(self.path),
        )


async def closed_as_cancelled(handle: SagaHandle) -> SagaState:
    """Wait for a run that must close as CANCELED; its final state (by query)."""
    try:
        await handle.result()
    except WorkflowFailureError:
        pass
    else:
        raise RecordingError("the run completed instead of closing as CANCELED")
    status = (await handle.describe()).status
    expect(status == WorkflowExecutionStatus.CANCELED, f"run CANCELED, not {status}")
    state: SagaState = await handle.query(Saga.state)
    return state


# --- the paths ---------------------------------------------------------------------------


async def delivered(rec: Recording) -> SagaHandle:
    """Happy path: confirmed, dealer assigned, delivered."""
    add_dealer(rec.engine)
    async with rec.workers():
        handle = await rec.start()
        await confirm_payment(handle)
        in_transit = await wait_for_phase(handle, SagaPhase.IN_TRANSIT)
        result = await mark_delivered(handle, in_transit)
    expect(result.phase == SagaPhase.DELIVERED, "DELIVERED", result)
    return handle


async def customer_cancel(rec: Recording) -> SagaHandle:
    """The customer cancels the payment: cancel payment, cancel order."""
    async with rec.workers():
        handle = await rec.start()
        await cancel_the_payment(handle, reason="changed my mind")
        result = await handle.result()
    expect(result.failure_type == names.PAYMENT_CANCELLED, "PaymentCancelled", result)
    return handle


async def payment_timeout(rec: Recording) -> SagaHandle:
    """No decision within the 30-minute payment window (skipped by the test server)."""
    async with rec.workers():
        handle = await rec.start()
        result = await handle.result()
    expect(result.failure_type == names.PAYMENT_TIMED_OUT, "PaymentTimedOut", result)
    return handle


async def no_dealer(rec: Recording) -> SagaHandle:
    """No dealer in the city within the assignment window: refund, then cancel."""
    async with rec.workers():
        handle = await rec.start()
        await confirm_payment(handle)
        result = await handle.result()
    expect(result.failure_type == names.NO_DEALER_AVAILABLE, "NoDealerAvailable", result)
    expect(len(result.compensations) == 3, "three compensations", result)
    return handle


async def workflow_cancelled_awaiting_payment(rec: Recording) -> SagaHandle:
    """The workflow is cancelled while it waits for the payment decision."""
    async with rec.workers():
        handle = await rec.start()
        await wait_for_phase(handle, SagaPhase.AWAITING_PAYMENT)
        await handle.cancel()
        state = await closed_as_cancelled(handle)
    expect(state.failure_type == names.CANCELLED_ON_REQUEST, names.CANCELLED_ON_REQUEST, state)
    return handle


async def workflow_cancelled_assigning_dealer(rec: Recording) -> SagaHandle:
    """The workflow is cancelled between two dealer assignment attempts (the only dealer
    is full): refund, cancel delivery and order, close CANCELED."""
    add_dealer(rec.engine, capacity=1, active_deliveries=1)
    async with rec.workers():
        handle = await rec.start()
        await confirm_payment(handle)
        await wait_for_phase(
            handle,
            SagaPhase.ASSIGNING_DEALER,
            until=lambda s: (
                s.steps[-1].name == names.ASSIGN_DEALER
                and s.steps[-1].status == RecordStatus.RETRYING
            ),
        )
        await handle.cancel()
        state = await closed_as_cancelled(handle)
    expect(len(state.compensations) == 3, "three compensations", state)
    return handle


async def cancel_ignored_after_pivot(rec: Recording) -> SagaHandle:
    """A cancel request after the dealer was assigned is recorded, ignored; delivered."""
    add_dealer(rec.engine)
    async with rec.workers():
        handle = await rec.start()
        await confirm_payment(handle)
        await wait_for_phase(handle, SagaPhase.IN_TRANSIT)
        await handle.cancel()
        ignored = await wait_for_phase(
            handle, SagaPhase.IN_TRANSIT, until=lambda s: len(s.signals) == 2
        )
        result = await mark_delivered(handle, ignored)
    expect(result.phase == SagaPhase.DELIVERED, "DELIVERED", result)
    expect(result.signals[1].name == "cancel_request", "an ignored cancel_request", result)
    return handle


async def compensation_retried(rec: Recording) -> SagaHandle:
    """The customer cancels; cancel_or_refund_payment fails twice, is retried on durable
    timers (1 s, 2 s), then succeeds; cancel_order runs after it."""
    refund = FailingRefund(rec.engine, failures=2)
    async with rec.workers(overrides=[refund.cancel_or_refund_payment]):
        handle = await rec.start()
        await cancel_the_payment(handle)
        result = await handle.result()
    expect(refund.calls == 3, f"3 calls of the refund, not {refund.calls}")
    expect(result.compensations[0].attempts == 3, "the refund's 3 attempts", result)
    return handle


async def late_and_duplicate_signals(rec: Recording) -> SagaHandle:
    """Early, unknown, duplicate and late signals are recorded as ignored; delivered."""
    add_dealer(rec.engine)
    async with rec.workers():
        handle = await rec.start()
        result = await scenarios.late_and_duplicate_signals(handle)
    expect(result.phase == SagaPhase.DELIVERED, "DELIVERED", result)
    log = signal_log(result)
    expect(log == scenarios.LATE_AND_DUPLICATE_SIGNAL_LOG, "the signal log", result)
    return handle


PATHS: dict[str, Callable[[Recording], Awaitable[SagaHandle]]] = {
    fn.__name__: fn
    for fn in (
        delivered,
        customer_cancel,
        payment_timeout,
        no_dealer,
        workflow_cancelled_awaiting_payment,
        workflow_cancelled_assigning_dealer,
        cancel_ignored_after_pivot,
        compensation_retried,
        late_and_duplicate_signals,
    )
}


# --- the recorder ------------------------------------------------------------------------


@asynccontextmanager
async def time_skipping_server() -> AsyncIterator[WorkflowEnvironment]:
    if not TEST_SERVER.exists():
        raise SystemExit(f"{TEST_SERVER} is missing: install the project (make install)")
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(TEST_SERVER),
        # The test server lacks capabilities the SDK core warns about on every worker start.
        runtime=Runtime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(
                    filter=TelemetryFilter(core_level="ERROR", other_level="ERROR")
                )
            )
        ),
        # Recorded in the histories as the workers' identity (instead of pid@hostname).
        identity="record_histories",
    )
    try:
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    names.ORDER_STATUS_SEARCH_ATTRIBUTE: (
                        IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                    )
                },
            )
        )
        yield env
    finally:
        await env.shutdown()


async def record(path: str, client: Client, executor: ThreadPoolExecutor) -> str:
    """Run one path on a fresh database; the JSON of its closed history."""
    with tempfile.TemporaryDirectory(prefix=f"record-{path}-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'orders.db'}")
        try:
            migrate(engine)
            rec = Recording(path, client, engine, executor)
            async with asyncio.timeout(60):
                handle = await PATHS[path](rec)
        finally:
            engine.dispose()
    status = (await handle.describe()).status
    expect(status != WorkflowExecutionStatus.RUNNING, f"{path}: a closed run")
    return (await handle.fetch_history()).to_json() + "\n"


async def record_all(paths: Sequence[str]) -> dict[str, str]:
    """Record ``paths`` one after the other on one test server; their histories' JSON."""
    histories: dict[str, str] = {}
    async with time_skipping_server() as env:
        with ThreadPoolExecutor(16, thread_name_prefix="record-activity") as executor:
            for path in paths:
                began = time.monotonic()
                histories[path] = await record(path, env.client, executor)
                print(f"  {path:<40} {time.monotonic() - began:5.1f}s", flush=True)
    return histories


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help=f"default: {', '.join(PATHS)}")
    parser.add_argument("--out", type=Path, default=HISTORIES_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)
    # The faults injected on purpose (a failing refund) log tracebacks; each path's outcome
    # is checked instead, and a path that ends otherwise stops the recording.
    logging.basicConfig(level=logging.ERROR)
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown path(s): {', '.join(unknown)}")
    started = time.monotonic()
    histories = asyncio.run(record_all(args.paths or list(PATHS)))
    # Written only once every path ended as it should: never a half-refreshed set.
    args.out.mkdir(parents=True, exist_ok=True)
    for path, text in histories.items():
        (args.out / f"{path}.json").write_text(text)
    if not args.paths:  # every path: the histories are now this build's
        (args.out / BUILD_FILE).write_text(code_build_id() + "\n")
    print(f"wrote {len(histories)} histories to {args.out} in {time.monotonic() - started:.1f}s")
    # Every history is written. Skip interpreter teardown: the SDK's Rust threads can abort
    # it ("PyGILState_Release: thread state ... must be current", temporalio/sdk-python#300),
    # which would turn a good recording into exit status 134.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
