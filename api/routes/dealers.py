"""/dealers: the delivery people and their capacity."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from api import auth, queries
from api.deps import ServicesDep
from api.errors import ConflictError, responses
from api.schemas import DealerCreate, DealerView
from domain.payloads import NO_CONTROL_CHARS

router = APIRouter(prefix="/dealers", tags=["dealers"], route_class=auth.AuthenticatedJSONRoute)


@router.get(
    "",
    response_model=list[DealerView],
    operation_id="listDealers",
    responses=responses(401, 403, 503),
)
def list_dealers(
    services: ServicesDep,
    _caller: auth.Operator,
    province: Annotated[str | None, Query(max_length=100, pattern=NO_CONTROL_CHARS)] = None,
    city: Annotated[str | None, Query(max_length=100, pattern=NO_CONTROL_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[DealerView]:
    """Dealers (with their phone numbers: operators only), optionally of one province and
    city (case-insensitive)."""
    return queries.list_dealers(
        services.engine, province=province, city=city, limit=limit, offset=offset
    )


@router.post(
    "",
    operation_id="addDealer",
    status_code=status.HTTP_201_CREATED,
    response_model=DealerView,
    responses=responses(401, 403, 409, 413, 422, 503),
)
def add_dealer(body: DealerCreate, services: ServicesDep, _caller: auth.Operator) -> DealerView:
    """Add a delivery person. 409 if the phone number is taken."""
    try:
        return queries.add_dealer(services.engine, body)
    except queries.DuplicateDealerError as err:
        raise ConflictError(f"a dealer with phone {body.phone} exists already") from err
