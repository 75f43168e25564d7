"""/payments: the customer's decision, delivered into the saga as a signal."""

import uuid

from fastapi import APIRouter, status

from api.auth.callers import Caller, Customer, hidden_unless_theirs
from api.deps import Services, ServicesDep
from api.errors import responses
from api.schemas import Accepted
from domain.status import Decision

router = APIRouter(prefix="/payments", tags=["payments"])

RESPONSES = responses(401, 403, 404, 409, 429, 503)


async def _decide(
    services: Services, caller: Caller, payment_id: uuid.UUID, decision: Decision
) -> Accepted:
    """The customer's decision: 404 unknown payment (or another customer's), then 409 unless
    it is still PENDING inside its window."""
    missing = f"payment {payment_id} does not exist"
    accepted = await services.sagas.decide_payment(
        str(payment_id),
        decision,
        authorize=lambda owner: hidden_unless_theirs(caller, owner, missing),
    )
    return Accepted.for_order(
        accepted.order_id, f"payment {decision.taken}: the saga has the decision"
    )


@router.post(
    "/{payment_id}/confirm",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="confirmPayment",
    response_model=Accepted,
    responses=RESPONSES,
)
async def confirm_payment(
    payment_id: uuid.UUID, services: ServicesDep, caller: Customer
) -> Accepted:
    """The customer confirms their payment. Of racing decisions exactly one wins (409 for the
    other, naming the winner); the same decision again: the same 202. 404 unknown, 409 after
    the payment window, 429 when one payment is decided too often."""
    return await _decide(services, caller, payment_id, Decision.CONFIRM)


@router.post(
    "/{payment_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="cancelPayment",
    response_model=Accepted,
    responses=RESPONSES,
)
async def cancel_payment(
    payment_id: uuid.UUID, services: ServicesDep, caller: Customer
) -> Accepted:
    """The customer cancels their payment; the saga cancels the order. Exactly one of racing
    decisions wins (409 for the other, naming the winner); the same decision again: the same
    202. 404 unknown, 409 after the payment window, 429 when one payment is decided too often."""
    return await _decide(services, caller, payment_id, Decision.CANCEL)
