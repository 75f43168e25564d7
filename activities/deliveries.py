"""DeliveryService activities (task queue ``deliveries``): deliveries and dealer capacity."""

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from activities import faults
from activities._defn import service_activity
from activities._transitions import transition
from domain import names
from domain.errors import business_error
from domain.payloads import (
    CompensationOutcome,
    CreateDeliveryInput,
    DeliveryRef,
    DeliverySnapshot,
    OrderRef,
)
from domain.status import DeliveryStatus
from store.db import session
from store.models import DealerRow, DeliveryRow, place_key


def _snapshot(row: DeliveryRow) -> DeliverySnapshot:
    return DeliverySnapshot(
        delivery_id=row.id,
        order_id=row.order_id,
        status=DeliveryStatus(row.status),
        dealer_id=row.dealer_id,
    )


def _take_capacity(db: Session, dealer_id: int) -> bool:
    """Atomically take one unit of a dealer's capacity; False if it is full."""
    result = db.execute(
        update(DealerRow)
        .where(
            col(DealerRow.id) == dealer_id,
            col(DealerRow.active_deliveries) < col(DealerRow.capacity),
        )
        .values(active_deliveries=DealerRow.active_deliveries + 1)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _release_capacity(db: Session, dealer_id: int) -> None:
    """Give one unit of capacity back (guarded: never below zero)."""
    db.execute(
        update(DealerRow)
        .where(col(DealerRow.id) == dealer_id, col(DealerRow.active_deliveries) > 0)
        .values(active_deliveries=DealerRow.active_deliveries - 1)
    )


class DeliveryActivities:
    """Delivery activities over one engine. Every method is idempotent."""

    # How many times assignment re-picks when another transaction took the chosen
    # dealer's last unit between the pick and the guarded update.
    MAX_PICKS = 20

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @service_activity(names.CREATE_DELIVERY)
    def create_delivery(self, params: CreateDeliveryInput) -> DeliverySnapshot:
        """Create the order's PENDING delivery.

        Idempotent: one delivery per order (unique ``order_id``); the existing one is returned.
        """
        with session(self._engine) as db:
            existing = self._for_order(db, params.order_id)
            if existing is not None:
                return _snapshot(existing)
            delivery = DeliveryRow(
                id=params.delivery_id,
                order_id=params.order_id,
                status=DeliveryStatus.PENDING,
                province=params.province,
                city=params.city,
            )
            db.add(delivery)
            try:
                db.commit()
            except IntegrityError:
                db.rollback()  # a concurrent attempt created it: return that one
                existing = self._for_order(db, params.order_id)
                if existing is None:  # the foreign key refused it: no such order
                    raise business_error(
                        names.ENTITY_NOT_FOUND, f"order {params.order_id} does not exist"
                    ) from None
                return _snapshot(existing)
            return _snapshot(delivery)

    @service_activity(names.ASSIGN_DEALER)
    def assign_dealer(self, ref: DeliveryRef) -> DeliverySnapshot:
        """Assign the least-loaded dealer of the delivery's province and city with free capacity.

        In one transaction: take one unit of the dealer's capacity (guarded UPDATE, so two
        concurrent assignments never overbook) and move the delivery PENDING -> IN_TRANSIT.
        Returns the delivery with ``dealer_id`` None when no dealer is free right now (the
        workflow decides how long to keep trying). Idempotent: an IN_TRANSIT delivery is
        returned with its dealer. A delivery that is no longer PENDING (the saga's
        compensation cancelled it) is a non-retryable InvalidStateTransition.
        """
        with session(self._engine) as db:
            delivery = db.get(DeliveryRow, ref.delivery_id)
            if delivery is None:
                raise business_error(
                    names.ENTITY_NOT_FOUND, f"delivery {ref.delivery_id} does not exist"
                )
            if delivery.status == DeliveryStatus.IN_TRANSIT:
                return _snapshot(delivery)
            if delivery.status != DeliveryStatus.PENDING:
                raise business_error(
                    names.INVALID_TRANSITION,
                    f"delivery {ref.delivery_id} is {delivery.status}, cannot assign a dealer",
                )
            for _ in range(self.MAX_PICKS):
                dealer_id = self._least_loaded_dealer(db, delivery)
                if dealer_id is None:
                    return _snapshot(delivery)
                if not _take_capacity(db, dealer_id):
                    continue  # someone took its last unit first: pick again
                if not transition(
                    db,
                    DeliveryRow,
                    delivery.id,
                    [DeliveryStatus.PENDING],
                    DeliveryStatus.IN_TRANSIT,
                    dealer_id=dealer_id,
                ):
                    db.rollback()  # cancelled concurrently: give the capacity back
                    return self.assign_dealer(ref)
                faults.point("assign_dealer")  # capacity taken, not committed
                db.commit()
                faults.point("after_commit.assign_dealer")
                db.refresh(delivery)
                return _snapshot(delivery)
        # Contention kept stealing every free dealer; an ordinary retry will sort it out.
        raise RuntimeError(f"dealer assignment for {ref.delivery_id} lost {self.MAX_PICKS} races")

    @service_activity(names.COMPLETE_DELIVERY)
    def complete_delivery(self, ref: DeliveryRef) -> DeliverySnapshot:
        """IN_TRANSIT -> DELIVERED and release the dealer's capacity, in one transaction.

        Idempotent: a DELIVERED delivery is returned as is and releases nothing again.
        """
        with session(self._engine) as db:
            delivery = db.get(DeliveryRow, ref.delivery_id)
            if delivery is None:
                raise business_error(
                    names.ENTITY_NOT_FOUND, f"delivery {ref.delivery_id} does not exist"
                )
            if transition(
                db, DeliveryRow, delivery.id, [DeliveryStatus.IN_TRANSIT], DeliveryStatus.DELIVERED
            ):
                db.refresh(delivery)  # the dealer the guarded update saw, not a stale read
                assert delivery.dealer_id is not None, "an IN_TRANSIT delivery has a dealer"
                _release_capacity(db, delivery.dealer_id)
                db.commit()
            db.refresh(delivery)
        if delivery.status != DeliveryStatus.DELIVERED:
            raise business_error(
                names.INVALID_TRANSITION,
                f"delivery {ref.delivery_id} is {delivery.status}, cannot deliver",
            )
        return _snapshot(delivery)

    @service_activity(names.CANCEL_DELIVERY)
    def cancel_delivery(self, ref: OrderRef) -> CompensationOutcome:
        """Compensation: cancel the order's delivery, releasing its dealer if one was assigned.

        An IN_TRANSIT delivery is cancelled only here: its assignment landed but the saga was
        cancelled before it saw the result, so the pivot never happened for the saga.
        Safe when there is nothing to undo (no delivery, already cancelled).
        """
        with session(self._engine) as db:
            delivery = self._for_order(db, ref.order_id)
            if delivery is None:
                return CompensationOutcome(action="nothing to undo")
            if transition(
                db, DeliveryRow, delivery.id, [DeliveryStatus.PENDING], DeliveryStatus.CANCELLED
            ):
                faults.point("compensation")
                db.commit()
                return CompensationOutcome(action="cancelled", status=DeliveryStatus.CANCELLED)
            # No longer PENDING: an assignment may have committed since the read above (under
            # PostgreSQL's READ COMMITTED), so read the dealer it set, not the stale None.
            db.refresh(delivery)
            dealer_id = delivery.dealer_id
            if dealer_id is not None and transition(
                db, DeliveryRow, delivery.id, [DeliveryStatus.IN_TRANSIT], DeliveryStatus.CANCELLED
            ):
                _release_capacity(db, dealer_id)
                db.commit()
                return CompensationOutcome(
                    action=f"cancelled, released dealer {dealer_id}",
                    status=DeliveryStatus.CANCELLED,
                )
            db.refresh(delivery)
        return CompensationOutcome(action=f"left as {delivery.status}", status=delivery.status)

    @staticmethod
    def _for_order(db: Session, order_id: str) -> DeliveryRow | None:
        return db.exec(select(DeliveryRow).where(DeliveryRow.order_id == order_id)).first()

    @staticmethod
    def _least_loaded_dealer(db: Session, delivery: DeliveryRow) -> int | None:
        statement = (
            select(DealerRow.id)
            .where(
                DealerRow.province_key == place_key(delivery.province),
                DealerRow.city_key == place_key(delivery.city),
                DealerRow.active_deliveries < DealerRow.capacity,
            )
            .order_by(col(DealerRow.active_deliveries), col(DealerRow.id))
            .limit(1)
        )
        return db.exec(statement).first()
