"""/deliveries: the dealer reports the parcel delivered."""

import uuid

from fastapi import APIRouter, status

from api.auth.callers import Operator
from api.deps import ServicesDep
from api.errors import responses
from api.schemas import Accepted

router = APIRouter(prefix="/deliveries", tags=["deliveries"])


@router.post(
    "/{delivery_id}/delivered",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="reportDelivered",
    response_model=Accepted,
    responses=responses(401, 403, 404, 409, 429, 503),
)
async def mark_delivered(
    delivery_id: uuid.UUID, services: ServicesDep, _caller: Operator
) -> Accepted:
    """The dealer's report, by an operator: an IN_TRANSIT delivery is delivered; the same
    report again is answered alike. 404 unknown, 409 not in transit (nor delivered), 429 when
    one delivery is reported too often."""
    order_id = await services.sagas.report_delivered(str(delivery_id))
    return Accepted.for_order(order_id, "delivery report sent to the saga")
