"""PaymentService activities (task queue ``payments``)."""

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from activities import faults
from activities._defn import service_activity
from activities._transitions import transition
from domain import names
from domain.errors import business_error
from domain.payloads import (
    CompensationOutcome,
    CreatePaymentInput,
    OrderRef,
    PaymentRef,
    PaymentSnapshot,
    from_cents,
    to_cents,
)
from domain.status import PaymentStatus
from store.db import session
from store.models import PaymentRow, RefundRow, utcnow


def _snapshot(row: PaymentRow) -> PaymentSnapshot:
    return PaymentSnapshot(
        payment_id=row.id,
        order_id=row.order_id,
        status=PaymentStatus(row.status),
        amount=from_cents(row.amount_cents),
    )


class PaymentActivities:
    """Payment activities over one engine. Every method is idempotent."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @service_activity(names.CREATE_PAYMENT)
    def create_payment(self, params: CreatePaymentInput) -> PaymentSnapshot:
        """Create the order's PENDING payment.

        Idempotent: one payment per order (unique ``order_id``); the existing one is returned.
        """
        with session(self._engine) as db:
            existing = db.exec(
                select(PaymentRow).where(PaymentRow.order_id == params.order_id)
            ).first()
            if existing is not None:
                return _snapshot(existing)
            payment = PaymentRow(
                id=params.payment_id,
                order_id=params.order_id,
                status=PaymentStatus.PENDING,
                amount_cents=to_cents(params.amount),
                expires_at=params.expires_at,
            )
            db.add(payment)
            try:
                db.commit()
            except IntegrityError:
                db.rollback()  # a concurrent attempt created it: return that one
                existing = db.exec(
                    select(PaymentRow).where(PaymentRow.order_id == params.order_id)
                ).first()
                if existing is None:  # the foreign key refused it: no such order
                    raise business_error(
                        names.ENTITY_NOT_FOUND, f"order {params.order_id} does not exist"
                    ) from None
                return _snapshot(existing)
            faults.point("after_commit.create_payment")
            return _snapshot(payment)

    @service_activity(names.COMPLETE_PAYMENT)
    def complete_payment(self, ref: PaymentRef) -> PaymentSnapshot:
        """PENDING -> COMPLETED (the customer confirmed). Idempotent: COMPLETED stays COMPLETED."""
        with session(self._engine) as db:
            if transition(
                db, PaymentRow, ref.payment_id, [PaymentStatus.PENDING], PaymentStatus.COMPLETED
            ):
                db.commit()
                faults.point("after_commit.complete_payment")
            row = db.get(PaymentRow, ref.payment_id)
        if row is None:
            raise business_error(names.ENTITY_NOT_FOUND, f"payment {ref.payment_id} does not exist")
        if row.status != PaymentStatus.COMPLETED:
            raise business_error(
                names.INVALID_TRANSITION,
                f"payment {ref.payment_id} is {row.status}, cannot complete",
            )
        return _snapshot(row)

    @service_activity(names.CANCEL_OR_REFUND_PAYMENT)
    def cancel_or_refund_payment(self, ref: OrderRef) -> CompensationOutcome:
        """Compensation: cancel the order's payment if PENDING, refund it if COMPLETED.

        Safe when there is nothing to undo (no payment yet, already cancelled or refunded).
        A refund is one guarded transition COMPLETED -> REFUNDED, so it applies at most once.
        """
        with session(self._engine) as db:
            row = db.exec(select(PaymentRow).where(PaymentRow.order_id == ref.order_id)).first()
            if row is None:
                return CompensationOutcome(action="nothing to undo")
            if transition(db, PaymentRow, row.id, [PaymentStatus.PENDING], PaymentStatus.CANCELLED):
                db.commit()
                return CompensationOutcome(action="cancelled", status=PaymentStatus.CANCELLED)
            if transition(
                db,
                PaymentRow,
                row.id,
                [PaymentStatus.COMPLETED],
                PaymentStatus.REFUNDED,
                refunded_at=utcnow(),
            ):
                # The refund itself, in the same transaction as the guarded transition: it
                # exists exactly when the payment is REFUNDED (and is unique per payment).
                db.add(RefundRow(payment_id=row.id, amount_cents=row.amount_cents))
                faults.point("refund")
                db.commit()
                return CompensationOutcome(action="refunded", status=PaymentStatus.REFUNDED)
            db.refresh(row)
        return CompensationOutcome(action=f"already {row.status.lower()}", status=row.status)
