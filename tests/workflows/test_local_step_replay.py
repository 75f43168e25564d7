"""Local steps: whatever arrives while one runs, the saga's history replays deterministically.

A local activity's result is written into the history (as a marker) only when its workflow
task completes, so a signal or a cancel that reaches the server while a local step runs
lands around that marker. These runs hold a local step, send something meanwhile, let the
saga finish, then replay its history at every workflow task, as a worker does after a crash
or a cache eviction.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from domain import names
from domain.payloads import DeliveredReport, PaymentDecision, StepMode
from domain.status import SagaPhase
from tests.saga_harness import (
    HeldCreatePayment,
    SagaHandle,
    add_dealer,
    saga_workers,
    start_saga,
    wait_for_phase,
)
from worker import replay_failures_at_every_task
from workflows import OrderProcessWorkflow as Saga


async def assert_replays(handle: SagaHandle) -> None:
    assert await replay_failures_at_every_task(await handle.fetch_history()) == []


@asynccontextmanager
async def held_local_saga(
    client, engine, executor, suffix: str
) -> AsyncIterator[tuple[SagaHandle, HeldCreatePayment]]:
    """A local saga whose create_payment is running (held until ``release``), with its
    workers up while the block runs."""
    held = HeldCreatePayment(engine)
    async with saga_workers(client, engine, executor, suffix, overrides=[held.create_payment]):
        handle = await start_saga(client, suffix, step_mode=StepMode.LOCAL)
        assert await asyncio.to_thread(held.started.wait, 10)
        yield handle, held


def payment_of(handle: SagaHandle) -> PaymentDecision:
    return PaymentDecision(payment_id=names.payment_id_for(handle.id.removeprefix("order-")))


async def test_a_confirm_sent_while_a_local_step_runs_is_taken_and_replays(
    time_skipping_env, engine, executor, task_queue_suffix
):
    add_dealer(engine)
    client = time_skipping_env.client
    async with held_local_saga(client, engine, executor, task_queue_suffix) as (handle, held):
        await handle.signal(Saga.confirm_payment, payment_of(handle))
        held.release.set()
        in_transit = await wait_for_phase(handle, SagaPhase.IN_TRANSIT)
        assert in_transit.delivery_id is not None
        await handle.signal(
            Saga.mark_delivered, DeliveredReport(delivery_id=in_transit.delivery_id)
        )
        result = await handle.result()

    assert result.phase == SagaPhase.DELIVERED
    assert [(s.name, s.applied) for s in result.signals] == [
        (names.SIGNAL_CONFIRM_PAYMENT, True),
        (names.SIGNAL_MARK_DELIVERED, True),
    ]
    await assert_replays(handle)


async def test_a_cancel_sent_while_a_local_step_runs_compensates_and_replays(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    async with held_local_saga(client, engine, executor, task_queue_suffix) as (handle, held):
        await handle.signal(Saga.cancel_payment, payment_of(handle))
        held.release.set()
        result = await handle.result()

    assert result.phase == SagaPhase.CANCELLED
    assert result.failure_type == names.PAYMENT_CANCELLED
    await assert_replays(handle)
