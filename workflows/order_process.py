"""OrderProcessWorkflow: the order saga, one durable workflow per order.

Read top to bottom, :meth:`OrderProcessWorkflow._until_pivot` and
:meth:`OrderProcessWorkflow._deliver` are the saga:

1. create order       (compensation pushed first: cancel_order)
2. create payment     (compensation pushed first: cancel_or_refund_payment); a decision the
                      customer took before the payment existed is taken from it
3. wait for the customer (signals confirm_payment / cancel_payment); when the window closes,
                      the decision on record counts, and none counts as a cancel
4. complete payment, confirm order and create delivery, side by side (compensation pushed
                      first: cancel_delivery)
5. assign a dealer    THE PIVOT: once it succeeds nothing is compensated any more
6. wait for mark_delivered, then delivery and order DELIVERED, side by side (retried, never
                      compensated)

A business failure unwinds the stack and the run completes with the order CANCELLED; a
cancellation of the workflow unwinds the same way, then closes as CANCELED. Infrastructure
failures are retried and never compensate.
"""

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

from domain import names
from domain.backoff import Backoff
from domain.errors import business_error
from domain.payloads import (
    CompensationOutcome,
    CreateDeliveryInput,
    CreateOrderInput,
    CreatePaymentInput,
    DeliveredReport,
    DeliveryRef,
    DeliverySnapshot,
    OrderProcessInput,
    OrderRef,
    OrderRequest,
    OrderSnapshot,
    PaymentDecision,
    PaymentRef,
    PaymentSnapshot,
    SagaState,
    SignalRecord,
    StepRecord,
)
from domain.status import (
    Decision,
    DeliveryStatus,
    OrderSearchStatus,
    OrderStatus,
    PaymentStatus,
    RecordStatus,
    SagaPhase,
)
from domain.timeouts import STEP_START_TO_CLOSE
from workflows import metrics
from workflows.compensation import (
    Compensation,
    CompensationStack,
    describe_error,
    root_cause,
    run_shielded,
)

# Forward steps wait out an outage, retrying forever; business failures are non-retryable.
STEP_RETRY = Backoff(maximum=timedelta(seconds=30)).retry_policy(names.BUSINESS_ERRORS)
# Compensations: one attempt per call; CompensationStack retries, recording every failure.
COMPENSATION_RETRY = RetryPolicy(maximum_attempts=1)
ACTIVITY_TIMEOUT = STEP_START_TO_CLOSE

R = TypeVar("R")


@workflow.defn(name="OrderProcessWorkflow")
class OrderProcessWorkflow:
    """The order saga. Input: :class:`OrderProcessInput`; result: the final :class:`SagaState`.

    Signals ``confirm_payment`` and ``cancel_payment`` are taken once, inside the payment
    window; ``mark_delivered`` only after the pivot; any other is recorded as ignored. Query
    ``state``; update ``wait_for_payment`` returns once the payment exists or the saga ended.
    """

    @workflow.init
    def __init__(self, params: OrderProcessInput) -> None:
        order_id = params.order_id
        self._params = params
        # Deterministic ids: a retried step, and the API, name the same payment and delivery.
        self._payment_id = names.payment_id_for(order_id)
        self._delivery_id = names.delivery_id_for(order_id)
        # The saga's identity on its rows: kept across a reset and continue-as-new, new for
        # a saga started again under the same workflow id.
        self._saga_id = workflow.info().first_execution_run_id
        self._state = SagaState(
            order_id=order_id,
            total_amount=params.request.total_amount,
            payment_id=self._payment_id,
            delivery_id=self._delivery_id,
        )
        self._decision: Decision | None = None
        self._window_closing = False
        self._early_report: DeliveredReport | None = None
        self._past_pivot = False
        # The OrderStatus search attribute as it stands (the start sets it to PENDING).
        self._search_status = workflow.info().typed_search_attributes.get(names.ORDER_STATUS)
        self._delivered = False
        # When the saga entered its phase: the time spent there is recorded as it leaves.
        self._phase_since = workflow.info().start_time
        self._compensations = CompensationStack(
            self._state.compensations, on_retry=self._on_compensation_retry
        )

    # --- the saga -------------------------------------------------------------------

    @workflow.run
    async def run(self, params: OrderProcessInput) -> SagaState:
        metrics.count(names.METRIC_STARTED)
        try:
            await self._until_pivot()
        except (ApplicationError, ActivityError, asyncio.CancelledError) as err:
            cancelled = is_cancelled_exception(err)
            self._record_failure(err, cancelled=cancelled)
            await self._unwind()
            reason = self._state.failure_type or "unknown"
            metrics.count(names.METRIC_ENDED, outcome="cancelled", reason=reason)
            if self._state.payment_status == PaymentStatus.REFUNDED:
                metrics.count(names.METRIC_REFUNDED)
            if cancelled:
                raise  # the run closes as CANCELED, after its compensations ran
            return self._state
        # Past the pivot: a cancel request cannot undo a parcel already with its dealer.
        await run_shielded(self._deliver(), on_cancel=self._record_ignored_cancel)
        metrics.count(names.METRIC_ENDED, outcome="delivered")
        return self._state

    async def _until_pivot(self) -> None:
        order_id = self._params.order_id
        request = self._params.request
        queues = self._params.queues
        state = self._state

        # 1. The order. Each compensation is pushed before its step.
        self._compensations.push(
            names.CANCEL_ORDER,
            self._compensation(
                names.CANCEL_ORDER,
                queues.orders,
                lambda status: self._set_order_status(OrderStatus(status)),
                placed=request,
            ),
        )
        order = await self._step(
            names.CREATE_ORDER,
            CreateOrderInput(order_id=order_id, request=request, saga_id=self._saga_id),
            queues.orders,
            OrderSnapshot,
        )
        self._set_order_status(order.status)

        # 2. The payment, its window counted from here (the payment row records its close).
        self._compensations.push(
            names.CANCEL_OR_REFUND_PAYMENT,
            self._compensation(
                names.CANCEL_OR_REFUND_PAYMENT,
                queues.payments,
                lambda status: setattr(state, "payment_status", PaymentStatus(status)),
            ),
        )
        state.payment_deadline = workflow.now() + self._params.timeouts.payment_window
        payment = await self._step(
            names.CREATE_PAYMENT,
            CreatePaymentInput(
                payment_id=self._payment_id,
                order_id=order_id,
                amount=order.total_amount,
                expires_at=state.payment_deadline,
                saga_id=self._saga_id,
            ),
            queues.payments,
            PaymentSnapshot,
        )
        state.payment_status = payment.status
        if payment.decision is not None:
            # The customer decided before the payment was written: take it, signal or not.
            self._take_recorded_decision(payment.decision)

        # 3. The customer's decision.
        await self._wait_for_decision()

        # 4. Three independent steps, scheduled in one workflow task.
        self._set_phase(SagaPhase.ASSIGNING_DEALER, "Assigning a dealer")
        self._compensations.push(
            names.CANCEL_DELIVERY,
            self._compensation(names.CANCEL_DELIVERY, queues.deliveries, self._delivery_undone),
        )
        payment, order, delivery = await self._together(
            self._step(
                names.COMPLETE_PAYMENT,
                PaymentRef(payment_id=self._payment_id, saga_id=self._saga_id),
                queues.payments,
                PaymentSnapshot,
            ),
            self._step(
                names.CONFIRM_ORDER,
                OrderRef(order_id=order_id, saga_id=self._saga_id),
                queues.orders,
                OrderSnapshot,
            ),
            self._step(
                names.CREATE_DELIVERY,
                CreateDeliveryInput(
                    delivery_id=self._delivery_id,
                    order_id=order_id,
                    province=request.province,
                    city=request.city,
                    saga_id=self._saga_id,
                ),
                queues.deliveries,
                DeliverySnapshot,
            ),
        )
        state.payment_status = payment.status
        self._set_order_status(order.status)
        state.delivery_status = delivery.status

        # 5. The pivot: once a dealer is assigned, the saga only moves forward.
        delivery = await self._assign_dealer()
        self._past_pivot = True
        self._compensations.clear()
        state.delivery_status = delivery.status
        state.dealer_id = delivery.dealer_id
        self._set_phase(
            SagaPhase.IN_TRANSIT,
            f"In transit with dealer {delivery.dealer_id}; waiting for mark_delivered",
        )
        if self._early_report is not None:
            self.mark_delivered(self._early_report)  # now in transit: taken if it is true

    async def _together(self, *steps: Coroutine[Any, Any, Any]) -> list[Any]:
        """Run ``steps`` side by side and return their results once all have settled, or raise
        the first failure then, so the unwind sees everything they did."""
        results = await asyncio.gather(*steps, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def _take_recorded_decision(self, decision: Decision) -> None:
        """Take the decision recorded in the database, as its signal would have delivered it."""
        if self._decision is None:
            self._decision = decision
            self._record_signal(
                f"recorded_{decision.lower()}", applied=True, note=f"recorded decision {decision}"
            )

    async def _wait_for_decision(self) -> None:
        """Wait for confirm or cancel; the window closing is a cancel. Raises on cancel."""
        window = self._params.timeouts.payment_window
        assert self._state.payment_deadline is not None
        self._set_phase(
            SagaPhase.AWAITING_PAYMENT,
            f"Waiting for the customer to confirm or cancel payment {self._state.payment_id} "
            f"until {self._state.payment_deadline.isoformat()}",
        )
        waiting_since = workflow.now()
        try:
            await workflow.wait_condition(lambda: self._decision is not None, timeout=window)
        except TimeoutError:
            await self._close_window()
            if self._decision == Decision.TIMEOUT:
                self._record_payment_wait(waiting_since)
                raise business_error(
                    names.PAYMENT_TIMED_OUT, f"no payment decision within {window}"
                ) from None
        self._record_payment_wait(waiting_since)
        if self._decision == Decision.CANCEL:
            raise business_error(names.PAYMENT_CANCELLED, "the customer cancelled the payment")

    async def _close_window(self) -> None:
        """The window's timer fired: record TIMEOUT unless a decision is on record already
        (taken in time, its signal late or lost), and take whichever decision counts."""
        self._window_closing = True
        payment = await self._step(
            names.EXPIRE_PAYMENT,
            PaymentRef(payment_id=self._payment_id, saga_id=self._saga_id),
            self._params.queues.payments,
            PaymentSnapshot,
        )
        if self._decision is None:
            self._decision = payment.decision or Decision.TIMEOUT

    async def _assign_dealer(self) -> DeliverySnapshot:
        """Try to assign a dealer until one is free or the assignment window closes. The window
        is a durable timer, never clock arithmetic, so a replay decides as the run did."""
        timeouts = self._params.timeouts
        ref = DeliveryRef(delivery_id=self._delivery_id, saga_id=self._saga_id)
        window_open = True

        async def close_window() -> None:
            nonlocal window_open
            await workflow.sleep(timeouts.dealer_assignment_window)
            window_open = False

        # The window's timer starts only when a first attempt finds no dealer.
        window: asyncio.Task[None] | None = None
        record = self._start_record(names.ASSIGN_DEALER)
        try:
            while True:
                delivery = await self._activity(
                    names.ASSIGN_DEALER, ref, self._params.queues.deliveries, DeliverySnapshot
                )
                if delivery.dealer_id is not None:
                    break
                if window is None:
                    window = asyncio.create_task(close_window())
                if not window_open:
                    raise business_error(
                        names.NO_DEALER_AVAILABLE,
                        f"no dealer with free capacity in {self._params.request.city}, "
                        f"{self._params.request.province} within "
                        f"{timeouts.dealer_assignment_window}",
                    )
                record.status = RecordStatus.RETRYING
                record.error = "no dealer with free capacity yet"
                # Back off, but try once more as soon as the window closes.
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: not window_open,
                        timeout=timeouts.dealer_retry.delay(record.attempts),
                    )
                record.attempts += 1
        except BaseException as err:
            # Also when cancelled between attempts: the record must not stay RETRYING.
            self._finish_record(record, err)
            raise
        finally:
            if window is not None:
                window.cancel()
        self._finish_record(record)
        return delivery

    async def _deliver(self) -> None:
        """After the pivot: wait for the dealer's report, then close delivery and order."""
        await workflow.wait_condition(lambda: self._delivered)
        state = self._state
        delivery, order = await self._together(
            self._step(
                names.COMPLETE_DELIVERY,
                DeliveryRef(delivery_id=self._delivery_id, saga_id=self._saga_id),
                self._params.queues.deliveries,
                DeliverySnapshot,
            ),
            self._step(
                names.MARK_ORDER_DELIVERED,
                OrderRef(order_id=state.order_id, saga_id=self._saga_id),
                self._params.queues.orders,
                OrderSnapshot,
            ),
        )
        state.delivery_status = delivery.status
        self._set_order_status(order.status)
        self._set_phase(SagaPhase.DELIVERED, "Delivered")

    async def _unwind(self) -> None:
        self._set_phase(
            SagaPhase.COMPENSATING, "Compensating: " + (self._state.failure_reason or "")
        )
        self._upsert_order_status(OrderSearchStatus.COMPENSATING)
        await self._compensations.unwind()
        state = self._state
        # cancel_order ran to success, so the order is CANCELLED (or was never created).
        self._upsert_order_status(OrderSearchStatus(state.order_status or OrderStatus.CANCELLED))
        self._set_phase(SagaPhase.CANCELLED, "Cancelled: " + (state.failure_reason or ""))

    # --- signals, queries, updates -----------------------------------------------------

    @workflow.signal(name=names.SIGNAL_CONFIRM_PAYMENT)
    def confirm_payment(self, decision: PaymentDecision) -> None:
        """The customer confirms the payment (taken once, only inside the window)."""
        self._decide(Decision.CONFIRM, names.SIGNAL_CONFIRM_PAYMENT, decision)

    @workflow.signal(name=names.SIGNAL_CANCEL_PAYMENT)
    def cancel_payment(self, decision: PaymentDecision) -> None:
        """The customer cancels the payment (taken once, only inside the window)."""
        self._decide(Decision.CANCEL, names.SIGNAL_CANCEL_PAYMENT, decision)

    @workflow.signal(name=names.SIGNAL_MARK_DELIVERED)
    def mark_delivered(self, report: DeliveredReport) -> None:
        """The dealer reports the parcel delivered (taken once, only after the pivot)."""
        state = self._state
        if report.delivery_id != self._delivery_id:
            note = f"unknown delivery {report.delivery_id}"
        elif self._delivered:
            note = "already reported delivered"
        elif state.phase == SagaPhase.ASSIGNING_DEALER and report.dealer_id is not None:
            # The database shows the dealer before the saga does: hold the report until then.
            self._early_report = report
            self._record_signal(
                names.SIGNAL_MARK_DELIVERED,
                applied=False,
                note=f"held until the saga sees dealer {report.dealer_id} assigned",
            )
            return
        elif state.phase != SagaPhase.IN_TRANSIT:
            # Before the assignment no dealer has the parcel: a report now cannot be true.
            note = f"ignored in phase {state.phase}"
        elif report.dealer_id is not None and report.dealer_id != state.dealer_id:
            note = f"reported for dealer {report.dealer_id}, but dealer {state.dealer_id} has it"
        else:
            self._delivered = True
            self._record_signal(names.SIGNAL_MARK_DELIVERED, applied=True, note="delivered")
            return
        self._record_signal(names.SIGNAL_MARK_DELIVERED, applied=False, note=note)

    @workflow.query(name=names.QUERY_STATE)
    def state(self) -> SagaState:
        """The full saga state: statuses, ids, steps, compensations, signals, failure."""
        return self._state

    @workflow.update(name=names.UPDATE_WAIT_FOR_PAYMENT)
    async def wait_for_payment(self) -> SagaState:
        """Return once the payment exists (or the saga is unwinding or over)."""
        await workflow.wait_condition(
            lambda: (
                self._state.payment_status is not None
                or self._state.phase in (SagaPhase.COMPENSATING, SagaPhase.CANCELLED)
            )
        )
        return self._state

    def _decide(self, decision: Decision, signal: str, payload: PaymentDecision) -> None:
        state = self._state
        if payload.payment_id != self._payment_id:
            note = f"unknown payment {payload.payment_id}"
        elif self._decision == Decision.TIMEOUT:
            note = "the payment window had closed"
        elif self._window_closing:
            note = "the payment window is closing: the decision on record counts"
        elif self._decision is not None:
            note = f"decision already taken: {self._decision}"
        elif state.phase not in (SagaPhase.STARTED, SagaPhase.AWAITING_PAYMENT):
            note = f"ignored in phase {state.phase}"
        else:
            self._decision = decision
            self._record_signal(signal, applied=True, note=payload.reason or decision)
            return
        self._record_signal(signal, applied=False, note=note)

    # --- helpers -----------------------------------------------------------------------

    async def _activity(self, name: str, arg: Any, task_queue: str, result_type: type[R]) -> R:
        """Run forward step ``name`` as an activity on ``task_queue``."""
        # On cancel, wait for a running step to settle, so the compensation that follows
        # sees what it did (the step itself is never interrupted: activities/_defn.py).
        result: R = await workflow.execute_activity(
            name,
            arg,
            task_queue=task_queue,
            result_type=result_type,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=STEP_RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        if not self._past_pivot and workflow.cancellation_reason() is not None:
            # Cancelled while the step ran: honour it before the next step.
            raise asyncio.CancelledError("the saga was cancelled while a step ran")
        return result

    async def _step(self, name: str, arg: Any, task_queue: str, result_type: type[R]) -> R:
        """Run one forward step as an activity, recording it in the saga state."""
        record = self._start_record(name)
        try:
            result = await self._activity(name, arg, task_queue, result_type)
        except BaseException as err:
            self._finish_record(record, err)
            raise
        self._finish_record(record)
        return result

    def _compensation(
        self,
        name: str,
        task_queue: str,
        reflect: Callable[[str], None],
        *,
        placed: OrderRequest | None = None,
    ) -> Compensation:
        """Compensation ``name``: one attempt of the activity on ``task_queue``, then ``reflect``
        of the status it left its entity in, if any. ``placed``: for cancel_order (OrderRef)."""

        async def compensate() -> None:
            # Why it undoes: the saga's failure, recorded with the cancelled order.
            ref = OrderRef(
                order_id=self._params.order_id,
                saga_id=self._saga_id,
                reason=self._state.failure_type,
                placed=placed,
            )
            outcome = await workflow.execute_activity(
                name,
                ref,
                task_queue=task_queue,
                result_type=CompensationOutcome,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=COMPENSATION_RETRY,
            )
            workflow.logger.info("Compensation %s: %s", name, outcome.action)
            if outcome.status is not None:
                reflect(outcome.status)

        return compensate

    def _delivery_undone(self, status: str) -> None:
        self._state.delivery_status = DeliveryStatus(status)
        self._state.dealer_id = None

    def _start_record(self, name: str) -> StepRecord:
        record = StepRecord(name=name, status=RecordStatus.RUNNING, started_at=workflow.now())
        self._state.steps.append(record)
        return record

    def _finish_record(self, record: StepRecord, err: BaseException | None = None) -> None:
        record.finished_at = workflow.now()
        if err is None:
            record.status = RecordStatus.COMPLETED
            record.error = None
        else:
            record.status = RecordStatus.FAILED
            record.error = describe_error(err)

    def _record_failure(self, err: BaseException, *, cancelled: bool) -> None:
        state = self._state
        if cancelled:
            state.failure_type = names.CANCELLED_ON_REQUEST
            state.failure_reason = "the saga was cancelled before its pivot"
            return
        cause = root_cause(err)
        state.failure_type = (
            cause.type if isinstance(cause, ApplicationError) else type(cause).__name__
        )
        state.failure_reason = cause.message if isinstance(cause, ApplicationError) else str(cause)

    def _record_signal(self, name: str, *, applied: bool, note: str) -> None:
        now = workflow.now()
        if not applied:
            for earlier in self._state.signals:
                if (earlier.name, earlier.applied, earlier.note) == (name, False, note):
                    earlier.repeats += 1  # counted, not listed: repeats never grow the state
                    earlier.last_received_at = now
                    return
            workflow.logger.info("Signal %s ignored: %s", name, note)
        self._state.signals.append(
            SignalRecord(name=name, received_at=now, applied=applied, note=note)
        )

    def _record_ignored_cancel(self) -> None:
        self._record_signal(
            "cancel_request",
            applied=False,
            note="past the pivot: nothing to compensate, still delivering",
        )

    def _on_compensation_retry(self, record: StepRecord) -> None:
        metrics.count(names.METRIC_COMPENSATION_RETRIES, compensation=record.name)
        workflow.set_current_details(
            f"Compensation {record.name} keeps failing (attempt {record.attempts}): {record.error}"
        )

    def _record_payment_wait(self, since: datetime) -> None:
        assert self._decision is not None  # recorded once the decision counts
        metrics.record_payment_wait(workflow.now() - since, self._decision)

    def _set_order_status(self, status: OrderStatus) -> None:
        if self._state.order_status != status:
            self._state.order_status = status
            self._upsert_order_status(OrderSearchStatus(status))

    def _upsert_order_status(self, value: OrderSearchStatus) -> None:
        if value == self._search_status:
            return  # an update that changes nothing is an event that carries nothing
        self._search_status = value
        workflow.upsert_search_attributes([names.ORDER_STATUS.value_set(value)])

    def _set_phase(self, phase: SagaPhase, details: str) -> None:
        now = workflow.now()
        if phase != self._state.phase:
            metrics.record_phase(self._state.phase, now - self._phase_since)
            self._phase_since = now
        self._state.phase = phase
        workflow.set_current_details(details)
