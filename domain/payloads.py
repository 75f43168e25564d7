"""Payloads: one small pydantic model in and one out for every workflow, activity and signal,
extended (never duplicated) by the API's schemas. Money is an exact two-place ``Decimal``.
"""

import hashlib
import json
from datetime import datetime, timedelta
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from domain.backoff import Backoff
from domain.input import Count, Identifier, Money, Place
from domain.names import DELIVERIES_TASK_QUEUE, ORDERS_TASK_QUEUE, PAYMENTS_TASK_QUEUE
from domain.status import (
    ActivityRouting,
    Decision,
    DeliveryStatus,
    OrderStatus,
    PaymentStatus,
    RecordStatus,
    SagaPhase,
)

MAX_ITEMS_PER_ORDER = 100


class _Payload(BaseModel):
    # Unknown fields are a client's mistake, not something to drop silently.
    model_config = ConfigDict(extra="forbid", frozen=True)


def to_cents(amount: Decimal) -> int:
    """Exact conversion of a two-place amount to integer cents (how the database stores it)."""
    return int(amount * 100)


def from_cents(cents: int) -> Decimal:
    """Inverse of :func:`to_cents`."""
    return (Decimal(cents) / 100).quantize(Decimal("0.01"))


class OrderItem(_Payload):
    """One line of an order."""

    product_id: Identifier
    # An integer, strictly: true, "3" and 3.0 are refused rather than guessed at.
    quantity: Count = Field(ge=1, le=10)
    unit_price: Money


class OrderRequest(_Payload):
    """What a customer asks for: items and where to deliver them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "c1",
                    "items": [{"product_id": "book", "quantity": 2, "unit_price": "12.50"}],
                    "province": "Tehran",
                    "city": "Tehran",
                }
            ]
        }
    )

    customer_id: Identifier
    items: list[OrderItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_ORDER)
    province: Place
    city: Place

    def fingerprint(self) -> str:
        """Digest of what was asked, insensitive to formatting ("12.5" == "12.50"): a reused
        Idempotency-Key with a different body is refused."""
        canonical = {
            "customer_id": self.customer_id,
            "province": self.province,
            "city": self.city,
            "items": [
                [i.product_id, i.quantity, str(i.unit_price.quantize(Decimal("0.01")))]
                for i in self.items
            ],
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()

    @property
    def total_amount(self) -> Decimal:
        """Order total, computed server-side from the items (exact)."""
        return sum((i.unit_price * i.quantity for i in self.items), Decimal("0.00"))


class SagaTimeouts(_Payload):
    """How long the saga waits for people and dealers: terms fixed when the order is placed.
    These defaults are the settings' defaults."""

    payment_window: timedelta = timedelta(minutes=30)
    dealer_assignment_window: timedelta = timedelta(seconds=20)
    dealer_retry_initial_interval: timedelta = timedelta(seconds=2)

    @property
    def dealer_retry(self) -> Backoff:
        """The wait between dealer assignment attempts, doubling, inside the window."""
        return Backoff(
            initial=self.dealer_retry_initial_interval, maximum=self.dealer_assignment_window
        )


class ServiceQueues(_Payload):
    """Task queue of each service, passed down so deployments and tests can route them."""

    orders: str = ORDERS_TASK_QUEUE
    payments: str = PAYMENTS_TASK_QUEUE
    deliveries: str = DELIVERIES_TASK_QUEUE

    @classmethod
    def routed(cls, routing: ActivityRouting, workflow_task_queue: str) -> "ServiceQueues":
        """The queues of a saga on ``workflow_task_queue`` under ``routing``."""
        if routing == ActivityRouting.WORKFLOW:
            return cls(
                orders=workflow_task_queue,
                payments=workflow_task_queue,
                deliveries=workflow_task_queue,
            )
        return cls()

    @classmethod
    def with_suffix(cls, suffix: str) -> "ServiceQueues":
        return cls(
            orders=ORDERS_TASK_QUEUE + suffix,
            payments=PAYMENTS_TASK_QUEUE + suffix,
            deliveries=DELIVERIES_TASK_QUEUE + suffix,
        )


class OrderProcessInput(_Payload):
    """Input of OrderProcessWorkflow: the order id (chosen by the caller), the request, the
    windows the saga keeps and the task queue of each service."""

    order_id: str
    request: OrderRequest
    timeouts: SagaTimeouts = SagaTimeouts()
    queues: ServiceQueues = ServiceQueues()


# --- activities -------------------------------------------------------------------


class SagaCall(_Payload):
    """Base of every activity input: ``saga_id``, the acting saga's identity (its workflow's
    first run id). Every row a saga creates records it, and a saga acts only on its own rows
    (``OwnedByAnotherSaga`` otherwise); None: not checked.
    """

    saga_id: str | None = None


class CreateOrderInput(SagaCall):
    """create_order: insert the order and its items as PENDING (no-op if it exists)."""

    order_id: str
    request: OrderRequest


class OrderRef(SagaCall):
    """Names one order. For a compensation, ``reason`` is the saga's failure type; for
    cancel_order, ``placed`` records an order the saga never wrote, as cancelled.
    """

    order_id: str
    reason: str | None = None
    placed: OrderRequest | None = None


class OrderSnapshot(_Payload):
    """An order's current status and total."""

    order_id: str
    status: OrderStatus
    total_amount: Decimal


class CreatePaymentInput(SagaCall):
    """create_payment: one PENDING payment per order (no-op if it exists), with when its
    window closes (``expires_at``)."""

    payment_id: str
    order_id: str
    amount: Decimal
    expires_at: datetime | None = None


class PaymentRef(SagaCall):
    """Names one payment."""

    payment_id: str


class PaymentSnapshot(_Payload):
    """A payment's current status, and the customer's decision on it once one is recorded."""

    payment_id: str
    order_id: str
    status: PaymentStatus
    amount: Decimal
    decision: Decision | None = None


class CreateDeliveryInput(SagaCall):
    """create_delivery: one PENDING delivery per order (no-op if it exists)."""

    delivery_id: str
    order_id: str
    province: str
    city: str


class DeliveryRef(SagaCall):
    """Names one delivery."""

    delivery_id: str


class DeliverySnapshot(_Payload):
    """A delivery's current status and dealer."""

    delivery_id: str
    order_id: str
    status: DeliveryStatus
    dealer_id: int | None = None


class CompensationOutcome(_Payload):
    """What a compensation did ('refunded', 'cancelled', 'nothing to undo', ...) and the
    entity's status afterwards (None when the entity was never created)."""

    action: str
    status: str | None = None


# --- signals and the saga's state ----------------------------------------------------


class PaymentDecision(_Payload):
    """Signal payload of confirm_payment / cancel_payment."""

    payment_id: str
    reason: str | None = None


class DeliveredReport(_Payload):
    """Signal payload of mark_delivered. ``dealer_id``: the dealer the database shows with the
    parcel; a saga not yet past its assignment holds the report until it is, then checks it."""

    delivery_id: str
    dealer_id: int | None = None


class StepRecord(BaseModel):
    """One step or compensation of the saga, as it happened."""

    name: str
    status: RecordStatus
    started_at: datetime
    finished_at: datetime | None = None
    attempts: int = 1
    error: str | None = None


class SignalRecord(BaseModel):
    """A signal the saga received, and whether it changed anything. An ignored signal repeated
    for the same reason is counted in ``repeats``, so it never grows the state."""

    name: str
    received_at: datetime
    applied: bool
    note: str
    repeats: int = 0
    last_received_at: datetime | None = None


class SagaState(BaseModel):
    """The full saga state, returned by the ``state`` query and as the workflow result."""

    order_id: str
    phase: SagaPhase = SagaPhase.STARTED
    order_status: OrderStatus | None = None
    total_amount: Decimal | None = None
    payment_id: str | None = None
    payment_status: PaymentStatus | None = None
    delivery_id: str | None = None
    delivery_status: DeliveryStatus | None = None
    dealer_id: int | None = None
    payment_deadline: datetime | None = None
    failure_type: str | None = None
    failure_reason: str | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    compensations: list[StepRecord] = Field(default_factory=list)
    signals: list[SignalRecord] = Field(default_factory=list)
