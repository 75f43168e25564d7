"""/deliveries: the dealer reports the parcel delivered."""

import uuid

from fastapi import APIRouter, status
from starlette.concurrency import run_in_threadpool

from api import auth, queries
from api.deps import ServicesDep
from api.errors import ConflictError, NotFoundError, responses, saga_ended_is_conflict
from api.schemas import Accepted
from domain.status import DeliveryStatus

router = APIRouter(prefix="/deliveries", tags=["deliveries"])


@router.post(
    "/{delivery_id}/delivered",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="reportDelivered",
    response_model=Accepted,
    responses=responses(401, 403, 404, 409, 503),
)
async def mark_delivered(
    delivery_id: uuid.UUID, services: ServicesDep, _caller: auth.Operator
) -> Accepted:
    """The dealer's report, by an operator: an IN_TRANSIT delivery is delivered. 404 unknown,
    409 not in transit."""
    key = str(delivery_id)
    delivery = await run_in_threadpool(queries.get_delivery, services.engine, key)
    if delivery is None:
        raise NotFoundError(f"delivery {key} does not exist")
    if delivery.status != DeliveryStatus.IN_TRANSIT:
        raise ConflictError(f"delivery {key} is {delivery.status}, not IN_TRANSIT")
    with saga_ended_is_conflict(f"delivery {key} can no longer be reported"):
        await services.saga.report_delivered(delivery.order_id, key)
    return Accepted.for_order(delivery.order_id, "delivery report sent to the saga")
