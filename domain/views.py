"""What both saga styles answer with: the read models of orders, payments, deliveries and dealers.

Built from the services' rows (``sagas.views``) and served as they are by the API; pydantic,
no I/O.
"""

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from domain.payloads import Count, Name, SagaState
from domain.status import DeliveryStatus, OrderStatus, PaymentStatus

Phone = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=32, pattern=r"^\+?[0-9 ()-]+$"
    ),
]


class ItemView(BaseModel):
    """One order line."""

    product_id: str
    quantity: int
    unit_price: Decimal


class PaymentView(BaseModel):
    """The order's payment."""

    payment_id: str
    status: PaymentStatus
    amount: Decimal


class DeliveryView(BaseModel):
    """The order's delivery and its dealer, once assigned."""

    delivery_id: str
    status: DeliveryStatus
    dealer_id: int | None


class OrderSummary(BaseModel):
    """An order as listed by ``GET /orders``."""

    order_id: str
    customer_id: str
    status: OrderStatus
    total_amount: Decimal
    province: str
    city: str
    created_at: datetime
    workflow_id: str
    workflow_url: str


class OrderView(BaseModel):
    """One order with its payment, delivery and the saga's own account of what happened.

    ``status`` is None while the saga has not written the order yet.
    """

    order_id: str
    workflow_id: str
    workflow_url: str
    status: OrderStatus | None
    customer_id: str | None = None
    total_amount: Decimal | None = None
    province: str | None = None
    city: str | None = None
    items: list[ItemView] = Field(default_factory=list)
    payment: PaymentView | None = None
    delivery: DeliveryView | None = None
    saga: SagaState | None = Field(
        default=None, description="Steps, compensations, signals and failure, from the workflow."
    )


class OrderPage(BaseModel):
    """A page of orders."""

    items: list[OrderSummary]
    total: int
    limit: int
    offset: int


class NewDealer(BaseModel):
    """A new delivery person."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Ana",
                    "phone": "+98 21 0009",
                    "province": "Tehran",
                    "city": "Tehran",
                    "capacity": 4,
                }
            ]
        }
    )

    name: Name
    phone: Phone
    province: Name
    city: Name
    capacity: Count = Field(ge=1, le=1000)


class DealerView(BaseModel):
    """A delivery person and how many parcels it carries now."""

    id: int
    name: str
    phone: str
    province: str
    city: str
    capacity: int
    active_deliveries: int
