"""DeliveryService activities (task queue ``deliveries``): thin adapters over
:mod:`services.deliveries`."""

from sqlalchemy import Engine

import faults
from activities._defn import service_activity, step_transaction
from domain import names
from domain.payloads import (
    CompensationOutcome,
    CreateDeliveryInput,
    DeliveryRef,
    DeliverySnapshot,
    OrderRef,
)
from services import deliveries


class DeliveryActivities:
    """Delivery activities over one engine. Every method is idempotent and acts only on its
    own saga's delivery (``OwnedByAnotherSaga`` otherwise)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @service_activity(names.CREATE_DELIVERY)
    def create_delivery(self, params: CreateDeliveryInput) -> DeliverySnapshot:
        """Create the order's PENDING delivery. Idempotent: an existing one is returned."""
        with step_transaction(self._engine) as db:
            delivery, _ = deliveries.create_delivery(
                db,
                params.delivery_id,
                params.order_id,
                params.province,
                params.city,
                params.saga_id,
            )
        return deliveries.snapshot(delivery)

    @service_activity(names.ASSIGN_DEALER)
    def assign_dealer(self, ref: DeliveryRef) -> DeliverySnapshot:
        """Assign a free dealer, the pivot (:func:`services.deliveries.assign_dealer`);
        ``dealer_id`` None when none is free. Idempotent: an IN_TRANSIT delivery is returned.
        """
        with step_transaction(self._engine) as db:
            delivery, assigned = deliveries.assign_dealer(db, ref.delivery_id, ref.saga_id)
            if assigned:
                faults.point("assign_dealer")  # capacity taken, not committed
        if assigned:
            faults.point("after_commit.assign_dealer")
        return deliveries.snapshot(delivery)

    @service_activity(names.COMPLETE_DELIVERY)
    def complete_delivery(self, ref: DeliveryRef) -> DeliverySnapshot:
        """IN_TRANSIT -> DELIVERED, releasing the dealer's capacity. Idempotent."""
        with step_transaction(self._engine) as db:
            delivery, _ = deliveries.complete_delivery(db, ref.delivery_id, ref.saga_id)
        return deliveries.snapshot(delivery)

    @service_activity(names.CANCEL_DELIVERY)
    def cancel_delivery(self, ref: OrderRef) -> CompensationOutcome:
        """Compensation: cancel the order's delivery, releasing its dealer if one was assigned.
        Idempotent; safe when there is nothing to undo."""
        with step_transaction(self._engine) as db:
            outcome, changed = deliveries.cancel_delivery(db, ref.order_id, ref.saga_id)
            if changed:
                faults.point("compensation")
        return outcome
