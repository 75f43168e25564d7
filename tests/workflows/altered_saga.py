"""Deliberately incompatible OrderProcessWorkflows: same workflow name, same signals, queries
and update, another shape.

``PaymentFirstSaga``, the replay test's negative case: its run() creates the payment before
the order, so replaying any recorded history must fail with a nondeterminism error.
``RecheckingSaga``: the deploy drill's build B.

Its own module (imports: temporalio, domain, workflows only) because the sandbox imports
the module that defines a workflow class.
"""

from temporalio import workflow

from domain import names
from domain.payloads import (
    CreateOrderInput,
    CreatePaymentInput,
    OrderProcessInput,
    OrderSnapshot,
    PaymentSnapshot,
    SagaState,
)
from workflows import OrderProcessWorkflow


@workflow.defn(name="OrderProcessWorkflow")
class PaymentFirstSaga(OrderProcessWorkflow):
    @workflow.run
    async def run(self, params: OrderProcessInput) -> SagaState:
        await self._step(
            names.CREATE_PAYMENT,
            CreatePaymentInput(
                payment_id=names.payment_id_for(params.order_id),
                order_id=params.order_id,
                amount=params.request.total_amount,
            ),
            params.queues.payments,
            PaymentSnapshot,
        )
        return await super().run(params)


@workflow.defn(name="OrderProcessWorkflow")
class RecheckingSaga(OrderProcessWorkflow):
    """Build B of the deploy drill (tests/e2e/test_deploys.py): the saga with one more step,
    the order read back (``create_order``, a no-op for an existing order) right after the
    customer's decision. Incompatible with the sagas of build A: a worker of B replaying one
    of them would meet ``complete_payment`` where it schedules ``create_order``."""

    @workflow.run
    async def run(self, params: OrderProcessInput) -> SagaState:
        return await super().run(params)

    async def _wait_for_decision(self) -> None:
        await super()._wait_for_decision()
        await self._step(
            names.CREATE_ORDER,
            CreateOrderInput(
                order_id=self._params.order_id,
                request=self._params.request,
                saga_id=self._saga_id,
            ),
            self._params.queues.orders,
            OrderSnapshot,
        )
