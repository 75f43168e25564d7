"""How the orchestrated saga starts and is steered: one ``OrderProcessWorkflow`` per order, on
Temporal, at most one RPC and no workflow query a call.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from temporalio.api.failure.v1 import Failure
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError

from domain import names
from domain.payloads import (
    DeliveredReport,
    OrderProcessInput,
    OrderRequest,
    PaymentDecision,
    SagaState,
    ServiceQueues,
)
from domain.status import Decision, OrderStatus
from domain.views import OrderView, StuckOrder
from sagas import rules, views
from sagas.errors import ConflictError
from sagas.rules import Acceptance, DecisionAccepted, NewOrder, Placement
from sagas.temporal import is_saga_missing
from services import deliveries as delivery_service
from services import orders as order_service
from services import payments as payment_service
from settings import Settings
from store.db import transaction
from store.models import DeliveryRow
from workflows import OrderProcessWorkflow

log = logging.getLogger("sagas")

REQUEST_FINGERPRINT = "request_fingerprint"
# A workflow task no worker has taken for this long: no worker polls the saga's queue.
UNTAKEN_TASK = timedelta(seconds=30)

SagaHandle = WorkflowHandle[OrderProcessWorkflow, SagaState]


def saga_start_options(order_id: str, request: OrderRequest, *, task_queue: str) -> dict[str, Any]:
    """How every saga of an order starts: workflow id ``order-<order_id>``, reject-duplicate,
    its search attributes, a Web UI summary, and the request's fingerprint in the memo."""
    return {
        "id": names.workflow_id_for(order_id),
        "task_queue": task_queue,
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(names.ORDER_STATUS, OrderStatus.PENDING.value),
            ]
        ),
        "static_summary": (
            f"Order {order_id}: customer {request.customer_id}, {request.total_amount}, "
            f"{request.city} ({request.province})"
        ),
        "memo": {REQUEST_FINGERPRINT: request.fingerprint()},
    }


@contextlib.contextmanager
def saga_ended_is_conflict(what: str) -> Iterator[None]:
    """A signal or cancel that reaches a saga that has ended meanwhile (or was terminated by
    an operator) is a conflict about ``what``, not an outage telling the client to retry."""
    try:
        yield
    except RPCError as err:
        if not is_saga_missing(err):
            raise
        raise ConflictError(f"{what}: its saga has ended") from err


class OrchestratedSagas:
    """``OrderProcessWorkflow`` executions, one per order id (workflow ``order-<order_id>``)."""

    def __init__(self, client: Client, engine: Engine, settings: Settings) -> None:
        self._client = client
        self._engine = engine
        self._settings = settings
        # Writes left to finish after the answer (see place); held so they are not collected.
        self._after_answer: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Finish the writes ``place`` left to do after its answers (the API's shutdown)."""
        await asyncio.gather(*self._after_answer, return_exceptions=True)

    def handle(self, order_id: str) -> SagaHandle:
        return self._client.get_workflow_handle_for(
            OrderProcessWorkflow.run, names.workflow_id_for(order_id)
        )

    # --- placing an order --------------------------------------------------------------

    async def place(self, order: NewOrder, *, wait: float = 0) -> Placement:
        """Accept the order (:func:`sagas.rules.accept`), then start its saga in one RPC; the
        saga is durable when this returns. ``wait`` > 0: wait up to that long, in the same RPC,
        for the payment, and return the order's view if it exists. A replay answers from the
        database and starts nothing; :class:`ConflictError` if its saga ended before writing it.
        """
        accepted = await asyncio.to_thread(self._accept, order)
        if accepted.replayed:
            order_id = accepted.order_id  # what the key stands for, however its id was derived
            view = await asyncio.to_thread(self._view, order_id)
            if view is not None and view.status is not None:
                return Placement(order_id, names.payment_id_for(order_id), view, replayed=True)
            if accepted.saga_started and not await self.exists(order_id):
                raise ConflictError(
                    f"order {order_id} of this Idempotency-Key was cancelled before it was "
                    "created; use a new key for a new order"
                )
            # Its saga may still be writing the order, or the first request failed before
            # starting it: starting again is safe (one saga per order).
            order = replace(order, order_id=order_id)
        input = OrderProcessInput(
            order_id=order.order_id,
            request=order.request,
            timeouts=order.timeouts,
            queues=ServiceQueues.routed(
                self._settings.activity_routing, self._settings.workflow_task_queue
            ),
        )
        options = saga_start_options(
            order.order_id, order.request, task_queue=self._settings.workflow_task_queue
        )
        view = None
        replayed = accepted.replayed
        if wait > 0 and await self._start_and_wait(input, options, order.fingerprint, wait):
            view = await self._readable_view(order.order_id)
        else:
            replayed |= await self._start(input, options, order.fingerprint)
        key = order.idempotency_key
        if key is not None:
            # A hint for late replays, written after the answer.
            customer_id = order.request.customer_id
            self._after_answer_write(
                f"the saga of key {key!r} started",
                lambda db: order_service.mark_key_saga_started(db, customer_id, key),
            )
        return Placement(order.order_id, order.payment_id, view, replayed=replayed)

    def _accept(self, order: NewOrder) -> Acceptance:
        with transaction(self._engine) as db:
            accepted = rules.accept(db, order)
        return accepted

    async def _start(
        self, input: OrderProcessInput, options: dict[str, Any], fingerprint: str
    ) -> bool:
        """Start the saga (one RPC); returns whether it existed already (a retried request)."""
        try:
            handle = await self._client.start_workflow(OrderProcessWorkflow.run, input, **options)
        except WorkflowAlreadyStartedError:
            await self._check_same_request(input.order_id, fingerprint)
            return True
        self._log_started(input.order_id, handle.first_execution_run_id or handle.result_run_id)
        return False

    async def _start_and_wait(
        self, input: OrderProcessInput, options: dict[str, Any], fingerprint: str, wait: float
    ) -> bool:
        """Start (or join) the saga and wait in the same RPC until its payment exists
        (update-with-start). Returns whether it does; the saga exists either way."""
        start = WithStartWorkflowOperation(
            OrderProcessWorkflow.run,
            input,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            **options,
        )
        try:
            async with asyncio.timeout(wait):
                state = await self._client.execute_update_with_start_workflow(
                    names.UPDATE_WAIT_FOR_PAYMENT,
                    start_workflow_operation=start,
                    result_type=SagaState,
                )
        except WorkflowAlreadyStartedError:
            # Its saga has ended (reject-duplicate): the order is read from the database.
            await self._check_same_request(input.order_id, fingerprint)
            return True
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError, WorkflowUpdateFailedError):
            # No worker took the update in time, and the start may not have landed: make sure.
            await self._start(input, options, fingerprint)
            return False
        self._log_started(input.order_id, (await start.workflow_handle()).first_execution_run_id)
        return state.payment_status is not None

    async def _check_same_request(self, order_id: str, fingerprint: str) -> None:
        described = await self.handle(order_id).describe()
        if await described.memo_value(REQUEST_FINGERPRINT, None) != fingerprint:
            raise rules.key_reused() from None
        log.info(
            "saga already started (retried request): order_id=%s",
            order_id,
            extra={"order_id": order_id, "workflow_id": names.workflow_id_for(order_id)},
        )

    def _log_started(self, order_id: str, run_id: str | None) -> None:
        workflow_id = names.workflow_id_for(order_id)
        log.info(
            "saga started: order_id=%s workflow_id=%s run_id=%s task_queue=%s",
            order_id,
            workflow_id,
            run_id,
            self._settings.workflow_task_queue,
            extra={"order_id": order_id, "workflow_id": workflow_id},
        )

    async def _readable_view(self, order_id: str) -> OrderView | None:
        """The order's view, or None when the database cannot be read: the saga has started,
        so no error may go back to the client (it would retry and start another order)."""
        try:
            return await asyncio.to_thread(self._view, order_id)
        except SQLAlchemyError as err:
            log.warning("order %s started, but its rows cannot be read yet: %s", order_id, err)
            return None

    def _after_answer_write(self, what: str, write: Callable[[Session], None]) -> None:
        """Commit ``write`` after the answer: only for hints whose loss is safe (without the
        "saga started" mark a replay starts the saga again, still one per order; without a
        "signalled" mark the same request signals again, which the saga counts as a repeat).
        """

        def commit() -> None:
            with transaction(self._engine) as db:
                write(db)

        async def mark() -> None:
            try:
                await asyncio.to_thread(commit)
            except SQLAlchemyError as err:
                log.warning("could not record that %s: %s", what, err)

        task = asyncio.create_task(mark())
        self._after_answer.add(task)
        task.add_done_callback(self._after_answer.discard)

    def _view(self, order_id: str) -> OrderView | None:
        return views.order_view(self._engine, self._settings, order_id)

    # --- reading ---------------------------------------------------------------------------

    async def saga_state(self, order_id: str) -> SagaState | None:
        """The saga's full state by query (an operator's view); None if no saga exists."""
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
        """Whether Temporal knows a saga of this order (needs no worker)."""
        try:
            await self.handle(order_id).describe()
        except RPCError as err:
            if is_saga_missing(err):
                return False
            raise
        return True

    # --- steering ----------------------------------------------------------------------

    async def cancel(self, order_id: str) -> None:
        """Cancel the saga (it compensates); the door has checked it may be cancelled.
        :class:`ConflictError` when the saga has ended."""
        ended = f"order {order_id} can no longer be cancelled: its saga has ended"
        with saga_ended_is_conflict(f"order {order_id} can no longer be cancelled"):
            handle = self.handle(order_id)
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                # Terminated by an operator: Temporal would accept the cancel and do nothing.
                raise ConflictError(ended)
            await handle.cancel()

    def take_decision(self, payment_id: str, decision: Decision) -> payment_service.DecisionTaken:
        """The compare-and-set of ``decision``, in its own transaction (blocking: call it on a
        worker thread). Whether it won is :meth:`deliver_decision`'s to say."""
        with transaction(self._engine) as db:
            taken = payment_service.take_decision(db, payment_id, decision)
        return taken

    async def deliver_decision(
        self, payment_id: str, decision: Decision, taken: payment_service.DecisionTaken
    ) -> DecisionAccepted:
        """Signal the saga the decision ``taken`` recorded, if it won; nothing once its signal
        is recorded as sent. :class:`ConflictError` when the saga has ended (a decision this
        call recorded is then withdrawn: nothing acted on it)."""
        order_id = rules.won_for(taken, payment_id, decision)
        if taken.signalled:
            return DecisionAccepted(order_id, decision, replayed=True)
        signal = (
            OrderProcessWorkflow.confirm_payment
            if decision == Decision.CONFIRM
            else OrderProcessWorkflow.cancel_payment
        )
        try:
            with saga_ended_is_conflict(f"payment {payment_id} can no longer be decided"):
                await self.handle(order_id).signal(signal, PaymentDecision(payment_id=payment_id))
        except ConflictError:
            if taken.applied:
                await asyncio.to_thread(self._withdraw_decision, payment_id, decision)
                raise
            # The same decision again after the saga ended: it had reached the saga.
        else:
            self._after_answer_write(
                f"the decision on payment {payment_id} reached its saga",
                lambda db: payment_service.mark_decision_signalled(db, payment_id),
            )
        return DecisionAccepted(order_id, decision, replayed=not taken.applied)

    def _withdraw_decision(self, payment_id: str, decision: Decision) -> None:
        with transaction(self._engine) as db:
            payment_service.withdraw_decision(db, payment_id, decision)

    async def report_delivered(self, delivery: DeliveryRow) -> None:
        """Signal the dealer's report of an IN_TRANSIT delivery, naming the dealer the database
        shows, unless its signal is recorded as sent."""
        if delivery.report_signalled_at is not None:
            return
        delivery_id = delivery.id
        with saga_ended_is_conflict(f"delivery {delivery_id} can no longer be reported"):
            await self.handle(delivery.order_id).signal(
                OrderProcessWorkflow.mark_delivered,
                DeliveredReport(delivery_id=delivery_id, dealer_id=delivery.dealer_id),
            )
        self._after_answer_write(
            f"the report of delivery {delivery_id} reached its saga",
            lambda db: delivery_service.mark_report_signalled(db, delivery_id),
        )

    # --- why a saga waits ------------------------------------------------------------------

    async def explain_stuck(self, entry: StuckOrder) -> None:
        """Say in ``entry`` what the saga's workflow waits for, as Temporal describes it: no
        running workflow, a workflow task no worker completes, a step (its attempt and last
        failure), or else the signal or timer of its phase (left as the rows said it, as when
        Temporal does not answer)."""
        try:
            described = await self.handle(entry.order_id).describe()
        except RPCError as err:
            if not is_saga_missing(err):
                # Temporal down: the rows' account still helps an operator in an outage.
                entry.why += f" (Temporal did not answer: {err.message})"
                return
            entry.waiting_for = "its workflow"
            entry.why = "Temporal has no workflow for this order (never started, or deleted)"
            return
        if described.status != WorkflowExecutionStatus.RUNNING:
            status = described.status.name if described.status else "unknown"
            entry.waiting_for = "its workflow, which is closed"
            entry.why = (
                f"its workflow is {status} while the order is {entry.phase}: find out why, "
                "then reset it to its last workflow task"
            )
            return
        raw = described.raw_description
        task = raw.pending_workflow_task if raw.HasField("pending_workflow_task") else None
        # A task scheduled a moment ago is the saga at work; one failing or untaken is not.
        if task is not None and (
            task.attempt > 1
            or datetime.now(UTC) - task.scheduled_time.ToDatetime(tzinfo=UTC) > UNTAKEN_TASK
        ):
            entry.waiting_for = "a workflow task"
            entry.attempts = task.attempt
            entry.why = (
                f"the workflow task has failed {task.attempt - 1} time(s): see its history"
                if task.attempt > 1
                else f"no worker has taken its workflow task (task queue {described.task_queue})"
            )
            return
        for pending in raw.pending_activities:
            step = pending.activity_type.name
            entry.waiting_for = f"activity {step}"
            entry.attempts = pending.attempt
            if pending.HasField("last_failure"):
                entry.error = await self._failure_message(pending.last_failure)
                entry.why = f"step {step} has failed {pending.attempt - 1} time(s); retrying"
                if pending.HasField("next_attempt_schedule_time"):
                    next_try = pending.next_attempt_schedule_time.ToDatetime(tzinfo=UTC)
                    entry.why += f", next at {next_try.isoformat()}"
            else:
                entry.why = f"step {step} is running or waits for a worker to take it"
            return

    async def _failure_message(self, failure: Failure) -> str:
        """A step's last failure in clear: its message is encrypted with the payloads (it may
        name the order's city); as stored when this process cannot decrypt it."""
        try:
            decoded = await self._client.data_converter.decode_failure(failure)
        except Exception:  # an unknown key id, say: the operator still sees what is there
            return failure.message
        return decoded.message if isinstance(decoded, FailureError) else str(decoded)
