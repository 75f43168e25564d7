"""OrderService activities (task queue ``orders``)."""

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from activities import faults
from activities._defn import service_activity
from activities._transitions import transition
from domain import names
from domain.errors import business_error
from domain.payloads import (
    CompensationOutcome,
    CreateOrderInput,
    OrderRef,
    OrderSnapshot,
    from_cents,
    to_cents,
)
from domain.status import OrderStatus
from store.db import session
from store.models import OrderItemRow, OrderRow


def _snapshot(row: OrderRow) -> OrderSnapshot:
    return OrderSnapshot(
        order_id=row.id, status=OrderStatus(row.status), total_amount=from_cents(row.total_cents)
    )


class OrderActivities:
    """Order activities over one engine. Every method is idempotent."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @service_activity(names.CREATE_ORDER)
    def create_order(self, params: CreateOrderInput) -> OrderSnapshot:
        """Insert the order PENDING with its items and server-computed total.

        Idempotent: the order id is the primary key; if the order exists it is returned as is.
        """
        request = params.request
        with session(self._engine) as db:
            existing = db.get(OrderRow, params.order_id)
            if existing is not None:
                return _snapshot(existing)
            order = OrderRow(
                id=params.order_id,
                customer_id=request.customer_id,
                status=OrderStatus.PENDING,
                total_cents=to_cents(request.total_amount),
                province=request.province,
                city=request.city,
            )
            db.add(order)
            try:
                # The order row first: items reference it. On PostgreSQL a concurrent
                # attempt's insert of the same id fails here, at the flush, not at commit.
                db.flush()
                db.add_all(
                    OrderItemRow(
                        order_id=order.id,
                        product_id=item.product_id,
                        quantity=item.quantity,
                        unit_price_cents=to_cents(item.unit_price),
                    )
                    for item in request.items
                )
                db.commit()
            except IntegrityError:
                # A concurrent attempt inserted it first: theirs is the order.
                db.rollback()
                return self._get(params.order_id)
            faults.point("after_commit.create_order")
            return _snapshot(order)

    @service_activity(names.CONFIRM_ORDER)
    def confirm_order(self, ref: OrderRef) -> OrderSnapshot:
        """PENDING -> CONFIRMED. Idempotent: an already CONFIRMED or DELIVERED order is fine."""
        return self._move(ref, [OrderStatus.PENDING], OrderStatus.CONFIRMED, OrderStatus.DELIVERED)

    @service_activity(names.MARK_ORDER_DELIVERED)
    def mark_order_delivered(self, ref: OrderRef) -> OrderSnapshot:
        """CONFIRMED -> DELIVERED. Idempotent."""
        return self._move(ref, [OrderStatus.CONFIRMED], OrderStatus.DELIVERED)

    @service_activity(names.CANCEL_ORDER)
    def cancel_order(self, ref: OrderRef) -> CompensationOutcome:
        """Compensation: PENDING or CONFIRMED -> CANCELLED.

        Safe when there is nothing to undo (no order yet, already cancelled); never raises
        for a state it cannot change, so the compensation stack never loops on it.
        """
        with session(self._engine) as db:
            if transition(
                db,
                OrderRow,
                ref.order_id,
                [OrderStatus.PENDING, OrderStatus.CONFIRMED],
                OrderStatus.CANCELLED,
            ):
                faults.point("compensation")
                db.commit()
                return CompensationOutcome(action="cancelled", status=OrderStatus.CANCELLED)
            row = db.get(OrderRow, ref.order_id)
        if row is None:
            return CompensationOutcome(action="nothing to undo")
        if row.status == OrderStatus.CANCELLED:
            return CompensationOutcome(action="already cancelled", status=row.status)
        return CompensationOutcome(action=f"left as {row.status}", status=row.status)

    def _move(
        self, ref: OrderRef, from_states: list[OrderStatus], to: OrderStatus, *later: OrderStatus
    ) -> OrderSnapshot:
        """Guarded transition; a replay finding the row already at ``to`` (or later) is a no-op."""
        with session(self._engine) as db:
            if transition(db, OrderRow, ref.order_id, from_states, to):
                db.commit()
        row = self._get(ref.order_id)
        if row.status not in (to, *later):
            raise business_error(
                names.INVALID_TRANSITION,
                f"order {ref.order_id} is {row.status}, cannot become {to}",
            )
        return row

    def _get(self, order_id: str) -> OrderSnapshot:
        with session(self._engine) as db:
            row = db.get(OrderRow, order_id)
        if row is None:
            raise business_error(names.ENTITY_NOT_FOUND, f"order {order_id} does not exist")
        return _snapshot(row)
