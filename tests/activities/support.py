"""Helpers of the activity tests: real activities over a real database, no mocks."""

import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlmodel import SQLModel, select
from temporalio.exceptions import ApplicationError

from activities.deliveries import DeliveryActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from domain import names
from domain.payloads import (
    CreateDeliveryInput,
    CreateOrderInput,
    CreatePaymentInput,
    DeliveryRef,
    OrderRef,
    OrderRequest,
    PaymentRef,
)
from services import payments
from store.db import session, transaction
from store.models import DealerRow
from tests.saga_harness import order_request

T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M", bound=SQLModel)

THREADS = 16


def new_order_id() -> str:
    return str(uuid.uuid4())


def create_order_input(
    order_id: str | None = None, request: OrderRequest | None = None
) -> CreateOrderInput:
    return CreateOrderInput(order_id=order_id or new_order_id(), request=request or order_request())


def accept_order(engine: Engine, order_id: str, customer_id: str) -> str:
    """Accept the order as the door does (its payment's decision opened); its payment id."""
    payment_id = names.payment_id_for(order_id)
    with transaction(engine) as db:
        payments.open_decision(db, payment_id, order_id, customer_id)
    return payment_id


def place_order(
    engine: Engine, city: str = "Tehran", province: str = "Tehran", *, accepted: bool = True
) -> str:
    """A PENDING order (through the real activity), accepted first as the door accepts it
    (unless not ``accepted``: past the door); returns its id."""
    params = create_order_input(request=order_request(city=city, province=province))
    if accepted:
        accept_order(engine, params.order_id, params.request.customer_id)
    OrderActivities(engine).create_order(params)
    return params.order_id


def open_payment(
    engine: Engine, amount: str = "28.10", *, accepted: bool = True
) -> tuple[str, str]:
    """A PENDING payment of a new order, its decision opened as the door opens it when it
    accepts the order (``accepted``); returns (order_id, payment_id)."""
    order_id = place_order(engine, accepted=accepted)
    payment_id = names.payment_id_for(order_id)
    PaymentActivities(engine).create_payment(
        CreatePaymentInput(payment_id=payment_id, order_id=order_id, amount=Decimal(amount))
    )
    return order_id, payment_id


def open_delivery(engine: Engine, city: str = "Tehran", province: str = "Tehran") -> DeliveryRef:
    """A PENDING delivery of a new order (to ``province``/``city``)."""
    order_id = place_order(engine, city=city, province=province)
    delivery_id = names.delivery_id_for(order_id)
    DeliveryActivities(engine).create_delivery(
        CreateDeliveryInput(
            delivery_id=delivery_id, order_id=order_id, province=province, city=city
        )
    )
    return DeliveryRef(delivery_id=delivery_id)


def order_ref(order_id: str) -> OrderRef:
    return OrderRef(order_id=order_id)


def payment_ref(payment_id: str) -> PaymentRef:
    return PaymentRef(payment_id=payment_id)


def all_rows(engine: Engine, table: type[M], **where: Any) -> list[M]:
    """Every row of ``table`` whose columns equal ``where``, read in a fresh session."""
    columns: Any = table
    statement = select(table)
    for column, value in where.items():
        statement = statement.where(getattr(columns, column) == value)
    with session(engine) as db:
        return list(db.exec(statement).all())


def get_row(engine: Engine, table: type[M], row_id: Any) -> M:
    with session(engine) as db:
        row = db.get(table, row_id)
    assert row is not None, f"{table.__name__} {row_id} is missing"
    return row


def dealer_loads(engine: Engine) -> dict[int, int]:
    """active_deliveries of every dealer, by id."""
    return {d.id: d.active_deliveries for d in all_rows(engine, DealerRow) if d.id is not None}


def assert_business_error(error: BaseException, error_type: str) -> None:
    """A non-retryable ApplicationError of ``error_type``: the saga compensates, never retries."""
    assert isinstance(error, ApplicationError), repr(error)
    assert error.type == error_type, error
    assert error.non_retryable is True


def run_concurrently(fn: Callable[[T], R], args: Sequence[T], threads: int = THREADS) -> list[R]:
    """Call ``fn(arg)`` for every arg from ``threads`` threads, released together.

    Returns the results in the order of ``args``; the first exception of any call is raised.
    """
    start = threading.Event()

    def gated(arg: T) -> R:
        start.wait()
        return fn(arg)

    with ThreadPoolExecutor(threads, thread_name_prefix="race") as pool:
        futures = [pool.submit(gated, arg) for arg in args]
        start.set()
        return [future.result(timeout=60) for future in futures]
