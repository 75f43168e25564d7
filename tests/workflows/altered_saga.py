"""A deliberately incompatible OrderProcessWorkflow, for the replay test's negative case.

Same workflow name, same signals, queries and update, but its run() creates the payment
before the order: the first activity it schedules is not the one every recorded history
starts with, so replaying any of them must fail with a nondeterminism error.

Its own module (imports: temporalio, domain, workflows only) because the sandbox imports
the module that defines a workflow class.
"""

from temporalio import workflow

from domain import names
from domain.payloads import CreatePaymentInput, OrderProcessInput, PaymentSnapshot, SagaState
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
