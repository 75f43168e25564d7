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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
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
)
from domain.status import Decision, DeliveryStatus, OrderStatus, SagaPhase
from domain.views import OrderView
from sagas import views
from sagas.errors import ConflictError, IdempotencyKeyReusedError, NotFoundError
from sagas.temporal import is_saga_missing
from services import deliveries as delivery_service
from services import orders as order_service
from services import payments as payment_service
from settings import Settings
from store.db import session
from store.models import DeliveryRow
from workflows import OrderProcessWorkflow

log = logging.getLogger("sagas")

REQUEST_FINGERPRINT = "request_fingerprint"

SagaHandle = WorkflowHandle[OrderProcessWorkflow, SagaState]


def saga_start_options(order_id: str, request: OrderRequest, *, task_queue: str) -> dict[str, Any]:
    """How every saga of an order starts: workflow id ``order-<order_id>``, reject-duplicate
    (one order never gets a second saga while Temporal remembers the first), the OrderStatus
    and CustomerId search attributes, a summary for the Web UI and the request's fingerprint
    in the memo."""
    return {
        "id": names.workflow_id_for(order_id),
        "task_queue": task_queue,
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(names.ORDER_STATUS, OrderStatus.PENDING.value),
                SearchAttributePair(names.CUSTOMER_ID, request.customer_id),
            ]
        ),
        "static_summary": (
            f"Order {order_id}: customer {request.customer_id}, {request.total_amount}, "
            f"{request.city} ({request.province})"
        ),
        "memo": {REQUEST_FINGERPRINT: request.fingerprint()},
    }


async def start_order_saga(
    client: Client,
    order_id: str,
    request: OrderRequest,
    *,
    task_queue: str,
    timeouts: SagaTimeouts,
) -> SagaHandle:
    """Start the saga of ``order_id`` (:func:`saga_start_options`). One RPC: Temporal has
    durably accepted the saga when it returns.

    Raises ``WorkflowAlreadyStartedError`` if the order has a saga already.
    """
    handle: SagaHandle = await client.start_workflow(
        OrderProcessWorkflow.run,
        OrderProcessInput(order_id=order_id, request=request, timeouts=timeouts),
        **saga_start_options(order_id, request, task_queue=task_queue),
    )
    return handle


@dataclass(frozen=True)
class Placement:
    """What placing an order did.

    ``payment_id``: known from the start (ids are deterministic). ``view``: the order with
    its payment when the caller waited for it and it exists, or a replayed request's order as
    the database holds it; None otherwise (the saga is durably started: poll
    ``GET /orders/{order_id}``). ``replayed``: the request had been made before (same
    Idempotency-Key), so nothing new was started.
    """

    order_id: str
    payment_id: str
    view: OrderView | None
    replayed: bool


@dataclass(frozen=True)
class DecisionAccepted:
    """A payment decision the saga has (or, for the same decision sent again, already had)."""

    order_id: str
    decision: Decision
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


PAST = {Decision.CONFIRM: "confirmed", Decision.CANCEL: "cancelled", Decision.TIMEOUT: "expired"}


def won_for(taken: payment_service.DecisionTaken, payment_id: str, decision: Decision) -> str:
    """The order id when ``decision`` is the one on record (taken now, or earlier: the same
    decision again is answered alike). :class:`NotFoundError` for an unknown payment;
    :class:`ConflictError` naming the decision that won, or saying why none may be taken."""
    if taken.order_id is None:
        raise NotFoundError(f"payment {payment_id} does not exist")
    if taken.winner is None:
        raise ConflictError(f"payment {payment_id} can no longer be decided: {taken.refusal}")
    if taken.winner != decision:
        raise ConflictError(
            f"payment {payment_id} was already {PAST[taken.winner]} ({taken.winner})"
        )
    return taken.order_id


class OrchestratedSagas:
    """The door to ``OrderProcessWorkflow`` executions, one per order id. Every answer it
    gives on the hot path (placing an order, reading it, deciding its payment) comes from the
    database and at most one Temporal RPC: no workflow query, no wait for a worker."""

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

    async def place(
        self,
        request: OrderRequest,
        idempotency_key: str | None,
        order_id: str | None = None,
        *,
        wait: float = 0,
    ) -> Placement:
        """Accept the order: record it (its Idempotency-Key, its payment's decision, opened)
        in the database, then start its saga, one RPC; the saga is durably accepted when this
        returns. ``wait`` > 0: wait up to that long, in the same RPC (update-with-start), for
        the payment to exist, and return the order's view if it does.

        With ``idempotency_key`` a replay, however late (long after Temporal dropped the
        closed saga), answers its order from the database and starts nothing.
        :class:`IdempotencyKeyReusedError` for the key with another request;
        :class:`ConflictError` when that order's saga ended before it wrote the order.
        """
        fingerprint = request.fingerprint()
        order_id = order_id or names.new_order_id(
            self._settings.order_id_key, request.customer_id, idempotency_key
        )
        use = await asyncio.to_thread(self._accept, request, idempotency_key, fingerprint, order_id)
        replayed = False
        if use is not None:
            if use.fingerprint != fingerprint:
                raise IdempotencyKeyReusedError(
                    "this Idempotency-Key was already used for a different request"
                )
            order_id = use.order_id  # what the key stands for, however its id was derived
            replayed = not use.recorded
            if replayed:
                view = await asyncio.to_thread(self._view, order_id)
                if view is not None and view.status is not None:
                    return Placement(order_id, names.payment_id_for(order_id), view, replayed=True)
                if use.saga_started and not await self.exists(order_id):
                    raise ConflictError(
                        f"order {order_id} of this Idempotency-Key was cancelled before it was "
                        "created; use a new key for a new order"
                    )
                # The first request recorded the key; its saga may still be writing the order,
                # or the request failed before starting it: starting again is safe (one saga
                # per order).
        payment_id = names.payment_id_for(order_id)
        input = OrderProcessInput(
            order_id=order_id, request=request, timeouts=self._settings.saga_timeouts
        )
        options = saga_start_options(
            order_id, request, task_queue=self._settings.workflow_task_queue
        )
        view = None
        if wait > 0 and await self._start_and_wait(input, options, fingerprint, wait):
            view = await self._readable_view(order_id)
        else:
            replayed |= await self._start(input, options, fingerprint)
        if idempotency_key is not None:
            # The key's "saga started" mark is a hint for late replays (see _mark_started),
            # written after the answer: one write transaction fewer on the caller's wait.
            customer_id = request.customer_id
            self._after_answer_write(
                f"the saga of key {idempotency_key!r} started",
                lambda db: order_service.mark_key_saga_started(db, customer_id, idempotency_key),
            )
        return Placement(order_id, payment_id, view, replayed=replayed)

    def _accept(
        self, request: OrderRequest, key: str | None, fingerprint: str, order_id: str
    ) -> order_service.KeyUse | None:
        """One transaction: the Idempotency-Key (if any) and the payment's decision, opened.
        A replay records nothing; so does a request its key was used for with another body."""
        with session(self._engine) as db:
            use = None
            if key is not None:
                use = order_service.use_idempotency_key(
                    db, request.customer_id, key, fingerprint, order_id
                )
                if use.fingerprint != fingerprint or not use.recorded:
                    return use
            payment_id = names.payment_id_for(order_id)
            if not payment_service.open_decision(db, payment_id, order_id, request.customer_id):
                if use is None:  # a random id accepted twice: never, but never a second order
                    raise ConflictError(f"order {order_id} was placed already")
                # Its key's row is gone (retention), but the order it stood for was placed:
                # the same request is a replay of it, another is refused.
                placed = order_service.placed_fingerprint(db, order_id)
                if placed is not None and placed != fingerprint:
                    raise IdempotencyKeyReusedError(
                        "this Idempotency-Key was already used for a different request"
                    )
                use = replace(use, recorded=False)
            db.commit()
        return use

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
        """Start the saga (or join it, for a retried request) and wait in the same RPC until
        its payment exists: update-with-start. Returns whether the payment exists; when the
        wait runs out, the saga is made sure to exist before the caller answers 202."""
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
            # No worker took the update in time (busy, or down). Whether the start reached
            # Temporal before the wait ran out is not known here: make sure it did.
            await self._start(input, options, fingerprint)
            return False
        self._log_started(input.order_id, (await start.workflow_handle()).first_execution_run_id)
        return state.payment_status is not None

    async def _check_same_request(self, order_id: str, fingerprint: str) -> None:
        described = await self.handle(order_id).describe()
        if await described.memo_value(REQUEST_FINGERPRINT, None) != fingerprint:
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was already used for a different request"
            ) from None
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
        """Commit ``write`` after the answer (one write transaction fewer on the caller's
        wait): only for marks that are hints, each of whose loss is safe.

        The key's "saga started" mark: a replay that finds it, no order row and no saga
        (Temporal dropped it, closed) knows its saga ended before writing the order: 409; one
        that finds none starts the saga again (one saga per order id), which is safe. The
        "signalled" marks of a decision or a report: the same request again finds one and sends
        nothing; one that finds none signals again, which the saga counts as a repeat.
        """

        def commit() -> None:
            with session(self._engine) as db:
                write(db)
                db.commit()

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

    async def order(self, order_id: str) -> OrderView:
        """The order as the database holds it (CREATING while its saga's first steps have not
        written it). :class:`NotFoundError` for an order never accepted."""
        view = await asyncio.to_thread(self._view, order_id)
        if view is None:
            raise NotFoundError(f"order {order_id} does not exist")
        return view

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
        """Cancel the saga before its pivot; it compensates. :class:`ConflictError` once a
        dealer is assigned, once it is cancelling, or when the saga has ended."""
        view = await self.order(order_id)
        if view.phase in (SagaPhase.IN_TRANSIT, SagaPhase.DELIVERED):
            raise ConflictError(
                f"order {order_id} is past dealer assignment and cannot be cancelled"
            )
        if view.phase in (SagaPhase.COMPENSATING, SagaPhase.CANCELLED):
            raise ConflictError(f"order {order_id} is already cancelled")
        with saga_ended_is_conflict(f"order {order_id} can no longer be cancelled"):
            handle = self.handle(order_id)
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                # Terminated by an operator: its last state is not final, and Temporal would
                # accept the cancel and do nothing with it.
                raise ConflictError(
                    f"order {order_id} can no longer be cancelled: its saga has ended"
                )
            await handle.cancel()

    async def deliver_decision(
        self, payment_id: str, decision: Decision, taken: payment_service.DecisionTaken
    ) -> DecisionAccepted:
        """The customer's decision on their payment, once :meth:`take_decision` has recorded
        it by a compare-and-set in the database (``taken``), before the saga hears of it (its
        ``confirm_payment``/``cancel_payment`` signal): of racing decisions exactly one wins,
        and the loser learns which.

        :class:`ConflictError` when the other decision won, or the window closed, or the
        payment is no longer pending. The same decision again is accepted again, whenever it
        comes, and sends nothing once the first one's signal is recorded as sent (before that,
        its signal is sent again: the first may have been lost). Accepted from the order's
        acceptance on, before the payment is written.
        """
        confirm = decision == Decision.CONFIRM
        order_id = won_for(taken, payment_id, decision)
        if taken.signalled:  # the same decision again, and the saga has it: nothing to send
            return DecisionAccepted(order_id, decision, replayed=True)
        try:
            with saga_ended_is_conflict(f"payment {payment_id} can no longer be decided"):
                await self.send_decision(order_id, payment_id, confirm=confirm)
        except ConflictError:
            if taken.applied:  # recorded by this call for a saga that is gone: take it back
                await asyncio.to_thread(self._withdraw_decision, payment_id, decision)
                raise
            # The same decision again, after its saga ended: a decision that stays recorded
            # reached the saga (one that could not is withdrawn), so the answer is the first's.
        else:
            self._after_answer_write(
                f"the decision on payment {payment_id} reached its saga",
                lambda db: payment_service.mark_decision_signalled(db, payment_id),
            )
        return DecisionAccepted(order_id, decision, replayed=not taken.applied)

    def _withdraw_decision(self, payment_id: str, decision: Decision) -> None:
        with session(self._engine) as db:
            payment_service.withdraw_decision(db, payment_id, decision)
            db.commit()

    def take_decision(self, payment_id: str, decision: Decision) -> payment_service.DecisionTaken:
        """The compare-and-set of ``decision``, in its own transaction (blocking: call it on a
        worker thread). Whether it won is :meth:`deliver_decision`'s to say."""
        with session(self._engine) as db:
            taken = payment_service.take_decision(db, payment_id, decision)
            db.commit()
        return taken

    async def send_decision(self, order_id: str, payment_id: str, *, confirm: bool) -> None:
        """Signal the customer's decision to the saga. Raises RPCError NOT_FOUND if the saga
        has ended."""
        signal = (
            OrderProcessWorkflow.confirm_payment if confirm else OrderProcessWorkflow.cancel_payment
        )
        await self.handle(order_id).signal(signal, PaymentDecision(payment_id=payment_id))

    async def report_delivered(self, delivery: DeliveryRow) -> str:
        """The dealer's report that the parcel arrived (``delivery`` as the door read it);
        returns its order id.

        :class:`ConflictError` unless the database shows it IN_TRANSIT or DELIVERED (the same
        report again: answered alike, and sent no more once its first signal is recorded as
        sent). The report names the dealer the database shows, so a saga that has not yet
        seen its assignment holds it until it does.
        """
        delivery_id = delivery.id
        if delivery.status == DeliveryStatus.DELIVERED:
            return delivery.order_id
        if delivery.status != DeliveryStatus.IN_TRANSIT:
            raise ConflictError(f"delivery {delivery_id} is {delivery.status}, not IN_TRANSIT")
        if delivery.report_signalled_at is not None:
            return delivery.order_id
        with saga_ended_is_conflict(f"delivery {delivery_id} can no longer be reported"):
            await self.handle(delivery.order_id).signal(
                OrderProcessWorkflow.mark_delivered,
                DeliveredReport(delivery_id=delivery_id, dealer_id=delivery.dealer_id),
            )
        self._after_answer_write(
            f"the report of delivery {delivery_id} reached its saga",
            lambda db: delivery_service.mark_report_signalled(db, delivery_id),
        )
        return delivery.order_id
