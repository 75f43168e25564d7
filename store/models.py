"""SQLModel tables of the three services. Money is stored as integer cents (exact everywhere)."""

from datetime import UTC, datetime

from sqlalchemy import BigInteger, CheckConstraint, Column, Index
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite gives back naive ones, stored in UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def place_key(name: str) -> str:
    """Normalised province/city for case-insensitive matching (Unicode-aware, unlike SQL lower)."""
    return " ".join(name.split()).casefold()


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
    # The saga that created the row (its workflow's first run id): a saga acts only on its
    # own rows. None for rows written before migration 0003 (the first saga to move one claims it).
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
    # When the saga's payment window closes: the API refuses a decision after it without
    # asking the saga. None for payments created before this column existed.
    expires_at: datetime | None = None
    # The saga that created the row (its workflow's first run id): a saga acts only on its
    # own rows. None for rows written before migration 0003 (the first saga to move one claims it).
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
    # The saga that created the row (its workflow's first run id): a saga acts only on its
    # own rows. None for rows written before migration 0003 (the first saga to move one claims it).
    saga_id: str | None = Field(default=None, max_length=64)


class IdempotencyKeyRow(SQLModel, table=True):
    """A customer's ``Idempotency-Key`` of ``POST /orders`` and the order it stands for.

    Kept for as long as the order: a replay of the request, however late (long after Temporal
    dropped the closed saga), answers that order from here and starts nothing. Written before
    the saga starts, so it has no foreign key to the order row the saga writes later.
    """

    __tablename__ = "idempotency_keys"

    customer_id: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=200)
    # OrderRequest.fingerprint() of the first request: the same key with another body is refused.
    fingerprint: str = Field(max_length=64)
    order_id: str = Field(max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    # When the order's saga was known to be started: a replay that finds neither the order
    # row nor a saga then knows the saga ended before it wrote the order, rather than start
    # a new one years later.
    saga_started_at: datetime | None = None
