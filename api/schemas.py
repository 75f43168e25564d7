"""API-only response schemas: acceptances and errors. The read models are ``domain.views``;
request bodies are the domain payloads (``OrderRequest``) and ``domain.views.NewDealer``."""

from typing import Any

from pydantic import BaseModel


class Accepted(BaseModel):
    """A request handed to the saga; follow ``order_url`` to see its effect."""

    order_id: str
    detail: str
    order_url: str

    @classmethod
    def for_order(cls, order_id: str, detail: str) -> "Accepted":
        return cls(order_id=order_id, detail=detail, order_url=order_path(order_id))


class OrderAccepted(Accepted):
    """An order accepted: its saga is durably started. ``payment_id`` can be confirmed or
    cancelled at once; ``status`` is the order's (PENDING until the saga moves it)."""

    payment_id: str
    status: str

    @classmethod
    def for_order(cls, order_id: str, payment_id: str) -> "OrderAccepted":
        return cls(
            order_id=order_id,
            payment_id=payment_id,
            status="PENDING",
            detail="accepted: the saga is started",
            order_url=order_path(order_id),
        )


def order_path(order_id: str) -> str:
    """Where an order (and its saga) can be read: ``GET /orders/{order_id}``."""
    return f"/orders/{order_id}"


class Problem(BaseModel):
    """Error body of every 4xx/5xx answer."""

    detail: str


class InvalidRequest(BaseModel):
    """422: the first few invalid fields (type, loc, msg, and the input when it is short), or
    why the request is refused; ``omitted``: how many more errors were not listed."""

    detail: str | list[dict[str, Any]]
    omitted: int | None = None
