"""PaymentService: one payment per order, its completion, cancellation and refund."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from domain.payloads import CompensationOutcome, PaymentSnapshot, from_cents, to_cents
from domain.status import PaymentStatus
from services.rows import (
    insert_or_get,
    invalid_transition,
    is_owner,
    not_found,
    require_owner,
    transition,
)
from store.models import PaymentRow, RefundRow, utcnow


def snapshot(row: PaymentRow) -> PaymentSnapshot:
    return PaymentSnapshot(
        payment_id=row.id,
        order_id=row.order_id,
        status=PaymentStatus(row.status),
        amount=from_cents(row.amount_cents),
    )


def payment_of(db: Session, order_id: str) -> PaymentRow | None:
    """The order's payment (at most one: ``order_id`` is unique)."""
    return db.exec(select(PaymentRow).where(PaymentRow.order_id == order_id)).first()


def create_payment(
    db: Session,
    payment_id: str,
    order_id: str,
    amount: Decimal,
    expires_at: datetime | None,
    saga_id: str | None,
) -> tuple[PaymentRow, bool]:
    """Create the order's PENDING payment; ``expires_at``: when its decision window closes.

    Idempotent: one payment per order (unique ``order_id``); the existing one of the same
    saga is returned. Returns the payment and whether this call inserted it.
    ``EntityNotFound`` if the order does not exist; ``OwnedByAnotherSaga`` if another saga
    created the payment.
    """
    existing = payment_of(db, order_id)
    if existing is None:
        payment = PaymentRow(
            id=payment_id,
            order_id=order_id,
            status=PaymentStatus.PENDING,
            amount_cents=to_cents(amount),
            expires_at=expires_at,
            saga_id=saga_id,
        )
        try:
            existing, inserted = insert_or_get(db, payment, lambda: payment_of(db, order_id))
        except IntegrityError:  # no row explains it: the foreign key refused it
            raise not_found(f"order {order_id}") from None
        if inserted:
            return existing, True
    require_owner(existing.saga_id, saga_id, f"payment {existing.id}")
    return existing, False


def complete_payment(db: Session, payment_id: str, saga_id: str | None) -> tuple[PaymentRow, bool]:
    """PENDING -> COMPLETED (the customer confirmed). Idempotent: COMPLETED stays COMPLETED.

    Returns the payment and whether this call completed it.
    """
    changed = transition(
        db,
        PaymentRow,
        payment_id,
        [PaymentStatus.PENDING],
        PaymentStatus.COMPLETED,
        saga_id=saga_id,
    )
    row = db.get(PaymentRow, payment_id, populate_existing=True)
    if row is None:
        raise not_found(f"payment {payment_id}")
    require_owner(row.saga_id, saga_id, f"payment {payment_id}")
    if row.status != PaymentStatus.COMPLETED:
        raise invalid_transition(f"payment {payment_id} is {row.status}, cannot complete")
    return row, changed


def cancel_or_refund_payment(
    db: Session, order_id: str, saga_id: str | None
) -> tuple[CompensationOutcome, bool]:
    """Compensation: cancel the order's payment if PENDING, refund it if COMPLETED. Returns
    the outcome and whether it changed the payment.

    Safe when there is nothing to undo (no payment yet, already cancelled or refunded,
    another saga's payment). A refund is one guarded transition COMPLETED -> REFUNDED and
    its refund row, in the caller's transaction: it applies at most once.
    """
    row = payment_of(db, order_id)
    if row is None:
        return CompensationOutcome(action="nothing to undo"), False
    if not is_owner(row.saga_id, saga_id):
        return CompensationOutcome(
            action=f"another saga's payment ({row.status}): left alone"
        ), False
    if transition(
        db, PaymentRow, row.id, [PaymentStatus.PENDING], PaymentStatus.CANCELLED, saga_id=saga_id
    ):
        return CompensationOutcome(action="cancelled", status=PaymentStatus.CANCELLED), True
    if transition(
        db,
        PaymentRow,
        row.id,
        [PaymentStatus.COMPLETED],
        PaymentStatus.REFUNDED,
        saga_id=saga_id,
        refunded_at=utcnow(),
    ):
        # The refund itself, with the guarded transition: it exists exactly when the payment
        # is REFUNDED (and is unique per payment).
        db.add(RefundRow(payment_id=row.id, amount_cents=row.amount_cents))
        db.flush()
        return CompensationOutcome(action="refunded", status=PaymentStatus.REFUNDED), True
    db.refresh(row)
    return CompensationOutcome(action=f"already {row.status.lower()}", status=row.status), False
