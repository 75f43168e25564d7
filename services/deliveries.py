"""DeliveryService: one delivery per order, dealer assignment (the saga's pivot) and capacity."""

from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy import select as sql_select
from sqlmodel import Session, col, select

from domain.payloads import CompensationOutcome, DeliverySnapshot
from domain.status import DeliveryStatus
from services.rows import (
    create_owned,
    execute_core,
    invalid_transition,
    is_owner,
    not_found,
    require_owner,
    transition,
)
from store.models import DealerRow, DeliveryRow, place_key, utcnow

# How often assignment picks again when another transaction took the chosen dealer's last unit.
MAX_PICKS = 20


def snapshot(row: DeliveryRow) -> DeliverySnapshot:
    return DeliverySnapshot(
        delivery_id=row.id,
        order_id=row.order_id,
        status=DeliveryStatus(row.status),
        dealer_id=row.dealer_id,
    )


def delivery_of(db: Session, order_id: str) -> DeliveryRow | None:
    """The order's delivery (at most one: ``order_id`` is unique)."""
    return db.exec(select(DeliveryRow).where(DeliveryRow.order_id == order_id)).first()


def create_delivery(
    db: Session, delivery_id: str, order_id: str, province: str, city: str, saga_id: str | None
) -> tuple[DeliveryRow, bool]:
    """Create the order's PENDING delivery, or return the same saga's existing one; returns
    it and whether this call inserted it. ``EntityNotFound`` without the order;
    ``OwnedByAnotherSaga`` if another saga created it.
    """
    delivery = DeliveryRow(
        id=delivery_id,
        order_id=order_id,
        status=DeliveryStatus.PENDING,
        province=province,
        city=city,
        saga_id=saga_id,
    )
    return create_owned(
        db,
        delivery,
        lambda: delivery_of(db, order_id),
        saga_id=saga_id,
        what=f"the delivery of order {order_id}",
        parent=f"order {order_id}",
    )


def assign_dealer(db: Session, delivery_id: str, saga_id: str | None) -> tuple[DeliveryRow, bool]:
    """Assign the least-loaded dealer of the delivery's place with free capacity: take one
    unit of it (guarded, never overbooked) and move the delivery PENDING -> IN_TRANSIT.

    Returns the delivery (``dealer_id`` None: none free; IN_TRANSIT: as it is) and whether this
    call assigned it. ``InvalidStateTransition`` otherwise; ``RuntimeError`` after lost races.
    """
    delivery = db.get(DeliveryRow, delivery_id)
    if delivery is None:
        raise not_found(f"delivery {delivery_id}")
    require_owner(delivery.saga_id, saga_id, f"delivery {delivery_id}")
    for _ in range(MAX_PICKS):
        if delivery.status == DeliveryStatus.IN_TRANSIT:
            return delivery, False
        if delivery.status != DeliveryStatus.PENDING:
            raise invalid_transition(
                f"delivery {delivery_id} is {delivery.status}, cannot assign a dealer"
            )
        dealer_id = _least_loaded_dealer(db, delivery)
        if dealer_id is None:
            return delivery, False
        attempt = db.begin_nested()
        if not _take_capacity(db, dealer_id):
            attempt.rollback()
            continue  # someone took its last unit first: pick again
        if transition(
            db,
            DeliveryRow,
            delivery_id,
            [DeliveryStatus.PENDING],
            DeliveryStatus.IN_TRANSIT,
            saga_id=saga_id,
            dealer_id=dealer_id,
        ):
            attempt.commit()
            db.refresh(delivery)
            return delivery, True
        # Moved by someone else meanwhile: give the capacity back and look again.
        attempt.rollback()
        db.refresh(delivery)
    raise RuntimeError(f"dealer assignment for {delivery_id} lost {MAX_PICKS} races")


def complete_delivery(
    db: Session, delivery_id: str, saga_id: str | None
) -> tuple[DeliveryRow, bool]:
    """IN_TRANSIT -> DELIVERED, releasing the dealer's capacity once. Idempotent; returns the
    delivery and whether this call delivered it."""
    changed = transition(
        db,
        DeliveryRow,
        delivery_id,
        [DeliveryStatus.IN_TRANSIT],
        DeliveryStatus.DELIVERED,
        saga_id=saga_id,
    )
    delivery = db.get(DeliveryRow, delivery_id, populate_existing=True)
    if delivery is None:
        raise not_found(f"delivery {delivery_id}")
    require_owner(delivery.saga_id, saga_id, f"delivery {delivery_id}")
    if changed:
        # The dealer the guarded update saw (re-read above), not a stale earlier read.
        assert delivery.dealer_id is not None, "an IN_TRANSIT delivery has a dealer"
        _release_capacity(db, delivery.dealer_id)
    if delivery.status != DeliveryStatus.DELIVERED:
        raise invalid_transition(f"delivery {delivery_id} is {delivery.status}, cannot deliver")
    return delivery, changed


def mark_report_signalled(db: Session, delivery_id: str) -> None:
    """Record that the dealer's report reached the delivery's orchestrated saga: the same
    report again then sends no signal. Does not commit."""
    db.exec(
        update(DeliveryRow)
        .where(col(DeliveryRow.id) == delivery_id, col(DeliveryRow.report_signalled_at).is_(None))
        .values(report_signalled_at=utcnow())
    )


def cancel_delivery(
    db: Session, order_id: str, saga_id: str | None, *, only_before_pivot: bool = False
) -> tuple[CompensationOutcome, bool]:
    """Compensation: cancel the order's delivery, releasing a dealer the saga never saw assigned
    (unless ``only_before_pivot``). Returns the outcome and whether it changed the delivery."""
    delivery = delivery_of(db, order_id)
    if delivery is None:
        return CompensationOutcome(action="nothing to undo"), False
    if not is_owner(delivery.saga_id, saga_id):
        action = f"another saga's delivery ({delivery.status}): left alone"
        return CompensationOutcome(action=action), False
    if transition(
        db,
        DeliveryRow,
        delivery.id,
        [DeliveryStatus.PENDING],
        DeliveryStatus.CANCELLED,
        saga_id=saga_id,
    ):
        return CompensationOutcome(action="cancelled", status=DeliveryStatus.CANCELLED), True
    # An assignment may have committed since the read above: read the dealer it set.
    db.refresh(delivery)
    dealer_id = delivery.dealer_id
    if (
        not only_before_pivot
        and dealer_id is not None
        and transition(
            db,
            DeliveryRow,
            delivery.id,
            [DeliveryStatus.IN_TRANSIT],
            DeliveryStatus.CANCELLED,
            saga_id=saga_id,
        )
    ):
        _release_capacity(db, dealer_id)
        action = f"cancelled, released dealer {dealer_id}"
        return CompensationOutcome(action=action, status=DeliveryStatus.CANCELLED), True
    db.refresh(delivery)
    return CompensationOutcome(action=f"left as {delivery.status}", status=delivery.status), False


# The dealer statements, built once; no DealerRow is loaded, so the session holds none stale.
_dealer_table = cast(Table, DealerRow.__table__)  # type: ignore[attr-defined]
_dealers = _dealer_table.c
_TAKE_CAPACITY = (
    update(_dealer_table)
    .where(
        _dealers.id == bindparam("dealer_id"),
        _dealers.active_deliveries < _dealers.capacity,
    )
    .values(active_deliveries=_dealers.active_deliveries + 1)
)
_RELEASE_CAPACITY = (
    update(_dealer_table)
    .where(_dealers.id == bindparam("dealer_id"), _dealers.active_deliveries > 0)
    .values(active_deliveries=_dealers.active_deliveries - 1)
)
_LEAST_LOADED_DEALER = (
    sql_select(_dealers.id)
    .where(
        _dealers.province_key == bindparam("province_key"),
        _dealers.city_key == bindparam("city_key"),
        _dealers.active_deliveries < _dealers.capacity,
    )
    .order_by(_dealers.active_deliveries, _dealers.id)
    .limit(1)
)


def _take_capacity(db: Session, dealer_id: int) -> bool:
    """Atomically take one unit of a dealer's capacity; False if it is full."""
    result = execute_core(db, _TAKE_CAPACITY, {"dealer_id": dealer_id})
    return bool(result.rowcount == 1)


def _release_capacity(db: Session, dealer_id: int) -> None:
    """Give one unit of capacity back (guarded: never below zero)."""
    execute_core(db, _RELEASE_CAPACITY, {"dealer_id": dealer_id})


def _least_loaded_dealer(db: Session, delivery: DeliveryRow) -> int | None:
    params = {"province_key": place_key(delivery.province), "city_key": place_key(delivery.city)}
    found: int | None = execute_core(db, _LEAST_LOADED_DEALER, params).scalar()
    return found


# --- the dealer window as a durable deadline (the choreographed saga) ------------------------


def wait_for_dealer(
    db: Session, delivery_id: str, assign_by: datetime, next_attempt_at: datetime
) -> None:
    """Keep looking for a dealer until ``assign_by``: DeliveryService's sweeper tries again
    at ``next_attempt_at``. Does not commit."""
    db.exec(
        update(DeliveryRow)
        .where(
            col(DeliveryRow.id) == delivery_id, col(DeliveryRow.status) == DeliveryStatus.PENDING
        )
        .values(assign_by=assign_by, next_attempt_at=next_attempt_at)
    )


def retry_later(db: Session, delivery_id: str, next_attempt_at: datetime) -> None:
    """Another attempt found no dealer: the next one at ``next_attempt_at``."""
    db.exec(
        update(DeliveryRow)
        .where(
            col(DeliveryRow.id) == delivery_id, col(DeliveryRow.status) == DeliveryStatus.PENDING
        )
        .values(next_attempt_at=next_attempt_at, assign_attempts=DeliveryRow.assign_attempts + 1)
    )


def stop_waiting(db: Session, delivery_id: str) -> None:
    """No more attempts (assigned, cancelled or out of time). Does not commit."""
    db.exec(
        update(DeliveryRow).where(col(DeliveryRow.id) == delivery_id).values(next_attempt_at=None)
    )


def due_for_a_dealer(db: Session, now: datetime, limit: int) -> list[str]:
    """Deliveries whose next attempt is due (oldest first)."""
    return list(
        db.exec(
            select(DeliveryRow.id)
            .where(
                col(DeliveryRow.status) == DeliveryStatus.PENDING,
                col(DeliveryRow.next_attempt_at) <= now,
            )
            .order_by(col(DeliveryRow.next_attempt_at))
            .limit(limit)
        ).all()
    )
