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
