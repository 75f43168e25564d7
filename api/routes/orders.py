"""/orders: start sagas, read them, cancel them."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from starlette.concurrency import run_in_threadpool
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from api import auth, queries
from api.deps import ServicesDep
from api.errors import NotFoundError, saga_ended_is_conflict
from api.limits import StrictJSONRoute
from api.schemas import Accepted, InvalidRequest, OrderPage, OrderView, Problem, order_path
from domain import names
from domain.payloads import NO_CONTROL_CHARS, OrderRequest
from domain.status import OrderStatus

router = APIRouter(prefix="/orders", tags=["orders"], route_class=StrictJSONRoute)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Same key (for the same customer) again: the same order, no second saga.",
    ),
]
OrderId = Annotated[uuid.UUID, "order id"]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderView,
    responses={
        202: {"model": Accepted},
        **auth.AUTH_RESPONSES,
        413: {"model": Problem},
        422: {"model": InvalidRequest},
        503: {"model": Problem},
    },
    dependencies=[auth.OperatorKey, auth.OrderPlacer],
)
async def create_order(
    body: OrderRequest,
    services: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> OrderView | Response:
    """Start the order's saga and answer with the order and its pending payment.

    201 once the payment exists (the usual case, within a few hundred ms), 202 with a
    ``Location`` to poll when it does not exist yet. ``Idempotency-Key``: a retried request
    returns the same order (header ``Idempotent-Replayed: true``) and starts nothing.
    """
    order_id = (
        names.order_id_for_idempotency_key(body.customer_id, idempotency_key)
        if idempotency_key
        else str(uuid.uuid4())
    )
    state, existed = await services.saga.start(order_id, body)
    view = await run_in_threadpool(queries.order_view, services.engine, services.settings, order_id)
    if existed:
        response.headers["Idempotent-Replayed"] = "true"
    if view is None or view.payment is None:
        accepted = Accepted.for_order(order_id, "the saga is starting")
        return Response(
            accepted.model_dump_json(),
            status_code=status.HTTP_202_ACCEPTED,
            media_type="application/json",
            headers={"Location": order_path(order_id), **dict(response.headers)},
        )
    response.headers["Location"] = order_path(order_id)
    view.saga = state
    return view


# Seed-compatible alias of POST /orders (the original example's route name).
router.add_api_route(
    "/create_order",
    create_order,
    methods=["POST"],
    status_code=status.HTTP_201_CREATED,
    response_model=OrderView,
    dependencies=[auth.OperatorKey, auth.OrderPlacer],
    include_in_schema=False,
)


@router.get("", response_model=OrderPage)
def list_orders(
    services: ServicesDep,
    status_filter: Annotated[OrderStatus | None, Query(alias="status")] = None,
    customer_id: Annotated[str | None, Query(max_length=64, pattern=NO_CONTROL_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> OrderPage:
    """Orders, newest first, filtered by status and customer."""
    items, total = queries.list_orders(
        services.engine,
        services.settings,
        status=status_filter,
        customer_id=customer_id,
        limit=limit,
        offset=offset,
    )
    return OrderPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{order_id}", response_model=OrderView, responses={404: {"model": Problem}})
async def get_order(order_id: uuid.UUID, services: ServicesDep) -> OrderView:
    """The order, its payment and delivery (database) and the saga's state (workflow query)."""
    key = str(order_id)
    try:
        saga = await services.saga.state(key)
        exists: bool | None = saga is not None
    except (RPCError, WorkflowQueryFailedError):
        # No worker answered the query (down or busy): the database still answers, and
        # Temporal itself says whether the saga exists.
        saga, exists = None, None
    # Read after the saga: it records a step only once the step's rows are written, so the
    # rows shown are never behind the saga shown (a CANCELLED saga, a CANCELLED order).
    view = await run_in_threadpool(queries.order_view, services.engine, services.settings, key)
    if view is None:
        if exists is None:
            exists = await services.saga.exists(key)
        if not exists:
            raise NotFoundError(f"order {key} does not exist")
        workflow_id = names.workflow_id_for(key)
        view = OrderView(
            order_id=key,
            workflow_id=workflow_id,
            workflow_url=services.settings.workflow_url(workflow_id),
            status=None,
        )
    view.saga = saga
    return view


@router.post(
    "/{order_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses={**auth.AUTH_RESPONSES, 404: {"model": Problem}, 409: {"model": Problem}},
    dependencies=[auth.OperatorKey, auth.OrderOwner],
)
async def cancel_order(order_id: uuid.UUID, services: ServicesDep) -> Accepted:
    """Cancel the order before a dealer is assigned; the saga refunds and cancels. 409 after."""
    key = str(order_id)
    with saga_ended_is_conflict(f"order {key} can no longer be cancelled"):
        await services.saga.cancel(key)
    return Accepted.for_order(key, "cancellation requested")
