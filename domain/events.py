"""The choreographed saga's events: what each service tells the others.

Each event names its order (the correlation id), is written in the same transaction as the
change it reports (the outbox), and is applied at most once by each consumer (the inbox)::

    order_created       OrderService    -> PaymentService: create the payment (its window opens)
    payment_confirmed   PaymentService  -> OrderService: confirm the order
    order_confirmed     OrderService    -> DeliveryService: create the delivery, assign a dealer
    delivery_assigned   DeliveryService    the pivot: nothing is undone any more
    delivery_failed     DeliveryService -> PaymentService: refund (no dealer in the window)
    payment_refunded    PaymentService  -> OrderService: cancel the order
    payment_cancelled   PaymentService  -> OrderService: cancel the order (the customer said no)
    payment_expired     PaymentService  -> OrderService: cancel the order (the window closed)
    delivery_completed  DeliveryService -> OrderService: the order is delivered
    order_cancel_requested OrderService -> DeliveryService: stop before the pivot, or refuse
    delivery_cancelled  DeliveryService -> PaymentService: cancel or refund the payment
    order_cancel_refused DeliveryService -> OrderService: too late, the parcel is on its way
    order_delivered, order_cancelled    OrderService: the saga's two ends
"""

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# One stream holds every event; each event type has its subject, each (service, type) its
# durable consumer.
STREAM = "ORDER_EVENTS"
SUBJECT_PREFIX = "order.events"
# Events that failed every delivery attempt, kept for an operator to see and replay.
DEAD_LETTER_STREAM = "ORDER_DEAD_LETTERS"
DEAD_LETTER_PREFIX = "order.dead"


class EventType(StrEnum):
    """What happened (past tense), and so which subject carries it."""

    ORDER_CREATED = "order_created"
    PAYMENT_CONFIRMED = "payment_confirmed"
    PAYMENT_CANCELLED = "payment_cancelled"
    PAYMENT_EXPIRED = "payment_expired"
    PAYMENT_REFUNDED = "payment_refunded"
    ORDER_CONFIRMED = "order_confirmed"
    DELIVERY_ASSIGNED = "delivery_assigned"
    DELIVERY_FAILED = "delivery_failed"
    DELIVERY_COMPLETED = "delivery_completed"
    DELIVERY_CANCELLED = "delivery_cancelled"
    ORDER_CANCEL_REQUESTED = "order_cancel_requested"
    ORDER_CANCEL_REFUSED = "order_cancel_refused"
    ORDER_DELIVERED = "order_delivered"
    ORDER_CANCELLED = "order_cancelled"

    @property
    def subject(self) -> str:
        return f"{SUBJECT_PREFIX}.{self.value}"


class Service(StrEnum):
    """The services that emit and consume events."""

    ORDERS = "orders"
    PAYMENTS = "payments"
    DELIVERIES = "deliveries"


# The schema of the events this code writes. Events outlive a deploy, so :func:`read_event`
# upgrades every version still readable to this one.
EVENT_SCHEMA = 3


class Event(BaseModel):
    """One event. ``event_id`` is the deduplication key of the broker and every inbox;
    ``reason`` is the failure type behind a cancellation or refund; ``dealer_id`` names a
    delivery event's dealer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(default=EVENT_SCHEMA, ge=EVENT_SCHEMA, le=EVENT_SCHEMA)
    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    order_id: str
    type: EventType
    source: Service
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    reason: str | None = None
    dealer_id: int | None = None


class UnreadableEventError(ValueError):
    """An event of a schema version this code does not read (newer, or retired)."""


def _v1_to_v2(event: dict[str, Any]) -> dict[str, Any]:
    # Version 1 (no ``schema_version``) has version 2's fields.
    return {**event, "schema_version": 2}


def _v2_to_v3(event: dict[str, Any]) -> dict[str, Any]:
    # Version 2's order_created carried the payment window, which the order's row now holds.
    upgraded = {**event, "schema_version": 3}
    upgraded.pop("payment_window_seconds", None)
    return upgraded


# How each older version becomes the next (retire one only when none can still be read).
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3}
READABLE_SCHEMAS = frozenset({*UPGRADES, EVENT_SCHEMA})


def read_event(raw: str | bytes | dict[str, Any]) -> Event:
    """An event as written by any build still in flight (JSON, or its decoded object), as
    today's :class:`Event`. :class:`UnreadableEventError` for a version it cannot read;
    pydantic's ``ValidationError`` for a body that is no event."""
    data: Any = raw if isinstance(raw, dict) else json.loads(raw)
    if not isinstance(data, dict):
        raise UnreadableEventError(f"an event is a JSON object, not {type(data).__name__}")
    version = data.get("schema_version", 1)
    if version not in READABLE_SCHEMAS:
        raise UnreadableEventError(
            f"event schema version {version!r} is not one this build reads "
            f"({sorted(READABLE_SCHEMAS)})"
        )
    while version != EVENT_SCHEMA:
        data = UPGRADES[version](data)
        version = data["schema_version"]
    return Event.model_validate(data)
