"""SQLModel tables of the three services. Money is stored as integer cents (exact everywhere)."""

import uuid
from datetime import UTC, datetime

from sqlalchemy import BigInteger, CheckConstraint, Column, Index, Integer, String, Text
from sqlmodel import Field, SQLModel

from domain.places import place_key as place_key  # the dealers' key columns hold it


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite gives back naive ones, stored in UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class OrderRow(SQLModel, table=True):
    """An order (OrderService)."""

    __tablename__ = "orders"

    id: str = Field(primary_key=True, max_length=36)
    customer_id: str = Field(index=True, max_length=64)
    status: str = Field(index=True, max_length=16)
    total_cents: int = Field(sa_column=Column(BigInteger, nullable=False))
    province: str = Field(max_length=100)
    city: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # Why a CANCELLED order was cancelled (the saga's failure type).
    cancel_reason: str | None = Field(default=None, max_length=64)
    # How its saga runs (SagaStyle), fixed when it was placed; both styles share the tables.
    saga_style: str = Field(
        default="orchestration",
        sa_column=Column(String(16), nullable=False, server_default="orchestration"),
    )
    # Choreography: when a cancel was asked for (DeliveryService then cancels or refuses it).
    cancel_requested_at: datetime | None = None
    # Choreography: the saga's windows (SagaTimeouts as JSON), fixed when it was placed.
    saga_timeouts: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The saga that created it (None: unclaimed): a saga acts only on its own rows.
    saga_id: str | None = Field(default=None, max_length=64)


class OrderItemRow(SQLModel, table=True):
    """One line of an order."""

    __tablename__ = "order_items"

    id: int | None = Field(default=None, primary_key=True)
    order_id: str = Field(foreign_key="orders.id", index=True, max_length=36)
    product_id: str = Field(max_length=64)
    quantity: int
    unit_price_cents: int = Field(sa_column=Column(BigInteger, nullable=False))


class PaymentRow(SQLModel, table=True):
    """A payment (PaymentService): at most one per order (unique order_id)."""

    __tablename__ = "payments"

    id: str = Field(primary_key=True, max_length=36)
    order_id: str = Field(foreign_key="orders.id", unique=True, max_length=36)
    status: str = Field(index=True, max_length=16)
    amount_cents: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    refunded_at: datetime | None = None
    # When the payment window closes: the API refuses a later decision without the saga.
    expires_at: datetime | None = None
    # The saga that created it (None: unclaimed): a saga acts only on its own rows.
    saga_id: str | None = Field(default=None, max_length=64)


class RefundRow(SQLModel, table=True):
    """The money sent back for a payment: at most one per payment (unique payment_id)."""

    __tablename__ = "refunds"

    id: int | None = Field(default=None, primary_key=True)
    payment_id: str = Field(foreign_key="payments.id", unique=True, max_length=36)
    amount_cents: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class DealerRow(SQLModel, table=True):
    """A delivery person serving one province and city, with a capacity of parcels."""

    __tablename__ = "dealers"
    __table_args__ = (
        # The database itself refuses an overbooked or negative dealer.
        CheckConstraint(
            "active_deliveries >= 0 AND active_deliveries <= capacity", name="dealer_capacity"
        ),
        Index("ix_dealers_place", "province_key", "city_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    phone: str = Field(unique=True, max_length=32)
    province: str = Field(max_length=100)
    city: str = Field(max_length=100)
    province_key: str = Field(max_length=100)
    city_key: str = Field(max_length=100)
    capacity: int
    active_deliveries: int = 0
    created_at: datetime = Field(default_factory=utcnow)


def new_dealer(name: str, phone: str, province: str, city: str, capacity: int) -> DealerRow:
    """A dealer row with its normalised place keys filled in."""
    return DealerRow(
        name=name,
        phone=phone,
        province=province,
        city=city,
        province_key=place_key(province),
        city_key=place_key(city),
        capacity=capacity,
    )


class DeliveryRow(SQLModel, table=True):
    """A delivery (DeliveryService): at most one per order (unique order_id)."""

    __tablename__ = "deliveries"

    id: str = Field(primary_key=True, max_length=36)
    order_id: str = Field(foreign_key="orders.id", unique=True, max_length=36)
    status: str = Field(index=True, max_length=16)
    province: str = Field(max_length=100)
    city: str = Field(max_length=100)
    dealer_id: int | None = Field(default=None, foreign_key="dealers.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # Choreography: the dealer window's deadline and the sweeper's next assignment attempt.
    assign_by: datetime | None = None
    next_attempt_at: datetime | None = Field(default=None, index=True)
    assign_attempts: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )
    # When the report's signal reached the orchestrated saga: a repeat sends no other.
    report_signalled_at: datetime | None = None
    # The saga that created it (None: unclaimed): a saga acts only on its own rows.
    saga_id: str | None = Field(default=None, max_length=64)


class IdempotencyKeyRow(SQLModel, table=True):
    """A customer's ``Idempotency-Key`` of ``POST /orders`` and the order it stands for (no
    foreign key: it is written before the saga writes the order)."""

    __tablename__ = "idempotency_keys"

    customer_id: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=200)
    # OrderRequest.fingerprint() of the first request: the same key with another body is refused.
    fingerprint: str = Field(max_length=64)
    order_id: str = Field(max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    # When its saga was known to be started (a replay then finding no order nor saga: 409).
    saga_started_at: datetime | None = None


class PaymentDecisionRow(SQLModel, table=True):
    """The customer's decision on an order's payment, opened undecided when the order is
    accepted and set exactly once by a compare-and-set (confirm, cancel or the window's close).
    """

    __tablename__ = "payment_decisions"

    payment_id: str = Field(primary_key=True, max_length=36)
    order_id: str = Field(unique=True, max_length=36)
    customer_id: str = Field(index=True, max_length=64)
    decision: str | None = Field(default=None, max_length=16)
    decided_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    # When the decision's signal reached the orchestrated saga: a repeat sends no other.
    signalled_at: datetime | None = None


class OutboxRow(SQLModel, table=True):
    """An event a service emitted, written in the same transaction as the change it reports,
    published with ``Nats-Msg-Id`` = ``message_id`` (the event id, or a replay's own), then
    marked; a failing row is tried again after a growing delay.
    """

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(index=True, max_length=36)
    message_id: str = Field(unique=True, max_length=80)
    order_id: str = Field(index=True, max_length=36)
    type: str = Field(max_length=32)
    source: str = Field(max_length=16)
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    published_at: datetime | None = Field(default=None, index=True)
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    next_attempt_at: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The W3C trace context of the transaction that wrote it (null with tracing off), sent as
    # the message's traceparent header so its consumers continue that trace.
    traceparent: str | None = Field(default=None, max_length=55)


class InboxRow(SQLModel, table=True):
    """An event a consumer has applied, written in the same transaction as its effect: a
    redelivered or duplicated event finds its row and has no second effect."""

    __tablename__ = "inbox"

    consumer: str = Field(primary_key=True, max_length=64)
    event_id: str = Field(primary_key=True, max_length=36)
    order_id: str = Field(index=True, max_length=36)
    type: str = Field(max_length=32)
    # How many times the broker delivered it before it was applied (1: the first time).
    deliveries: int = 1
    consumed_at: datetime = Field(default_factory=utcnow)
    # What the consumer did with it, for the order's event log.
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class DeadLetterRow(SQLModel, table=True):
    """An event a consumer failed to apply on every delivery it was given: kept for an
    operator to see, fix the cause, and replay. Never silently dropped."""

    __tablename__ = "dead_letters"

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), primary_key=True, max_length=36)
    consumer: str = Field(max_length=64)
    event_id: str = Field(max_length=36)
    order_id: str = Field(index=True, max_length=36)
    type: str = Field(max_length=32)
    body: str = Field(sa_column=Column(Text, nullable=False))
    error: str = Field(sa_column=Column(Text, nullable=False))
    deliveries: int
    failed_at: datetime = Field(default_factory=utcnow)
    replayed_at: datetime | None = None
