"""Names every process must agree on: task queues, workflow ids, signals, errors."""

import hashlib
import hmac
import uuid

from temporalio.common import SearchAttributeKey

# One task queue per service, plus the workflow's own, so each can scale on its own.
ORDERS_TASK_QUEUE = "orders"
PAYMENTS_TASK_QUEUE = "payments"
DELIVERIES_TASK_QUEUE = "deliveries"
WORKFLOW_TASK_QUEUE = "order-process"
ALL_TASK_QUEUES = (
    WORKFLOW_TASK_QUEUE,
    ORDERS_TASK_QUEUE,
    PAYMENTS_TASK_QUEUE,
    DELIVERIES_TASK_QUEUE,
)

# Keyword search attribute upserted at every status change (Web UI filter). Search attributes
# are stored in clear (the codec cannot reach them): none carries customer data.
ORDER_STATUS_SEARCH_ATTRIBUTE = "OrderStatus"
ORDER_STATUS = SearchAttributeKey.for_keyword(ORDER_STATUS_SEARCH_ATTRIBUTE)
SEARCH_ATTRIBUTES = (ORDER_STATUS,)

# The saga's metrics, each with ``style`` (a SagaStyle): workflows/metrics.py emits the
# orchestrated saga's, choreography/metrics.py the choreographed one's; telemetry.py serves
# counters with ``_total`` and durations in seconds (``_seconds``), as Prometheus names them.
METRIC_STARTED = "order_saga_started"
METRIC_ENDED = "order_saga_ended"  # outcome: delivered | cancelled; reason: the failure type
METRIC_REFUNDED = "order_saga_refunded"  # a cancelled saga that gave the money back
METRIC_COMPENSATION_RETRIES = "order_saga_compensation_retries"  # compensation: its name
METRIC_PHASE = "order_saga_phase"  # time spent in a phase; phase: a SagaPhase
METRIC_PAYMENT_WAIT = "order_saga_payment_wait"  # decision: a Decision

# Signals and queries of OrderProcessWorkflow.
SIGNAL_CONFIRM_PAYMENT = "confirm_payment"
SIGNAL_CANCEL_PAYMENT = "cancel_payment"
SIGNAL_MARK_DELIVERED = "mark_delivered"
QUERY_STATE = "state"
UPDATE_WAIT_FOR_PAYMENT = "wait_for_payment"

# Types of the non-retryable business failures (ApplicationError.type).
NO_DEALER_AVAILABLE = "NoDealerAvailable"
PAYMENT_CANCELLED = "PaymentCancelled"
PAYMENT_TIMED_OUT = "PaymentTimedOut"
INVALID_TRANSITION = "InvalidStateTransition"
ENTITY_NOT_FOUND = "EntityNotFound"
# A row exists for this order but another saga created it: touch nothing.
OWNED_BY_ANOTHER_SAGA = "OwnedByAnotherSaga"
# Not an error: the failure type of a saga cancelled on request (customer, operator, Web UI).
CANCELLED_ON_REQUEST = "CancelledOnRequest"
BUSINESS_ERRORS = (
    NO_DEALER_AVAILABLE,
    PAYMENT_CANCELLED,
    PAYMENT_TIMED_OUT,
    INVALID_TRANSITION,
    ENTITY_NOT_FOUND,
    OWNED_BY_ANOTHER_SAGA,
)

_WORKFLOW_ID_PREFIX = "order-"


def workflow_id_for(order_id: str) -> str:
    """The saga's workflow id: a business key, so one order never gets two sagas."""
    return f"{_WORKFLOW_ID_PREFIX}{order_id}"


def choreographed_saga_id(order_id: str) -> str:
    """The identity every row of a choreographed order records as its saga (an orchestrated
    saga's is its workflow's first run id)."""
    return f"events:{order_id}"


def order_id_for_idempotency_key(secret: bytes, customer_id: str, key: str) -> str:
    """The order id of a customer's Idempotency-Key, the same in every process: an HMAC under
    ``secret``, so no one else can tell which id another customer's key stands for."""
    digest = hmac.new(secret, f"{customer_id}\x00{key}".encode(), hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def new_order_id(secret: bytes, customer_id: str, idempotency_key: str | None) -> str:
    """The id of a new order: derived from its Idempotency-Key (see
    :func:`order_id_for_idempotency_key`), or random."""
    if idempotency_key is not None:
        return order_id_for_idempotency_key(secret, customer_id, idempotency_key)
    return str(uuid.uuid4())


def payment_id_for(order_id: str) -> str:
    """The order's one payment id: deterministic, so a retried step reuses it."""
    return str(uuid.uuid5(uuid.UUID(order_id), "payment"))


def delivery_id_for(order_id: str) -> str:
    """The order's one delivery id: deterministic, so a retried step reuses it."""
    return str(uuid.uuid5(uuid.UUID(order_id), "delivery"))


# Activity names: the workflow calls activities by name, never importing their database code.
CREATE_ORDER = "create_order"
CONFIRM_ORDER = "confirm_order"
MARK_ORDER_DELIVERED = "mark_order_delivered"
CANCEL_ORDER = "cancel_order"
CREATE_PAYMENT = "create_payment"
COMPLETE_PAYMENT = "complete_payment"
EXPIRE_PAYMENT = "expire_payment"
CANCEL_OR_REFUND_PAYMENT = "cancel_or_refund_payment"
CREATE_DELIVERY = "create_delivery"
ASSIGN_DEALER = "assign_dealer"
COMPLETE_DELIVERY = "complete_delivery"
CANCEL_DELIVERY = "cancel_delivery"

# The saga's delivered path, step for step, split where it waits for the customer's decision
# and for the dealer's report (the steps after each run side by side, then assign_dealer).
STEPS_BEFORE_DECISION = (CREATE_ORDER, CREATE_PAYMENT)
STEPS_AFTER_DECISION = (COMPLETE_PAYMENT, CONFIRM_ORDER, CREATE_DELIVERY)
STEPS_TO_PIVOT = (*STEPS_AFTER_DECISION, ASSIGN_DEALER)
STEPS_AFTER_DELIVERED = (COMPLETE_DELIVERY, MARK_ORDER_DELIVERED)
