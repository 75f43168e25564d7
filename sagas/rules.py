"""What the door decides the same way for both saga styles: accepting an order, which of
racing decisions won, whether an order may be cancelled or a delivery reported, and the words
of each refusal.
"""

from dataclasses import dataclass

from sqlmodel import Session

from domain import names
from domain.payloads import OrderRequest, SagaTimeouts
from domain.status import Decision, DeliveryStatus, SagaPhase
from domain.views import OrderView
from sagas.errors import ConflictError, IdempotencyKeyReusedError, NotFoundError
from services import orders, payments


@dataclass(frozen=True)
class NewOrder:
    """An order the door is placing: its id (derived from the Idempotency-Key when there is
    one), the request and its fingerprint, and the saga's windows, fixed from now on."""

    order_id: str
    request: OrderRequest
    idempotency_key: str | None
    fingerprint: str
    timeouts: SagaTimeouts

    @property
    def payment_id(self) -> str:
        return names.payment_id_for(self.order_id)


@dataclass(frozen=True)
class Placement:
    """What placing an order did. ``view``: the order, when waited for and its payment exists
    or when replayed; None otherwise (poll it). ``replayed``: nothing new was started.
    """

    order_id: str
    payment_id: str
    view: OrderView | None
    replayed: bool


@dataclass(frozen=True)
class DecisionAccepted:
    """A payment decision the saga has (or, for the same decision sent again, already had)."""

    order_id: str
    decision: Decision
    replayed: bool


@dataclass(frozen=True)
class Acceptance:
    """What :func:`accept` found: ``replayed`` when the order was accepted before (its
    ``order_id`` may differ from the one asked for: the key's), ``saga_started`` when its key
    says its saga had started."""

    order_id: str
    replayed: bool
    saga_started: bool = False


def key_reused() -> IdempotencyKeyReusedError:
    return IdempotencyKeyReusedError(
        "this Idempotency-Key was already used for a different request"
    )


def accept(db: Session, order: NewOrder) -> Acceptance:
    """Accept ``order`` in the caller's transaction: record its Idempotency-Key and open its
    payment's decision. The same request again records nothing and is a replay; the key with
    another request raises :class:`IdempotencyKeyReusedError`."""
    request, key = order.request, order.idempotency_key
    if key is not None:
        use = orders.use_idempotency_key(
            db, request.customer_id, key, order.fingerprint, order.order_id
        )
        if use.fingerprint != order.fingerprint:
            raise key_reused()
        if not use.recorded:
            return Acceptance(use.order_id, replayed=True, saga_started=use.saga_started)
    if payments.open_decision(db, order.payment_id, order.order_id, request.customer_id):
        return Acceptance(order.order_id, replayed=False)
    if key is None:  # a random id accepted twice: never, but never a second order either
        raise ConflictError(f"order {order.order_id} was placed already")
    placed = orders.placed_fingerprint(db, order.order_id)
    if placed is not None and placed != order.fingerprint:
        raise key_reused()
    return Acceptance(order.order_id, replayed=True)


def won_for(taken: payments.DecisionTaken, payment_id: str, decision: Decision) -> str:
    """The order id when ``decision`` is the one on record (taken now, or earlier: the same
    decision again is answered alike). :class:`NotFoundError` for an unknown payment;
    :class:`ConflictError` naming the decision that won, or saying why none may be taken."""
    if taken.order_id is None:
        raise NotFoundError(f"payment {payment_id} does not exist")
    if taken.winner is None:
        raise ConflictError(f"payment {payment_id} can no longer be decided: {taken.refusal}")
    if taken.winner != decision:
        raise ConflictError(
            f"payment {payment_id} was already {taken.winner.taken} ({taken.winner})"
        )
    return taken.order_id


def check_cancellable(view: OrderView) -> None:
    """:class:`ConflictError` once a dealer has the parcel (the pivot) or once the order is
    being cancelled already."""
    if view.phase in (SagaPhase.IN_TRANSIT, SagaPhase.DELIVERED):
        raise ConflictError(
            f"order {view.order_id} is past dealer assignment and cannot be cancelled"
        )
    if view.phase in (SagaPhase.COMPENSATING, SagaPhase.CANCELLED):
        raise ConflictError(f"order {view.order_id} is already cancelled")


def to_report(delivery_id: str, status: str) -> bool:
    """Whether a dealer's report of this delivery has something to do: True while it is
    IN_TRANSIT, False once DELIVERED (the same report again, answered alike);
    :class:`ConflictError` otherwise."""
    if status == DeliveryStatus.DELIVERED:
        return False
    if status != DeliveryStatus.IN_TRANSIT:
        raise ConflictError(f"delivery {delivery_id} is {status}, not IN_TRANSIT")
    return True
