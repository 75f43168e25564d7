"""PaymentService: one payment per order, its completion, cancellation and refund."""

import functools
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, Update, bindparam, exists, or_, update
from sqlalchemy import select as sql_select
from sqlmodel import Session, col, select

from domain.payloads import CompensationOutcome, PaymentSnapshot, from_cents, to_cents
from domain.status import Decision, PaymentStatus, SagaStyle
from services.rows import (
    create_owned,
    execute_core,
    expire_held,
    insert_new,
    invalid_transition,
    is_owner,
    not_found,
    require_owner,
    transition,
)
from store.models import OrderRow, PaymentDecisionRow, PaymentRow, RefundRow, utcnow


def snapshot(row: PaymentRow, decision: Decision | None = None) -> PaymentSnapshot:
    return PaymentSnapshot(
        payment_id=row.id,
        order_id=row.order_id,
        status=PaymentStatus(row.status),
        amount=from_cents(row.amount_cents),
        decision=decision,
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
    """Create the order's PENDING payment (``expires_at``: its window's close), or return the
    same saga's existing one; returns it and whether this call inserted it.
    ``EntityNotFound`` without the order; ``OwnedByAnotherSaga`` if another saga created it.
    """
    payment = PaymentRow(
        id=payment_id,
        order_id=order_id,
        status=PaymentStatus.PENDING,
        amount_cents=to_cents(amount),
        expires_at=expires_at,
        saga_id=saga_id,
    )
    return create_owned(
        db,
        payment,
        lambda: payment_of(db, order_id),
        saga_id=saga_id,
        what=f"the payment of order {order_id}",
        parent=f"order {order_id}",
    )


def complete_payment(db: Session, payment_id: str, saga_id: str | None) -> tuple[PaymentRow, bool]:
    """PENDING -> COMPLETED, idempotently; returns the payment and whether this call completed
    it. The decision must be CONFIRM (recorded here if none was taken inside the window, as
    for a signal sent past the API); otherwise ``InvalidTransition``.
    """
    taken = take_decision(db, payment_id, Decision.CONFIRM)
    if taken.winner != Decision.CONFIRM:
        if db.get(PaymentRow, payment_id) is None:
            raise not_found(f"payment {payment_id}")
        why = f"it was decided {taken.winner}" if taken.winner else f"no confirm ({taken.refusal})"
        raise invalid_transition(f"payment {payment_id} cannot complete: {why}")
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
    """Compensation: cancel the order's payment if PENDING, refund it (at most once) if
    COMPLETED. Returns the outcome and whether it changed the payment; safe when there is
    nothing to undo (no payment, already undone, another saga's payment).
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
        # Written with the guarded transition: a refund row exists exactly when REFUNDED.
        db.add(RefundRow(payment_id=row.id, amount_cents=row.amount_cents))
        db.flush()
        return CompensationOutcome(action="refunded", status=PaymentStatus.REFUNDED), True
    db.refresh(row)
    return CompensationOutcome(action=f"already {row.status.lower()}", status=row.status), False


# --- the customer's decision -----------------------------------------------------------------


def open_decision(db: Session, payment_id: str, order_id: str, customer_id: str) -> bool:
    """Open the order's decision, undecided, when the order is accepted, so a decision can be
    taken before the payment exists. Returns whether this call opened it. Does not commit."""
    row = PaymentDecisionRow(payment_id=payment_id, order_id=order_id, customer_id=customer_id)
    return insert_new(db, row)


@dataclass(frozen=True)
class DecisionTaken:
    """What became of one attempt to decide a payment: ``winner`` on record (None: see
    ``refusal``), whether this attempt ``applied`` it, the payment's ``order_id`` (None:
    unknown payment), and whether the decision was ``signalled`` to its saga already.
    """

    order_id: str | None
    winner: Decision | None
    applied: bool
    refusal: str | None = None
    signalled: bool = False


def take_decision(
    db: Session, payment_id: str, decision: Decision, *, now: datetime | None = None
) -> DecisionTaken:
    """Record ``decision`` if none is and the window is open (a compare-and-set: of racing
    decisions exactly one wins); losers learn the winner or the refusal. The window is open
    from the order's acceptance while the payment is PENDING and unexpired. Does not commit.
    """
    now = now or utcnow()
    order_id = _record_decision(db, payment_id, decision, now)
    if order_id is not None:
        return DecisionTaken(order_id=order_id, winner=decision, applied=True)
    row = _decision_row(db, payment_id)
    if row is None:  # no order was accepted with this payment
        return DecisionTaken(order_id=None, winner=None, applied=False, refusal="unknown")
    if row.decision is not None:
        return DecisionTaken(
            order_id=row.order_id,
            winner=Decision(row.decision),
            applied=False,
            signalled=row.signalled,
        )
    payment = db.get(PaymentRow, payment_id, populate_existing=True)
    assert payment is not None, "only a written payment can close its window"
    refusal = (
        f"the payment is {payment.status}"
        if payment.status != PaymentStatus.PENDING
        else f"its window closed at {payment.expires_at}"
    )
    return DecisionTaken(order_id=row.order_id, winner=None, applied=False, refusal=refusal)


def _record_decision(db: Session, payment_id: str, decision: Decision, now: datetime) -> str | None:
    """The compare-and-set of :func:`take_decision`: one ``UPDATE ... RETURNING``. Returns
    the payment's order id if this call recorded ``decision``, None if it did not (decided
    already, window closed, or no decision opened)."""
    statement = _record_decision_statement(window=decision != Decision.TIMEOUT)
    params = {"b_payment_id": payment_id, "b_decision": str(decision), "b_now": now}
    order_id = execute_core(db, statement, params).scalar()
    expire_held(db, PaymentDecisionRow, payment_id)
    return None if order_id is None else str(order_id)


@functools.cache
def _record_decision_statement(*, window: bool) -> Update:
    """``UPDATE payment_decisions SET decision WHERE undecided [AND the window is open]
    RETURNING order_id``, with parameters ``b_payment_id``, ``b_decision`` and ``b_now``."""
    decisions = cast(Table, PaymentDecisionRow.__table__).c  # type: ignore[attr-defined]
    payments_ = cast(Table, PaymentRow.__table__).c  # type: ignore[attr-defined]
    now = bindparam("b_now", type_=decisions.decided_at.type)
    undecided = [decisions.payment_id == bindparam("b_payment_id"), decisions.decision.is_(None)]
    if window:
        # The customer decides only inside the window; TIMEOUT is the window's own close.
        undecided.append(
            ~exists().where(
                payments_.id == decisions.payment_id,
                or_(payments_.status != str(PaymentStatus.PENDING), payments_.expires_at <= now),
            )
        )
    return (
        update(decisions.payment_id.table)
        .where(*undecided)
        .values(decision=bindparam("b_decision", type_=decisions.decision.type), decided_at=now)
        .returning(decisions.order_id)
    )


def withdraw_decision(db: Session, payment_id: str, decision: Decision) -> bool:
    """Take back ``decision`` (compare-and-set to none) when its saga had ended before it could
    act on it. Returns whether it was withdrawn. Does not commit."""
    result: Any = db.exec(
        update(PaymentDecisionRow)
        .where(
            col(PaymentDecisionRow.payment_id) == payment_id,
            col(PaymentDecisionRow.decision) == decision,
        )
        .values(decision=None, decided_at=None, signalled_at=None)
    )
    return bool(result.rowcount == 1)


def decision_of(db: Session, payment_id: str) -> Decision | None:
    """The decision on record for the payment (None: none yet, or not recorded)."""
    row = _decision_row(db, payment_id)
    return None if row is None or row.decision is None else Decision(row.decision)


def hold_decision(db: Session, payment_id: str) -> Decision | None:
    """:func:`decision_of`, its row locked until the transaction ends (``FOR UPDATE``): taken
    before writing the payment, so a decision being recorded meanwhile is waited for and
    seen, never missed by both (the decision row first: the one lock order). Does not commit."""
    row = _decision_row(db, payment_id, for_update=True)
    return None if row is None or row.decision is None else Decision(row.decision)


_decisions = cast(Table, PaymentDecisionRow.__table__).c  # type: ignore[attr-defined]
_DECISION_ROW = sql_select(
    _decisions.order_id, _decisions.decision, _decisions.signalled_at.is_not(None)
).where(_decisions.payment_id == bindparam("b_payment_id"))
_DECISION_ROW_FOR_UPDATE = _DECISION_ROW.with_for_update()


@dataclass(frozen=True)
class _DecisionOnRecord:
    order_id: str
    decision: str | None
    signalled: bool


def _decision_row(
    db: Session, payment_id: str, *, for_update: bool = False
) -> _DecisionOnRecord | None:
    """The payment's decision row as the database holds it now (a prebuilt Core ``SELECT``:
    every saga's steps read it), locked until the transaction ends with ``for_update``."""
    statement = _DECISION_ROW_FOR_UPDATE if for_update else _DECISION_ROW
    found = execute_core(db, statement, {"b_payment_id": payment_id}).first()
    if found is None:
        return None
    return _DecisionOnRecord(str(found[0]), found[1], bool(found[2]))


def mark_decision_signalled(db: Session, payment_id: str) -> None:
    """Record that the payment's decision reached its orchestrated saga: the same decision
    again then sends no signal. Does not commit."""
    db.exec(
        update(PaymentDecisionRow)
        .where(
            col(PaymentDecisionRow.payment_id) == payment_id,
            col(PaymentDecisionRow.decision).is_not(None),
            col(PaymentDecisionRow.signalled_at).is_(None),
        )
        .values(signalled_at=utcnow())
    )


def due_to_expire(db: Session, now: datetime, style: SagaStyle, limit: int) -> list[str]:
    """PENDING payments of ``style`` orders whose window has closed (oldest first)."""
    return list(
        db.exec(
            select(PaymentRow.id)
            .join(OrderRow, col(OrderRow.id) == col(PaymentRow.order_id))
            .where(
                col(PaymentRow.status) == PaymentStatus.PENDING,
                col(PaymentRow.expires_at) <= now,
                col(OrderRow.saga_style) == style,
            )
            .order_by(col(PaymentRow.expires_at))
            .limit(limit)
        ).all()
    )
