"""OrderService: orders and their items, and the Idempotency-Keys of ``POST /orders``."""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from domain.payloads import (
    CompensationOutcome,
    OrderItem,
    OrderRequest,
    OrderSnapshot,
    SagaTimeouts,
    from_cents,
    to_cents,
)
from domain.status import OrderStatus, SagaStyle
from services.rows import (
    create_owned,
    insert_new,
    invalid_transition,
    is_owner,
    not_found,
    require_owner,
    transition,
)
from store.models import IdempotencyKeyRow, OrderItemRow, OrderRow, utcnow


def snapshot(row: OrderRow) -> OrderSnapshot:
    return OrderSnapshot(
        order_id=row.id, status=OrderStatus(row.status), total_amount=from_cents(row.total_cents)
    )


def create_order(
    db: Session,
    order_id: str,
    request: OrderRequest,
    saga_id: str | None,
    style: SagaStyle = SagaStyle.ORCHESTRATION,
    timeouts: SagaTimeouts | None = None,
) -> tuple[OrderRow, bool]:
    """Insert the order PENDING with its items, its total in cents and (choreographed) its
    saga's ``timeouts``, or return the same saga's existing one as it is. Returns the order and
    whether this call inserted it; ``OwnedByAnotherSaga`` if another saga created it.
    """
    order = OrderRow(
        id=order_id,
        customer_id=request.customer_id,
        status=OrderStatus.PENDING,
        total_cents=to_cents(request.total_amount),
        province=request.province,
        city=request.city,
        saga_id=saga_id,
        saga_style=style,
        saga_timeouts=timeouts.model_dump_json() if timeouts is not None else None,
    )
    stored, inserted = create_owned(
        db, order, lambda: db.get(OrderRow, order_id), saga_id=saga_id, what=f"order {order_id}"
    )
    if inserted:  # the order row first: its items reference it
        db.add_all(
            OrderItemRow(
                order_id=order_id,
                product_id=item.product_id,
                quantity=item.quantity,
                unit_price_cents=to_cents(item.unit_price),
            )
            for item in request.items
        )
        db.flush()
    return stored, inserted


def timeouts_of(db: Session, order_id: str) -> SagaTimeouts:
    """The saga's windows of a choreographed order, fixed when it was placed. ``LookupError``
    when the order or its windows are not written: every choreographed step follows both."""
    order = db.get(OrderRow, order_id)
    if order is None or order.saga_timeouts is None:
        raise LookupError(f"order {order_id} has no saga windows on record")
    return SagaTimeouts.model_validate_json(order.saga_timeouts)


def confirm_order(db: Session, order_id: str, saga_id: str | None) -> OrderRow:
    """PENDING -> CONFIRMED. Idempotent: a CONFIRMED or DELIVERED order is returned as it is."""
    return _move(
        db, order_id, saga_id, [OrderStatus.PENDING], OrderStatus.CONFIRMED, OrderStatus.DELIVERED
    )


def mark_order_delivered(db: Session, order_id: str, saga_id: str | None) -> OrderRow:
    """CONFIRMED -> DELIVERED. Idempotent."""
    return _move(db, order_id, saga_id, [OrderStatus.CONFIRMED], OrderStatus.DELIVERED)


def cancel_order(
    db: Session,
    order_id: str,
    saga_id: str | None,
    reason: str | None = None,
    placed: OrderRequest | None = None,
) -> tuple[CompensationOutcome, bool]:
    """Compensation: PENDING or CONFIRMED -> CANCELLED, keeping ``reason``; with ``placed``,
    an order never written is written cancelled, so its id names a cancelled order. Returns
    the outcome and whether it changed the order; never raises for a state it cannot change.
    """
    if placed is not None and db.get(OrderRow, order_id) is None:
        create_order(db, order_id, placed, saga_id)
    cancellable = [OrderStatus.PENDING, OrderStatus.CONFIRMED]
    if transition(
        db,
        OrderRow,
        order_id,
        cancellable,
        OrderStatus.CANCELLED,
        saga_id=saga_id,
        cancel_reason=reason,
    ):
        return CompensationOutcome(action="cancelled", status=OrderStatus.CANCELLED), True
    row = db.get(OrderRow, order_id, populate_existing=True)
    if row is None:
        return CompensationOutcome(action="nothing to undo"), False
    if not is_owner(row.saga_id, saga_id):
        return CompensationOutcome(action=f"another saga's order ({row.status}): left alone"), False
    if row.status == OrderStatus.CANCELLED:
        return CompensationOutcome(action="already cancelled", status=row.status), False
    return CompensationOutcome(action=f"left as {row.status}", status=row.status), False


def _move(
    db: Session,
    order_id: str,
    saga_id: str | None,
    from_states: list[OrderStatus],
    to: OrderStatus,
    *later: OrderStatus,
) -> OrderRow:
    """Guarded transition; a replay finding the row already at ``to`` (or later) is a no-op."""
    transition(db, OrderRow, order_id, from_states, to, saga_id=saga_id)
    row = db.get(OrderRow, order_id, populate_existing=True)
    if row is None:
        raise not_found(f"order {order_id}")
    require_owner(row.saga_id, saga_id, f"order {order_id}")
    if row.status not in (to, *later):
        raise invalid_transition(f"order {order_id} is {row.status}, cannot become {to}")
    return row


# --- Idempotency-Keys --------------------------------------------------------------------


@dataclass(frozen=True)
class KeyUse:
    """The order an Idempotency-Key stands for, whether this call recorded the key, and
    whether the order's saga was known to have started."""

    order_id: str
    fingerprint: str
    recorded: bool
    saga_started: bool


def use_idempotency_key(
    db: Session, customer_id: str, key: str, fingerprint: str, order_id: str
) -> KeyUse:
    """Record that ``customer_id``'s ``key`` stands for ``order_id`` (a request of
    ``fingerprint``), or return what the key was recorded for before. Does not commit; the
    caller commits before it starts anything for the order.
    """

    row = IdempotencyKeyRow(
        customer_id=customer_id, key=key, fingerprint=fingerprint, order_id=order_id
    )
    # One statement when the key is new, the usual case; a replay reads what it stands for.
    recorded = insert_new(db, row)
    stored = row if recorded else db.get(IdempotencyKeyRow, (customer_id, key))
    assert stored is not None, "a key that was not inserted is held by a row"
    return KeyUse(
        order_id=stored.order_id,
        fingerprint=stored.fingerprint,
        recorded=recorded,
        saga_started=stored.saga_started_at is not None,
    )


def placed_fingerprint(db: Session, order_id: str) -> str | None:
    """The fingerprint of the order as placed, from its rows (None: not written): what a
    replay is compared with once retention deleted its Idempotency-Key."""
    order = db.get(OrderRow, order_id)
    if order is None:
        return None
    items = db.exec(
        select(OrderItemRow).where(OrderItemRow.order_id == order_id).order_by(col(OrderItemRow.id))
    ).all()
    placed = OrderRequest(
        customer_id=order.customer_id,
        province=order.province,
        city=order.city,
        items=[
            OrderItem(
                product_id=item.product_id,
                quantity=item.quantity,
                unit_price=from_cents(item.unit_price_cents),
            )
            for item in items
        ],
    )
    return placed.fingerprint()


def mark_key_saga_started(db: Session, customer_id: str, key: str) -> None:
    """Record that the saga of ``customer_id``'s ``key`` has started. Does not commit."""
    db.exec(
        update(IdempotencyKeyRow)
        .where(
            col(IdempotencyKeyRow.customer_id) == customer_id,
            col(IdempotencyKeyRow.key) == key,
            col(IdempotencyKeyRow.saga_started_at).is_(None),
        )
        .values(saga_started_at=utcnow())
    )


# --- a cancel asked for (the choreographed saga) --------------------------------------------


def request_cancel(db: Session, order_id: str) -> bool:
    """Record that the order's cancellation was asked for, once, while it can still be
    cancelled (PENDING or CONFIRMED). Returns whether this call recorded it. Does not commit.
    DeliveryService decides: it cancels before the pivot and refuses after it."""
    result: Any = db.exec(
        update(OrderRow)
        .where(
            col(OrderRow.id) == order_id,
            col(OrderRow.status).in_([OrderStatus.PENDING, OrderStatus.CONFIRMED]),
            col(OrderRow.cancel_requested_at).is_(None),
        )
        .values(cancel_requested_at=utcnow())
    )
    return bool(result.rowcount == 1)


def withdraw_cancel_request(db: Session, order_id: str) -> None:
    """The cancellation was refused (the parcel is on its way): the order goes on. Does not
    commit."""
    db.exec(update(OrderRow).where(col(OrderRow.id) == order_id).values(cancel_requested_at=None))
