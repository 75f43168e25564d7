"""/dealers: the delivery people and their capacity."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from api import auth, queries
from api.deps import ServicesDep
from api.errors import ConflictError
from api.limits import StrictJSONRoute
from api.schemas import DealerCreate, DealerView, Problem
from domain.payloads import NO_CONTROL_CHARS

router = APIRouter(prefix="/dealers", tags=["dealers"], route_class=StrictJSONRoute)


@router.get("", response_model=list[DealerView])
def list_dealers(
    services: ServicesDep,
    province: Annotated[str | None, Query(max_length=100, pattern=NO_CONTROL_CHARS)] = None,
    city: Annotated[str | None, Query(max_length=100, pattern=NO_CONTROL_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[DealerView]:
    """Dealers, optionally of one province and city (case-insensitive)."""
    return queries.list_dealers(
        services.engine, province=province, city=city, limit=limit, offset=offset
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DealerView,
    responses={**auth.AUTH_RESPONSES, 409: {"model": Problem}, 413: {"model": Problem}},
    dependencies=[auth.OperatorKey],
)
def add_dealer(body: DealerCreate, services: ServicesDep) -> DealerView:
    """Add a delivery person. 409 if the phone number is taken."""
    try:
        return queries.add_dealer(services.engine, body)
    except queries.DuplicateDealerError as err:
        raise ConflictError(f"a dealer with phone {body.phone} exists already") from err
