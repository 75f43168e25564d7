"""/orders: start sagas, read them, cancel them."""

import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.auth.callers import (
    AnyCaller,
    AuthenticatedJSONRoute,
    Customer,
    Operator,
    hidden_unless_visible,
    require_customer_of,
)
from api.deps import ServicesDep
from api.errors import responses
from api.prefer import preferred_wait
from api.schemas import Accepted, OrderAccepted, order_path
from domain.input import NO_CONTROL_CHARS
from domain.payloads import OrderRequest, SagaState
from domain.status import OrderStatus
from domain.views import EventLogEntry, OrderPage, OrderView, StuckOrder
from sagas import views
from sagas.errors import NotFoundError

router = APIRouter(prefix="/orders", tags=["orders"], route_class=AuthenticatedJSONRoute)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=NO_CONTROL_CHARS,
        description=(
            "Same key (for the same customer) again: the same order, from the database, "
            "however late; no second saga. The same key with another body: 422."
        ),
    ),
]


# OpenAPI links: where an answer's ids lead (clients, and schema-driven testers, follow them).
_ORDER_LINKS = {
    "GetOrder": {"operationId": "getOrder", "parameters": {"order_id": "$response.body#/order_id"}},
    "GetSaga": {"operationId": "getSaga", "parameters": {"order_id": "$response.body#/order_id"}},
    "CancelOrder": {
        "operationId": "cancelOrder",
        "parameters": {"order_id": "$response.body#/order_id"},
    },
}
_PAYMENT_LINKS = {
    name: {
        "operationId": operation,
        "parameters": {"payment_id": "$response.body#/payment/payment_id"},
    }
    for name, operation in (
        ("ConfirmPayment", "confirmPayment"),
        ("CancelPayment", "cancelPayment"),
    )
}
_DELIVERY_LINKS = {
    "ReportDelivered": {
        "operationId": "reportDelivered",
        "parameters": {"delivery_id": "$response.body#/delivery/delivery_id"},
    }
}


def _with_links(
    documented: dict[int | str, dict[str, Any]], **links: dict[str, Any]
) -> dict[int | str, dict[str, Any]]:
    for code, code_links in links.items():
        documented.setdefault(int(code.removeprefix("status_")), {})["links"] = code_links
    return documented


_ACCEPTED_LINKS = {
    **_ORDER_LINKS,
    **{
        name: {"operationId": operation, "parameters": {"payment_id": "$response.body#/payment_id"}}
        for name, operation in (
            ("ConfirmPayment", "confirmPayment"),
            ("CancelPayment", "cancelPayment"),
        )
    },
}
Prefer = Annotated[
    str | None,
    Header(
        max_length=200,
        description=(
            "RFC 7240. `wait=<seconds>`: wait up to that long (at most "
            "ORDER_CREATE_WAIT_SECONDS) for the payment to exist and answer 201 with the order "
            "(202 when the wait runs out). Without it the answer comes as soon as the saga is "
            "durably started."
        ),
    ),
]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=OrderAccepted,
    operation_id="placeOrder",
    responses=_with_links(
        {
            200: {"model": OrderView, "description": "A replayed request: the order as it is."},
            201: {"model": OrderView, "description": "Placed, and its payment exists (Prefer)."},
            **responses(401, 403, 409, 413, 422, 503),
        },
        status_200={**_ORDER_LINKS, **_PAYMENT_LINKS},
        status_201={**_ORDER_LINKS, **_PAYMENT_LINKS},
        status_202=_ACCEPTED_LINKS,
    ),
)
async def create_order(
    body: OrderRequest,
    services: ServicesDep,
    caller: Customer,
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> Response:
    """Place the order: **202** with ``Location``, the order id and its payment id once its
    saga is durably started. ``Prefer: wait=<seconds>``: **201** with the order once its
    payment exists. ``Idempotency-Key``: a retry answers the same order
    (``Idempotent-Replayed: true``; **200** once it is written) and starts nothing; 409 if that
    order's saga ended before writing it.
    """
    require_customer_of(caller, body.customer_id, "order's customer_id")
    wait = preferred_wait(prefer, services.settings.order_create_wait_seconds)
    placed = await services.sagas.place(body, idempotency_key, wait=wait)
    headers = {"Location": order_path(placed.order_id)}
    if wait:
        headers["Preference-Applied"] = f"wait={wait:g}"
    if placed.replayed:
        headers["Idempotent-Replayed"] = "true"
    if placed.view is not None:
        code = status.HTTP_200_OK if placed.replayed and not wait else status.HTTP_201_CREATED
        return _json(placed.view, code, headers)
    accepted = OrderAccepted.for_order(placed.order_id, placed.payment_id)
    return _json(accepted, status.HTTP_202_ACCEPTED, headers)


def _json(body: BaseModel, status_code: int, headers: dict[str, str]) -> Response:
    return Response(
        body.model_dump_json(),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


# An alias of POST /orders, for clients that use this route name.
router.add_api_route(
    "/create_order",
    create_order,
    methods=["POST"],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=OrderAccepted,
    include_in_schema=False,
)


@router.get(
    "", response_model=OrderPage, operation_id="listOrders", responses=responses(401, 403, 503)
)
def list_orders(
    services: ServicesDep,
    caller: AnyCaller,
    status_filter: Annotated[OrderStatus | None, Query(alias="status")] = None,
    customer_id: Annotated[str | None, Query(max_length=64, pattern=NO_CONTROL_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> OrderPage:
    """Orders, newest first, filtered by status and customer. A customer sees only their own
    (another ``customer_id`` is 403); an operator sees every order."""
    if not caller.is_operator:
        assert caller.customer_id is not None
        if customer_id is not None:
            require_customer_of(caller, customer_id, "customer's order list")
        customer_id = caller.customer_id
    items, total = views.list_orders(
        services.engine,
        services.settings,
        status=status_filter,
        customer_id=customer_id,
        limit=limit,
        offset=offset,
    )
    return OrderPage(items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/stuck",
    response_model=list[StuckOrder],
    operation_id="listStuckOrders",
    responses=responses(401, 403, 503),
)
async def list_stuck_orders(
    services: ServicesDep,
    _caller: Operator,
    older_than_seconds: Annotated[
        int | None,
        Query(
            ge=0,
            le=10 * 365 * 24 * 3600,
            description=(
                "every unfinished order without progress for this long; by default, those "
                "past their window or without progress for longer than their phase takes"
            ),
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[StuckOrder]:
    """Orders whose saga waits longer than expected, longest first, each with what it waits
    for and why: a signal, a failing step, an event not applied, a dead letter."""
    older_than = timedelta(seconds=older_than_seconds) if older_than_seconds is not None else None
    return await services.sagas.stuck_orders(older_than=older_than, limit=limit, offset=offset)


@router.get(
    "/{order_id}",
    response_model=OrderView,
    operation_id="getOrder",
    responses=_with_links(
        responses(401, 404, 503), status_200={**_PAYMENT_LINKS, **_DELIVERY_LINKS}
    ),
)
async def get_order(order_id: uuid.UUID, services: ServicesDep, caller: AnyCaller) -> OrderView:
    """The order, its payment and delivery and where its saga is, from the database alone (no
    workflow query): CREATING while its saga's first steps have not written it. 404 unknown, or
    another customer's."""
    view = await services.sagas.order(str(order_id))
    if view.customer_id is not None:
        hidden_unless_visible(caller, view.customer_id, f"order {order_id} does not exist")
    return view


@router.get(
    "/{order_id}/saga",
    response_model=SagaState | list[EventLogEntry],
    operation_id="getSaga",
    responses=responses(401, 403, 404, 503),
)
async def get_saga(
    order_id: uuid.UUID, services: ServicesDep, _caller: Operator
) -> SagaState | list[EventLogEntry]:
    """The saga's full account for an operator: an orchestrated saga's state (a workflow query;
    404 once Temporal no longer keeps it), or a choreographed order's event log."""
    key = str(order_id)
    saga = await services.sagas.saga_state(key)
    if saga is None:
        raise NotFoundError(f"order {key} has no saga")
    return saga


@router.post(
    "/{order_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="cancelOrder",
    response_model=Accepted,
    responses=responses(401, 404, 409, 503),
)
async def cancel_order(order_id: uuid.UUID, services: ServicesDep, caller: AnyCaller) -> Accepted:
    """Cancel the order before a dealer is assigned; the saga refunds and cancels. 409 after.
    Its customer, or an operator on behalf of the shop."""
    key = str(order_id)
    if not caller.is_operator:
        owner = await run_in_threadpool(views.customer_of, services.engine, key)
        missing = f"order {key} does not exist"
        if owner is None:
            raise NotFoundError(missing)
        hidden_unless_visible(caller, owner, missing)
    await services.sagas.cancel(key)
    return Accepted.for_order(key, "cancellation requested")
