"""PaymentService activities (task queue ``payments``): thin adapters over
:mod:`services.payments`."""

from sqlalchemy import Engine

import faults
from activities._defn import service_activity, step_transaction
from domain import names
from domain.payloads import (
    CompensationOutcome,
    CreatePaymentInput,
    OrderRef,
    PaymentRef,
    PaymentSnapshot,
)
from domain.status import Decision, PaymentStatus
from services import payments
from services.rows import not_found
from store.models import PaymentRow


class PaymentActivities:
    """Payment activities over one engine. Every method is idempotent and acts only on its
    own saga's payment (``OwnedByAnotherSaga`` otherwise)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @service_activity(names.CREATE_PAYMENT)
    def create_payment(self, params: CreatePaymentInput) -> PaymentSnapshot:
        """Create the order's PENDING payment, with any decision on record. Idempotent: an
        existing one is returned."""
        with step_transaction(self._engine) as db:
            payment, inserted = payments.create_payment(
                db,
                params.payment_id,
                params.order_id,
                params.amount,
                params.expires_at,
                params.saga_id,
            )
            decision = payments.decision_of(db, payment.id)
        if inserted:
            faults.point("after_commit.create_payment")
        return payments.snapshot(payment, decision)

    @service_activity(names.COMPLETE_PAYMENT)
    def complete_payment(self, ref: PaymentRef) -> PaymentSnapshot:
        """PENDING -> COMPLETED (the customer confirmed). Idempotent: COMPLETED stays COMPLETED."""
        with step_transaction(self._engine) as db:
            payment, completed = payments.complete_payment(db, ref.payment_id, ref.saga_id)
        if completed:
            faults.point("after_commit.complete_payment")
        return payments.snapshot(payment)

    @service_activity(names.EXPIRE_PAYMENT)
    def expire_payment(self, ref: PaymentRef) -> PaymentSnapshot:
        """The window closed: record TIMEOUT unless a decision is on record (its signal late or
        lost), and return the payment with the decision that counts. Idempotent."""
        with step_transaction(self._engine) as db:
            taken = payments.take_decision(db, ref.payment_id, Decision.TIMEOUT)
            payment = db.get(PaymentRow, ref.payment_id)
        if payment is None:
            raise not_found(f"payment {ref.payment_id}")
        return payments.snapshot(payment, taken.winner)

    @service_activity(names.CANCEL_OR_REFUND_PAYMENT)
    def cancel_or_refund_payment(self, ref: OrderRef) -> CompensationOutcome:
        """Compensation: cancel the order's payment if PENDING, refund it (at most once) if
        COMPLETED. Idempotent; safe when there is nothing to undo."""
        with step_transaction(self._engine) as db:
            outcome, changed = payments.cancel_or_refund_payment(db, ref.order_id, ref.saga_id)
            if changed and outcome.status == PaymentStatus.REFUNDED:
                faults.point("refund")
        return outcome
