"""The door to the orchestrated saga: one ``OrderProcessWorkflow`` per order, on Temporal.

Everything a caller does to an order goes through :class:`OrchestratedSagas`: place it (the
Idempotency-Key kept in the database, the saga started once), read it, decide its payment,
report its delivery, cancel it. The business checks that do not need the saga (is the payment
still pending, is its window open) are answered from the database, so a decision costs one
signal and no workflow query.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

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
from domain.status import DeliveryStatus, OrderStatus, PaymentStatus, SagaPhase
from domain.views import OrderView
from sagas import views
from sagas.errors import ConflictError, IdempotencyKeyReusedError, NotFoundError
from sagas.temporal import is_saga_missing
from services import orders as order_service
from settings import Settings
from store.db import session
from store.models import as_utc
from workflows import OrderProcessWorkflow

log = logging.getLogger("sagas")

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
    order never gets a second saga while Temporal remembers the first), the OrderStatus and
    CustomerId search attributes, a summary for the Web UI and the request's fingerprint in
    the memo.

    ``step_mode`` stays ``remote`` for every saga the door starts; the bench passes ``local``
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
                SearchAttributePair(names.ORDER_STATUS, OrderStatus.PENDING.value),
                SearchAttributePair(names.CUSTOMER_ID, request.customer_id),
            ]
        ),
        static_summary=(
            f"Order {order_id}: customer {request.customer_id}, {request.total_amount}, "
            f"{request.city} ({request.province})"
        ),
        memo={REQUEST_FINGERPRINT: request.fingerprint()},
    )
    return handle


@dataclass(frozen=True)
class Placement:
    """What placing an order did.

    ``view``: the order with its payment, or None when its rows could not be read yet (the
    saga has started all the same: poll ``GET /orders/{order_id}``). ``saga``: the saga's
    state when the order was read. ``replayed``: the request had been made before (same
    Idempotency-Key), so nothing new was started.
    """

    order_id: str
    view: OrderView | None
    saga: SagaState | None
    replayed: bool


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
    """The door to ``OrderProcessWorkflow`` executions, one per order id."""

    def __init__(self, client: Client, engine: Engine, settings: Settings) -> None:
        self._client = client
        self._engine = engine
        self._settings = settings

    def handle(self, order_id: str) -> SagaHandle:
        return self._client.get_workflow_handle_for(
            OrderProcessWorkflow.run, names.workflow_id_for(order_id)
        )

    # --- placing an order --------------------------------------------------------------

    async def place(self, request: OrderRequest, idempotency_key: str | None) -> Placement:
        """Start the order's saga (once) and read the order back with its pending payment.

        With ``idempotency_key`` the key is recorded in the database before the saga starts,
        so a replay, however late (long after Temporal dropped the closed saga), answers its
        order from the database and starts nothing. :class:`IdempotencyKeyReusedError` for
        the key with another request; :class:`ConflictError` when that order's saga ended
        before it wrote the order (it was cancelled at once). Once the saga has started, a
        database that cannot be read gives a placement without a view, never an error that
        would invite a retry starting another order.
        """
        fingerprint = request.fingerprint()
        replayed = False
        if idempotency_key is None:
            order_id = str(uuid.uuid4())
        else:
            use = await asyncio.to_thread(
                self._use_key,
                request.customer_id,
                idempotency_key,
                fingerprint,
                names.order_id_for_idempotency_key(request.customer_id, idempotency_key),
            )
            if use.fingerprint != fingerprint:
                raise IdempotencyKeyReusedError(
                    "this Idempotency-Key was already used for a different request"
                )
            order_id, replayed = use.order_id, not use.recorded
            if replayed:
                view = await asyncio.to_thread(self._view, order_id)
                if view is not None:
                    return Placement(order_id, view, None, replayed=True)
                if use.saga_started and not await self.exists(order_id):
                    raise ConflictError(
                        f"order {order_id} of this Idempotency-Key was cancelled before it was "
                        "created; use a new key for a new order"
                    )
                # The first request recorded the key; its saga may still be writing the order,
                # or the request failed before starting it: starting again is safe (one saga
                # per order).
        state, existed = await self._start(order_id, request, fingerprint)
        if idempotency_key is not None:
            await self._mark_started(request.customer_id, idempotency_key)
        try:
            view = await asyncio.to_thread(self._view, order_id)
        except SQLAlchemyError as err:
            log.warning("order %s started, but its rows cannot be read yet: %s", order_id, err)
            view = None
        if view is not None and view.payment is None:
            view = None  # not placed yet as far as the customer can tell: poll it
        return Placement(order_id, view, state, replayed=replayed or existed)

    async def _start(
        self, order_id: str, request: OrderRequest, fingerprint: str
    ) -> tuple[SagaState | None, bool]:
        """Start the saga and wait briefly until its payment exists. Returns the saga's state
        (None if the payment did not exist within the wait) and whether it existed already."""
        workflow_id = names.workflow_id_for(order_id)
        context = {"order_id": order_id, "workflow_id": workflow_id}
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
                extra=context,
            )
        except WorkflowAlreadyStartedError:
            handle, existed = self.handle(order_id), True
            described = await handle.describe()
            if await described.memo_value(REQUEST_FINGERPRINT, None) != fingerprint:
                raise IdempotencyKeyReusedError(
                    "this Idempotency-Key was already used for a different request"
                ) from None
            log.info(
                "saga already started (retried request): order_id=%s workflow_id=%s",
                order_id,
                workflow_id,
                extra=context,
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

    def _use_key(
        self, customer_id: str, key: str, fingerprint: str, order_id: str
    ) -> order_service.KeyUse:
        with session(self._engine) as db:
            use = order_service.use_idempotency_key(db, customer_id, key, fingerprint, order_id)
            db.commit()
        return use

    async def _mark_started(self, customer_id: str, key: str) -> None:
        def mark() -> None:
            with session(self._engine) as db:
                order_service.mark_key_saga_started(db, customer_id, key)
                db.commit()

        try:
            await asyncio.to_thread(mark)
        except SQLAlchemyError as err:
            # Only a hint for late replays (a replay that finds no mark starts again, which is
            # safe); the saga has started, so placing the order must not fail for it.
            log.warning("could not mark the saga of key %r started: %s", key, err)

    def _view(self, order_id: str) -> OrderView | None:
        return views.order_view(self._engine, self._settings, order_id)

    # --- reading ---------------------------------------------------------------------------

    async def order(self, order_id: str, *, with_saga: bool) -> OrderView:
        """The order as the database holds it; ``with_saga``: with the saga's state too (a
        workflow query), and for an order whose saga has not written it yet, a view with
        status None. :class:`NotFoundError` when neither exists."""
        if not with_saga:
            view = await asyncio.to_thread(self._view, order_id)
            if view is None:
                raise NotFoundError(f"order {order_id} does not exist")
            return view
        try:
            saga = await self.saga_state(order_id)
            exists: bool | None = saga is not None
        except (RPCError, WorkflowQueryFailedError):
            # No worker answered the query (down or busy): the database still answers, and
            # Temporal itself says whether the saga exists.
            saga, exists = None, None
        # Read after the saga: it records a step only once the step's rows are written, so the
        # rows shown are never behind the saga shown (a CANCELLED saga, a CANCELLED order).
        view = await asyncio.to_thread(self._view, order_id)
        if view is None:
            if exists is None:
                exists = await self.exists(order_id)
            if not exists:
                raise NotFoundError(f"order {order_id} does not exist")
            workflow_id = names.workflow_id_for(order_id)
            view = OrderView(
                order_id=order_id,
                workflow_id=workflow_id,
                workflow_url=self._settings.workflow_url(workflow_id),
                status=None,
            )
        view.saga = saga
        return view

    async def saga_state(self, order_id: str) -> SagaState | None:
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
        """Whether Temporal knows a saga of this order (needs no worker)."""
        try:
            await self.handle(order_id).describe()
        except RPCError as err:
            if is_saga_missing(err):
                return False
            raise
        return True

    async def _require_state(self, order_id: str) -> SagaState:
        state = await self.saga_state(order_id)
        if state is None:
            raise NotFoundError(f"order {order_id} does not exist")
        return state

    # --- steering ----------------------------------------------------------------------

    async def cancel(self, order_id: str) -> None:
        """Cancel the saga before its pivot; it compensates. Conflict once a dealer is
        assigned, once it is cancelled, or when the saga has ended."""
        with saga_ended_is_conflict(f"order {order_id} can no longer be cancelled"):
            state = await self._require_state(order_id)
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
                raise ConflictError(
                    f"order {order_id} can no longer be cancelled: its saga has ended"
                )
            await handle.cancel()

    async def decide_payment(self, payment_id: str, *, confirm: bool) -> str:
        """The customer's decision on their payment; returns its order id.

        :class:`NotFoundError` for an unknown payment; :class:`ConflictError` unless it is
        still PENDING inside its window. One signal, no query: the answer does not wait for a
        worker (nor for a saga evicted from its cache to be rebuilt). A decision that loses a
        race with another one is recorded by the saga as ignored.
        """
        payment = await asyncio.to_thread(views.get_payment, self._engine, payment_id)
        if payment is None:
            raise NotFoundError(f"payment {payment_id} does not exist")
        if payment.status != PaymentStatus.PENDING:
            raise ConflictError(f"payment {payment_id} is {payment.status}, not PENDING")
        with saga_ended_is_conflict(f"payment {payment_id} can no longer be decided"):
            if payment.expires_at is None:
                # Created before payments recorded their window: ask the saga.
                await self._decide_by_asking(payment.order_id, payment_id, confirm=confirm)
            elif datetime.now(UTC) >= as_utc(payment.expires_at):
                raise ConflictError(
                    f"payment {payment_id}: its payment window closed at {payment.expires_at}"
                )
            else:
                await self.send_decision(payment.order_id, payment_id, confirm=confirm)
        return payment.order_id

    async def _decide_by_asking(self, order_id: str, payment_id: str, *, confirm: bool) -> None:
        state = await self._require_state(order_id)
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

    async def report_delivered(self, delivery_id: str) -> str:
        """The dealer's report that the parcel arrived; returns its order id.

        :class:`NotFoundError` for an unknown delivery; :class:`ConflictError` unless it is
        IN_TRANSIT and its saga waits for the report (the saga sees its pivot a moment after
        the database does: a report then is refused rather than ignored).
        """
        delivery = await asyncio.to_thread(views.get_delivery, self._engine, delivery_id)
        if delivery is None:
            raise NotFoundError(f"delivery {delivery_id} does not exist")
        if delivery.status != DeliveryStatus.IN_TRANSIT:
            raise ConflictError(f"delivery {delivery_id} is {delivery.status}, not IN_TRANSIT")
        order_id = delivery.order_id
        with saga_ended_is_conflict(f"delivery {delivery_id} can no longer be reported"):
            state = await self._require_state(order_id)
            if state.phase != SagaPhase.IN_TRANSIT:
                raise ConflictError(
                    f"order {order_id} is not waiting for a delivery report (saga is {state.phase})"
                )
            await self.handle(order_id).signal(
                OrderProcessWorkflow.mark_delivered, DeliveredReport(delivery_id=delivery_id)
            )
        return order_id
