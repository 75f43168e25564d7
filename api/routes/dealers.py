"""/dealers: the delivery people and their capacity."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.auth.callers import AuthenticatedJSONRoute, Operator
from api.deps import ServicesDep
from api.errors import responses
from domain.input import NO_CONTROL_CHARS
from domain.views import DealerView, NewDealer
from sagas import views
from services import dealers
from store.db import transaction

router = APIRouter(prefix="/dealers", tags=["dealers"], route_class=AuthenticatedJSONRoute)


@router.get(
    "",
    response_model=list[DealerView],
    operation_id="listDealers",
    responses=responses(401, 403, 503),
)
def list_dealers(
    services: ServicesDep,
    _caller: Operator,
    province: Annotated[str | None, Query(max_length=100, pattern=NO_CONTROL_CHARS)] = None,
    city: Annotated[str | None, Query(max_length=100, pattern=NO_CONTROL_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[DealerView]:
    """Dealers (with their phone numbers: operators only), optionally of one province and
    city (case-insensitive)."""
    return views.list_dealers(
        services.engine, province=province, city=city, limit=limit, offset=offset
    )


@router.post(
    "",
    operation_id="addDealer",
    status_code=status.HTTP_201_CREATED,
    response_model=DealerView,
    responses=responses(401, 403, 409, 413, 422, 503),
)
def add_dealer(body: NewDealer, services: ServicesDep, _caller: Operator) -> DealerView:
    """Add a delivery person. 409 if the phone number is taken."""
    with transaction(services.engine) as db:  # on this route's worker thread
        dealer = dealers.add_dealer(db, body)
    return views.dealer_view(dealer)
