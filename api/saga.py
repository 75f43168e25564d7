"""The API's gateway to the saga: starts workflows, sends signals, cancels, queries.

Everything the HTTP handlers need from Temporal goes through here, so handlers hold no
business logic and there is one place that knows the workflow's contract.
"""

import asyncio
import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api.errors import ConflictError, IdempotencyKeyReusedError, NotFoundError, is_saga_missing
from domain import names
from domain.payloads import (
    DeliveredReport,
    OrderProcessInput,
    OrderRequest,
    PaymentDecision,
    SagaState,
    SagaTimeouts,
    StepMode,
)
from domain.status import OrderStatus, SagaPhase
from settings import Settings
from workflows import OrderProcessWorkflow
from workflows.order_process import CUSTOMER_ID, ORDER_STATUS

log = logging.getLogger("api.saga")

DECISION_SIGNALS = (names.SIGNAL_CONFIRM_PAYMENT, names.SIGNAL_CANCEL_PAYMENT)

REQUEST_FINGERPRINT = "request_fingerprint"

SagaHandle = WorkflowHandle[OrderProcessWorkflow, SagaState]


async def start_order_saga(
    client: Client,
    order_id: str,
    request: OrderRequest,
    *,
    task_queue: str,
    timeouts: SagaTimeouts,
    step_mode: StepMode = StepMode.REMOTE,
) -> SagaHandle:
    """Start the saga of ``order_id``: workflow id ``order-<order_id>``, reject-duplicate (one
    order never gets a second saga, even after it ends), the OrderStatus and CustomerId
    search attributes, a summary for the Web UI and the request's fingerprint in the memo.

    ``step_mode`` stays ``remote`` for every saga the API starts; the bench passes ``local``
    to measure it (:class:`domain.payloads.StepMode` says why sagas do not run locally).

    Raises ``WorkflowAlreadyStartedError`` if the order has a saga already.
    """
    handle: SagaHandle = await client.start_workflow(
        OrderProcessWorkflow.run,
        OrderProcessInput(
            order_id=order_id, request=request, timeouts=timeouts, step_mode=step_mode
        ),
        id=names.workflow_id_for(order_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(ORDER_STATUS, OrderStatus.PENDING.value),
                SearchAttributePair(CUSTOMER_ID, request.customer_id),
            ]
        ),
        static_summary=(
            f"Order {order_id}: customer {request.customer_id}, {request.total_amount}, "
            f"{request.city} ({request.province})"
        ),
        memo={REQUEST_FINGERPRINT: request.fingerprint()},
    )
    return handle


class SagaGateway:
    """Typed access to OrderProcessWorkflow executions, one per order id."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self._client = client
        self._settings = settings

    def handle(self, order_id: str) -> SagaHandle:
        return self._client.get_workflow_handle_for(
            OrderProcessWorkflow.run, names.workflow_id_for(order_id)
        )

    async def start(self, order_id: str, request: OrderRequest) -> tuple[SagaState | None, bool]:
        """Start the order's saga (once) and wait briefly until its payment exists.

        Returns the saga state (None if the payment did not exist within the wait) and
        whether the saga existed already (a retried request with the same idempotency key).
        """
        workflow_id = names.workflow_id_for(order_id)
        try:
            handle = await start_order_saga(
                self._client,
                order_id,
                request,
                task_queue=self._settings.workflow_task_queue,
                timeouts=self._settings.saga_timeouts,
            )
            existed = False
            log.info(
                "saga started: order_id=%s workflow_id=%s run_id=%s task_queue=%s",
                order_id,
                workflow_id,
                handle.first_execution_run_id or handle.result_run_id,
                self._settings.workflow_task_queue,
                extra={"order_id": order_id, "workflow_id": workflow_id},
            )
        except WorkflowAlreadyStartedError:
            handle, existed = self.handle(order_id), True
            described = await handle.describe()
            stored = await described.memo_value(REQUEST_FINGERPRINT, None)
            if stored != request.fingerprint():
                raise IdempotencyKeyReusedError(
                    "this Idempotency-Key was already used for a different request"
                ) from None
            log.info(
                "saga already started (retried request): order_id=%s workflow_id=%s",
                order_id,
                workflow_id,
                extra={"order_id": order_id, "workflow_id": workflow_id},
            )
        return await self._wait_for_payment(handle), existed

    async def _wait_for_payment(self, handle: SagaHandle) -> SagaState | None:
        try:
            async with asyncio.timeout(self._settings.order_create_wait_seconds):
                state: SagaState = await handle.execute_update(
                    names.UPDATE_WAIT_FOR_PAYMENT, result_type=SagaState
                )
                return state
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            # No worker took the update in time (busy, or down): the saga is durably
            # started all the same, so the caller answers 202 and the client polls.
            return None
        except (WorkflowUpdateFailedError, RPCError):
            # The saga has already ended (updates need a running workflow): the caller
            # reads the order from the database instead.
            return None

    async def state(self, order_id: str) -> SagaState | None:
        """The saga's state by query; None if no saga exists for this order."""
        try:
            return await self.handle(order_id).query(
                OrderProcessWorkflow.state,
                rpc_timeout=timedelta(seconds=self._settings.query_timeout_seconds),
            )
        except RPCError as err:
            if is_saga_missing(err):
                return None
            raise

    async def exists(self, order_id: str) -> bool:
        """Whether a saga was ever started for this order (needs no worker)."""
        try:
            await self.handle(order_id).describe()
        except RPCError as err:
            if is_saga_missing(err):
                return False
            raise
        return True

    async def require_state(self, order_id: str) -> SagaState:
        state = await self.state(order_id)
        if state is None:
            raise NotFoundError(f"order {order_id} does not exist")
        return state

    async def cancel(self, order_id: str) -> None:
        """Cancel the saga before its pivot; it compensates. 409 once a dealer is assigned."""
        state = await self.require_state(order_id)
        if state.phase in (SagaPhase.IN_TRANSIT, SagaPhase.DELIVERED):
            raise ConflictError(
                f"order {order_id} is past dealer assignment and cannot be cancelled"
            )
        if state.phase in (SagaPhase.COMPENSATING, SagaPhase.CANCELLED):
            raise ConflictError(f"order {order_id} is already cancelled")
        handle = self.handle(order_id)
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            # Terminated by an operator: its last state is not final, and Temporal would
            # accept the cancel and do nothing with it.
            raise ConflictError(f"order {order_id} can no longer be cancelled: its saga has ended")
        await handle.cancel()

    async def decide_payment(self, order_id: str, payment_id: str, *, confirm: bool) -> None:
        """Send the customer's decision; 409 if the saga no longer waits for one."""
        state = await self.require_state(order_id)
        decided = [s.name for s in state.signals if s.applied and s.name in DECISION_SIGNALS]
        if decided:
            raise ConflictError(f"payment {payment_id} was already decided ({decided[0]})")
        if state.phase not in (SagaPhase.STARTED, SagaPhase.AWAITING_PAYMENT):
            raise ConflictError(f"payment {payment_id} is not pending (saga is {state.phase})")
        await self.send_decision(order_id, payment_id, confirm=confirm)

    async def send_decision(self, order_id: str, payment_id: str, *, confirm: bool) -> None:
        """Signal the customer's decision; the saga takes the first one inside its window and
        records any other as ignored. Raises RPCError NOT_FOUND if the saga has ended."""
        signal = (
            OrderProcessWorkflow.confirm_payment if confirm else OrderProcessWorkflow.cancel_payment
        )
        await self.handle(order_id).signal(signal, PaymentDecision(payment_id=payment_id))

    async def report_delivered(self, order_id: str, delivery_id: str) -> None:
        """Tell the saga the dealer delivered the parcel; 409 unless it waits for that report.

        The saga takes the report only once it has seen the dealer assignment (its pivot),
        which can trail the database by a moment: answer 409 then, rather than accept a
        report the saga would ignore.
        """
        state = await self.require_state(order_id)
        if state.phase != SagaPhase.IN_TRANSIT:
            raise ConflictError(
                f"order {order_id} is not waiting for a delivery report (saga is {state.phase})"
            )
        await self.handle(order_id).signal(
            OrderProcessWorkflow.mark_delivered, DeliveredReport(delivery_id=delivery_id)
        )
