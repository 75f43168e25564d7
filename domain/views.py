"""What both saga styles answer with: the read models of orders, payments, deliveries and
dealers, built from the services' rows (``sagas.views``); no I/O.
"""

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from domain.events import EventType, Service
from domain.input import Count, Name, Phone, Place
from domain.status import (
    Decision,
    DeliveryStatus,
    OrderStatus,
    PaymentStatus,
    SagaPhase,
    SagaStyle,
)


class ItemView(BaseModel):
    """One order line."""

    product_id: str
    quantity: int
    unit_price: Decimal


class PaymentView(BaseModel):
    """The order's payment, and the decision taken on it (None until one is)."""

    payment_id: str
    status: PaymentStatus
    amount: Decimal
    decision: Decision | None = None


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
    style: SagaStyle
    workflow_id: str | None = None
    workflow_url: str | None = None


class Consumption(BaseModel):
    """A service applied an event: when, after how many deliveries, and what it did."""

    consumer: str
    consumed_at: datetime
    deliveries: int
    note: str | None


class DeadLetterView(BaseModel):
    """An event a consumer could not apply on any of its deliveries, kept for an operator."""

    id: str
    consumer: str
    event_id: str
    order_id: str
    type: str
    error: str
    deliveries: int
    failed_at: datetime
    replayed_at: datetime | None


class OrderEvent(BaseModel):
    """One event of a choreographed order, as its customer sees it: what happened, when, and
    why (for a cancellation or a refund)."""

    type: str
    occurred_at: datetime
    reason: str | None = None


class EventLogEntry(OrderEvent):
    """One event of a choreographed order, as an operator sees it: who emitted it, its
    publishing, who applied it and who could not (dead letters)."""

    event_id: str
    source: str
    published_at: datetime | None
    publish_attempts: int = 0
    publish_error: str | None = None
    consumed: list[Consumption] = Field(default_factory=list)
    dead_letters: list[DeadLetterView] = Field(default_factory=list)


class OrderView(BaseModel):
    """One order with its payment and delivery, read from the services' rows alone.
    ``phase``: where its saga is as the rows show it (CREATING, ``status`` None, until the
    order is written); ``failure_type``: why it is (being) cancelled, once known.
    """

    order_id: str
    style: SagaStyle
    # Orchestration: the saga's workflow, and its page in the Temporal Web UI.
    workflow_id: str | None = None
    workflow_url: str | None = None
    phase: SagaPhase
    failure_type: str | None = None
    status: OrderStatus | None
    customer_id: str
    total_amount: Decimal | None = None
    province: str | None = None
    city: str | None = None
    items: list[ItemView] = Field(default_factory=list)
    payment: PaymentView | None = None
    delivery: DeliveryView | None = None
    # Choreography: what happened to the order, event by event.
    events: list[OrderEvent] | None = None


class StuckOrder(BaseModel):
    """An order whose saga waits longer than expected, and why (``GET /orders/stuck``).

    ``waiting_for`` names what the saga waits for: a signal (the customer's decision, the
    dealer's report), a step (an activity, its attempt and last failure), a timer (the next
    dealer attempt), an event its consumer has not applied, a dead letter's replay, or a
    workflow that is no longer running."""

    order_id: str
    style: SagaStyle
    phase: SagaPhase
    # Its last progress: the latest change to its rows (or its dead letter's failure).
    since: datetime
    waiting_for: str
    why: str
    # The step's or the consumer's last error, when one is failing.
    error: str | None = None
    attempts: int | None = None
    # Choreography: the consumer that has not applied the event, and its dead letter.
    consumer: str | None = None
    dead_letter_id: str | None = None
    # Orchestration: the saga's workflow, and its page in the Temporal Web UI.
    workflow_id: str | None = None
    workflow_url: str | None = None


# A date-time as RFC 3339 writes it, its offset required.
RFC_3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)\Z")
# A consumer's name: ``<service>-<event type>`` (``payments-order_created``).
CONSUMER_NAME = rf"^({'|'.join(Service)})-({'|'.join(EventType)})$"


class ReplayFilter(BaseModel):
    """Which pending dead letters a bulk replay takes (``POST /dead-letters/replay``): those
    every filter given matches; ``all: true`` stands for no filter. At least one field is
    given, so an empty body replays nothing by accident; none is ever null."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    consumer: Annotated[str, Field(pattern=CONSUMER_NAME)] | SkipJsonSchema[None] = None
    type: EventType | SkipJsonSchema[None] = None
    # Failed at or after ``since``, and before ``until`` (times with their offset).
    since: AwareDatetime | SkipJsonSchema[None] = None
    until: AwareDatetime | SkipJsonSchema[None] = None
    all: Literal[True] | SkipJsonSchema[None] = None

    @field_validator("consumer", "type", "since", "until", "all", mode="before")
    @classmethod
    def _given(cls, value: object) -> object:
        # The schema has no null: a filter left out is left out, never null.
        if value is None:
            raise ValueError("leave a filter out rather than null")
        return value

    @field_validator("since", "until", mode="before")
    @classmethod
    def _a_time(cls, value: object) -> object:
        # RFC 3339 text (the schema's date-time), never a number read as a Unix timestamp.
        if isinstance(value, datetime) or (isinstance(value, str) and RFC_3339.match(value)):
            return value
        raise ValueError("a time is RFC 3339 text with its offset: 2026-12-07T10:00:00Z")

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # The rows' times are UTC, and SQLite compares them as text.
        try:
            return value.astimezone(UTC)
        except OverflowError:  # past year 1 or 9999 in UTC: as far as a filter goes
            return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _something_chosen(self) -> "ReplayFilter":
        if not self.model_fields_set:
            raise ValueError("give a filter (consumer, type, since, until), or all: true")
        return self


class ReplayQueued(BaseModel):
    """How many dead letters a bulk replay queued in the outbox (0: none was pending)."""

    queued: int


class OrderPage(BaseModel):
    """A page of orders."""

    items: list[OrderSummary]
    total: int
    limit: int
    offset: int


class NewDealer(BaseModel):
    """A new delivery person."""

    model_config = ConfigDict(
        # Unknown fields are a client's mistake, not something to drop silently.
        extra="forbid",
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
        },
    )

    name: Name
    phone: Phone
    province: Place
    city: Place
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
