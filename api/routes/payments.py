"""/payments: the customer's decision, delivered into the saga as a signal."""

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, status
from starlette.concurrency import run_in_threadpool

from api import auth, queries
from api.deps import Services, ServicesDep
from api.errors import ConflictError, NotFoundError, responses, saga_ended_is_conflict
from api.schemas import Accepted
from domain.status import PaymentStatus
from store.models import as_utc

router = APIRouter(prefix="/payments", tags=["payments"])

RESPONSES = responses(401, 403, 404, 409, 503)


async def _decide(
    services: Services, caller: auth.Caller, payment_id: uuid.UUID, *, confirm: bool
) -> Accepted:
    """The customer's decision: 404 unknown payment, 403 another customer's, then 409 unless
    it is still PENDING inside its window."""
    key = str(payment_id)
    payment = await run_in_threadpool(queries.get_payment, services.engine, key)
    if payment is None:
        raise NotFoundError(f"payment {key} does not exist")
    owner = await run_in_threadpool(queries.customer_of, services.engine, payment_id=key)
    assert owner is not None, "a payment's order exists (foreign key)"
    auth.require_customer_of(caller, owner, "payment")
    if payment.status != PaymentStatus.PENDING:
        raise ConflictError(f"payment {key} is {payment.status}, not PENDING")
    with saga_ended_is_conflict(f"payment {key} can no longer be decided"):
        if payment.expires_at is None:
            # Created before payments recorded their window: ask the saga.
            await services.saga.decide_payment(payment.order_id, key, confirm=confirm)
        elif datetime.now(UTC) >= as_utc(payment.expires_at):
            raise ConflictError(f"payment {key}: its payment window closed at {payment.expires_at}")
        else:
            # One signal, no query: the answer does not wait for a worker (nor for a saga
            # evicted from its cache to be rebuilt). A decision that loses a race with another
            # one is recorded by the saga as ignored.
            await services.saga.send_decision(payment.order_id, key, confirm=confirm)
    verb = "confirmation" if confirm else "cancellation"
    return Accepted.for_order(payment.order_id, f"payment {verb} sent to the saga")


@router.post(
    "/{payment_id}/confirm",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="confirmPayment",
    response_model=Accepted,
    responses=RESPONSES,
)
async def confirm_payment(
    payment_id: uuid.UUID, services: ServicesDep, caller: auth.Customer
) -> Accepted:
    """The customer confirms their PENDING payment. 404 unknown, 409 not pending or decided."""
    return await _decide(services, caller, payment_id, confirm=True)


@router.post(
    "/{payment_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="cancelPayment",
    response_model=Accepted,
    responses=RESPONSES,
)
async def cancel_payment(
    payment_id: uuid.UUID, services: ServicesDep, caller: auth.Customer
) -> Accepted:
    """The customer cancels their PENDING payment; the saga cancels the order. 404 unknown,
    409 not pending."""
    return await _decide(services, caller, payment_id, confirm=False)
