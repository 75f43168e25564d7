"""OrderService activities (task queue ``orders``): thin adapters over :mod:`services.orders`."""

from sqlalchemy import Engine

import faults
from activities._defn import service_activity, step_transaction
from domain import names
from domain.payloads import CompensationOutcome, CreateOrderInput, OrderRef, OrderSnapshot
from services import orders


class OrderActivities:
    """Order activities over one engine. Every method is idempotent and acts only on its
    own saga's order (``OwnedByAnotherSaga`` otherwise)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @service_activity(names.CREATE_ORDER)
    def create_order(self, params: CreateOrderInput) -> OrderSnapshot:
        """Insert the order PENDING with its items and total. Idempotent: an existing one is
        returned as it is."""
        with step_transaction(self._engine) as db:
            order, inserted = orders.create_order(
                db, params.order_id, params.request, params.saga_id
            )
        if inserted:
            faults.point("after_commit.create_order")
        return orders.snapshot(order)

    @service_activity(names.CONFIRM_ORDER)
    def confirm_order(self, ref: OrderRef) -> OrderSnapshot:
        """PENDING -> CONFIRMED. Idempotent: an already CONFIRMED or DELIVERED order is fine."""
        with step_transaction(self._engine) as db:
            order = orders.confirm_order(db, ref.order_id, ref.saga_id)
        return orders.snapshot(order)

    @service_activity(names.MARK_ORDER_DELIVERED)
    def mark_order_delivered(self, ref: OrderRef) -> OrderSnapshot:
        """CONFIRMED -> DELIVERED. Idempotent."""
        with step_transaction(self._engine) as db:
            order = orders.mark_order_delivered(db, ref.order_id, ref.saga_id)
        return orders.snapshot(order)

    @service_activity(names.CANCEL_ORDER)
    def cancel_order(self, ref: OrderRef) -> CompensationOutcome:
        """Compensation: PENDING or CONFIRMED -> CANCELLED. Idempotent; safe when there is
        nothing to undo, and never raises for a state it cannot change."""
        with step_transaction(self._engine) as db:
            outcome, changed = orders.cancel_order(
                db, ref.order_id, ref.saga_id, ref.reason, ref.placed
            )
            if changed:
                faults.point("compensation")
        return outcome
