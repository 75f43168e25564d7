"""A saga's identity, and what a second saga for the same order may do: nothing with money.

The saga's identity is its workflow's first run id (``workflow.info().first_execution_run_id``),
recorded on every row it creates. A saga started again under the same workflow id, after the
first one closed (Temporal dropped it, or an operator started one by hand from the Web UI or
the CLI), has another identity: it finds the first saga's rows, fails with the non-retryable
``OwnedByAnotherSaga`` and compensates nothing it does not own.
"""

import uuid

from temporalio import workflow
from temporalio.client import WorkflowExecutionStatus
from temporalio.worker import Worker

from domain import names
from domain.payloads import DeliveredReport
from domain.status import OrderStatus, PaymentStatus, RecordStatus, SagaPhase
from store.models import OrderRow, RefundRow
from tests.activities.support import all_rows, get_row
from tests.saga_harness import (
    add_dealer,
    confirm_payment,
    db_statuses,
    dealer_load,
    saga_workers,
    start_saga,
    wait_for_phase,
)
from workflows import OrderProcessWorkflow as Saga


async def test_a_saga_started_again_for_a_delivered_order_moves_no_money(
    time_skipping_env, engine, executor, task_queue_suffix
):
    client = time_skipping_env.client
    dealer = add_dealer(engine, capacity=1)
    order_id = str(uuid.uuid4())
    async with saga_workers(client, engine, executor, task_queue_suffix):
        first = await start_saga(client, engine, task_queue_suffix, order_id=order_id)
        await confirm_payment(first)
        in_transit = await wait_for_phase(first, SagaPhase.IN_TRANSIT)
        assert in_transit.delivery_id is not None
        await first.signal(Saga.mark_delivered, DeliveredReport(delivery_id=in_transit.delivery_id))
        assert (await first.result()).phase == SagaPhase.DELIVERED
        delivered = db_statuses(engine, order_id)
        first_run = (await first.describe()).run_id

        # The first saga has closed: the same workflow id can start again (as after Temporal
        # deleted the closed saga, or from the Web UI), and finds the first saga's rows.
        second = await start_saga(client, engine, task_queue_suffix, order_id=order_id)
        result = await second.result()

    assert (await second.describe()).run_id != first_run
    assert result.phase == SagaPhase.CANCELLED
    assert result.failure_type == names.OWNED_BY_ANOTHER_SAGA
    assert [s.name for s in result.steps] == [names.CREATE_ORDER]
    assert [(c.name, c.status) for c in result.compensations] == [
        (names.CANCEL_ORDER, RecordStatus.COMPLETED)
    ]
    assert result.order_status is None  # it never had an order of its own
    # Nothing moved: the order is still delivered, its payment completed, no refund exists.
    assert db_statuses(engine, order_id) == delivered
    assert delivered["order"] == OrderStatus.DELIVERED
    assert delivered["payment"] == PaymentStatus.COMPLETED
    assert all_rows(engine, RefundRow) == []
    assert dealer_load(engine, dealer) == 0
    assert get_row(engine, OrderRow, order_id).saga_id == first_run


@workflow.defn(name="IdentityChain", sandboxed=False)
class IdentityChain:
    """Continues as new until it has run ``hops`` times; returns each run's saga identity."""

    @workflow.run
    async def run(self, seen: list[str]) -> list[str]:
        seen = [*seen, workflow.info().first_execution_run_id]
        if len(seen) < 3:
            workflow.continue_as_new(seen)
        return seen


async def test_the_saga_identity_survives_continue_as_new(time_skipping_env, task_queue_suffix):
    client = time_skipping_env.client
    queue = f"identity{task_queue_suffix}"
    async with Worker(client, task_queue=queue, workflows=[IdentityChain]):
        handle = await client.start_workflow(
            IdentityChain.run, [], id=f"identity-{uuid.uuid4()}", task_queue=queue
        )
        identities = await handle.result()
        description = await handle.describe()

    assert identities == [handle.first_execution_run_id] * 3
    assert description.run_id != handle.first_execution_run_id  # three runs, one identity
    assert description.status == WorkflowExecutionStatus.COMPLETED
