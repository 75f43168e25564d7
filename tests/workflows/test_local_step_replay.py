"""Local steps: whatever arrives while one runs, the saga's history replays deterministically.

A local activity's result is written into the history (as a marker) only when its workflow
task completes, so a signal or a cancel that reaches the server while a local step runs
lands around that marker. These runs hold a local step, send something meanwhile, let the
saga finish, then replay its history from scratch, as a worker does after a crash or a
cache eviction.
"""

import asyncio
import threading

from temporalio import activity
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from activities._defn import service_activity
from activities.payments import PaymentActivities
from domain import names
from domain.payloads import (
    CreatePaymentInput,
    DeliveredReport,
    PaymentDecision,
    PaymentSnapshot,
    StepMode,
)
from domain.status import SagaPhase
from tests.saga_harness import (
    SagaHandle,
    add_dealer,
    saga_workers,
    start_saga,
    wait_for_phase,
)
from worker import workflow_runner
from workflows import OrderProcessWorkflow as Saga


class HeldPayment:
    """Fake ``create_payment``: waits until released, then runs the real one."""

    def __init__(self, engine) -> None:
        self._real = PaymentActivities(engine)
        self.started = threading.Event()
        self.release = threading.Event()

    @service_activity(names.CREATE_PAYMENT)
    def create_payment(self, params: CreatePaymentInput) -> PaymentSnapshot:
        assert activity.info().is_local
        self.started.set()
        assert self.release.wait(10)
        return self._real.create_payment(params)


async def assert_replays(handle: SagaHandle) -> None:
    history = await handle.fetch_history()
    replayer = Replayer(
        workflows=[Saga],
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(),
    )
    replay = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert replay.replay_failure is None, replay.replay_failure


async def test_a_confirm_sent_while_a_local_step_runs_is_taken_and_replays(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    add_dealer(engine)
    held = HeldPayment(engine)
    async with saga_workers(
        client, engine, executor, task_queue_suffix, overrides=[held.create_payment]
    ):
        handle = await start_saga(client, task_queue_suffix, step_mode=StepMode.LOCAL)
        assert await asyncio.to_thread(held.started.wait, 10)
        payment_id = names.payment_id_for(handle.id.removeprefix("order-"))
        await handle.signal(Saga.confirm_payment, PaymentDecision(payment_id=payment_id))
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
    held = HeldPayment(engine)
    async with saga_workers(
        client, engine, executor, task_queue_suffix, overrides=[held.create_payment]
    ):
        handle = await start_saga(client, task_queue_suffix, step_mode=StepMode.LOCAL)
        assert await asyncio.to_thread(held.started.wait, 10)
        payment_id = names.payment_id_for(handle.id.removeprefix("order-"))
        await handle.signal(Saga.cancel_payment, PaymentDecision(payment_id=payment_id))
        held.release.set()
        result = await handle.result()

    assert result.phase == SagaPhase.CANCELLED
    assert result.failure_type == names.PAYMENT_CANCELLED
    await assert_replays(handle)
