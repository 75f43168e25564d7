"""The read side: orders, payments, deliveries and dealers as the views show them, read from
the services' rows (sync: callers in an event loop run them in a thread)."""

from sqlalchemy import Engine, func
from sqlmodel import col, select

from domain.names import workflow_id_for
from domain.payloads import from_cents
from domain.status import DeliveryStatus, OrderStatus, PaymentStatus
from domain.views import (
    DealerView,
    DeliveryView,
    ItemView,
    OrderSummary,
    OrderView,
    PaymentView,
)
from settings import Settings
from store.db import read_session
from store.models import DealerRow, DeliveryRow, OrderItemRow, OrderRow, PaymentRow, place_key


def order_view(engine: Engine, settings: Settings, order_id: str) -> OrderView | None:
    """The order with its items, payment and delivery; None if the order row does not exist."""
    with read_session(engine) as db:
        order = db.get(OrderRow, order_id)
        if order is None:
            return None
        items = db.exec(
            select(OrderItemRow)
            .where(OrderItemRow.order_id == order_id)
            .order_by(col(OrderItemRow.id))
        ).all()
        payment = db.exec(select(PaymentRow).where(PaymentRow.order_id == order_id)).first()
        delivery = db.exec(select(DeliveryRow).where(DeliveryRow.order_id == order_id)).first()
    workflow_id = workflow_id_for(order_id)
    return OrderView(
        order_id=order.id,
        workflow_id=workflow_id,
        workflow_url=settings.workflow_url(workflow_id),
        status=OrderStatus(order.status),
        customer_id=order.customer_id,
        total_amount=from_cents(order.total_cents),
        province=order.province,
        city=order.city,
        items=[
            ItemView(
                product_id=i.product_id,
                quantity=i.quantity,
                unit_price=from_cents(i.unit_price_cents),
            )
            for i in items
        ],
        payment=PaymentView(
            payment_id=payment.id,
            status=PaymentStatus(payment.status),
            amount=from_cents(payment.amount_cents),
        )
        if payment
        else None,
        delivery=DeliveryView(
            delivery_id=delivery.id,
            status=DeliveryStatus(delivery.status),
            dealer_id=delivery.dealer_id,
        )
        if delivery
        else None,
    )


def list_orders(
    engine: Engine,
    settings: Settings,
    *,
    status: OrderStatus | None,
    customer_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[OrderSummary], int]:
    """A page of orders, newest first, and the total matching the filters."""
    filters = []
    if status is not None:
        filters.append(col(OrderRow.status) == status)
    if customer_id is not None:
        filters.append(col(OrderRow.customer_id) == customer_id)
    with read_session(engine) as db:
        total = db.exec(select(func.count()).select_from(OrderRow).where(*filters)).one()
        rows = db.exec(
            select(OrderRow)
            .where(*filters)
            .order_by(col(OrderRow.created_at).desc(), col(OrderRow.id))
            .limit(limit)
            .offset(offset)
        ).all()
    return [
        OrderSummary(
            order_id=r.id,
            customer_id=r.customer_id,
            status=OrderStatus(r.status),
            total_amount=from_cents(r.total_cents),
            province=r.province,
            city=r.city,
            created_at=r.created_at,
            workflow_id=workflow_id_for(r.id),
            workflow_url=settings.workflow_url(workflow_id_for(r.id)),
        )
        for r in rows
    ], total


def get_payment(engine: Engine, payment_id: str) -> PaymentRow | None:
    """The payment's row; None if unknown."""
    with read_session(engine) as db:
        return db.get(PaymentRow, payment_id)


def customer_of(
    engine: Engine, *, order_id: str | None = None, payment_id: str | None = None
) -> str | None:
    """The customer who placed the order (named by its id or its payment's); None if unknown."""
    if order_id is None and payment_id is None:
        raise TypeError("customer_of needs an order_id or a payment_id")
    query = select(OrderRow.customer_id)
    if order_id is not None:
        query = query.where(col(OrderRow.id) == order_id)
    if payment_id is not None:
        query = query.join(PaymentRow, col(PaymentRow.order_id) == col(OrderRow.id)).where(
            col(PaymentRow.id) == payment_id
        )
    with read_session(engine) as db:
        return db.exec(query).first()


def get_delivery(engine: Engine, delivery_id: str) -> DeliveryRow | None:
    """The delivery's row; None if unknown."""
    with read_session(engine) as db:
        return db.get(DeliveryRow, delivery_id)


def dealer_view(row: DealerRow) -> DealerView:
    assert row.id is not None
    return DealerView(
        id=row.id,
        name=row.name,
        phone=row.phone,
        province=row.province,
        city=row.city,
        capacity=row.capacity,
        active_deliveries=row.active_deliveries,
    )


def list_dealers(
    engine: Engine, *, province: str | None, city: str | None, limit: int, offset: int
) -> list[DealerView]:
    """A page of dealers, optionally of one province and city (matched case-insensitively)."""
    filters = []
    if province is not None:
        filters.append(col(DealerRow.province_key) == place_key(province))
    if city is not None:
        filters.append(col(DealerRow.city_key) == place_key(city))
    with read_session(engine) as db:
        rows = db.exec(
            select(DealerRow)
            .where(*filters)
            .order_by(col(DealerRow.id))
            .limit(limit)
            .offset(offset)
        ).all()
    return [dealer_view(r) for r in rows]


def ping(engine: Engine) -> None:
    """A read of the orders table: the database answers and its schema is in place."""
    with read_session(engine) as db:
        db.exec(select(OrderRow.id).limit(1)).first()
