"""Row helpers shared by the services: guarded transitions, insert-or-get, saga ownership."""

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel

from domain import names
from domain.errors import BusinessError
from store.models import DeliveryRow, OrderRow, PaymentRow, utcnow

M = TypeVar("M", bound=SQLModel)

# The rows a saga creates; each records that saga (``saga_id``).
OwnedRow = TypeVar("OwnedRow", OrderRow, PaymentRow, DeliveryRow)


def transition(
    db: Session,
    table: type[SQLModel],
    row_id: Any,
    from_states: Iterable[str],
    to_state: str,
    *,
    saga_id: str | None = None,
    **values: Any,
) -> bool:
    """Move row ``row_id`` of ``table`` to ``to_state`` if it is in ``from_states``.

    One ``UPDATE ... WHERE id = :id AND status IN (:from)``: it applies at most once however
    often it runs, and a concurrent transition of the same row loses cleanly. With
    ``saga_id``, only a row of that saga moves (a row written before rows recorded their saga
    is claimed by it). Returns whether this call applied the transition. Does not commit.
    """
    columns: Any = table
    statement = update(table).where(columns.id == row_id, columns.status.in_(list(from_states)))
    if saga_id is not None:
        statement = statement.where(or_(columns.saga_id == saga_id, columns.saga_id.is_(None)))
        values["saga_id"] = saga_id
    result: Any = db.exec(statement.values(status=to_state, updated_at=utcnow(), **values))
    return bool(result.rowcount == 1)


def insert_or_get(db: Session, row: M, existing: Callable[[], M | None]) -> tuple[M, bool]:
    """Insert ``row``, or return the row that already holds its unique key.

    The insert runs in a savepoint, so a concurrent insert of the same key (which wins)
    leaves the caller's transaction usable. Returns the row and whether this call inserted
    it. Re-raises the ``IntegrityError`` when no existing row explains it (a foreign key).
    Does not commit.
    """
    try:
        with db.begin_nested():
            db.add(row)
    except IntegrityError:
        found = existing()
        if found is None:
            raise
        return found, False
    return row, True


def create_owned(
    db: Session,
    row: OwnedRow,
    existing: Callable[[], OwnedRow | None],
    *,
    saga_id: str | None,
    what: str,
    parent: str | None = None,
) -> tuple[OwnedRow, bool]:
    """Insert ``row``, an entity a saga creates (an order, its payment, its delivery), unless
    ``existing()`` finds it: then that one, if it is the same saga's.

    Returns the row and whether this call inserted it. ``OwnedByAnotherSaga`` when another
    saga created it; ``EntityNotFound`` for ``parent`` when a foreign key refuses the insert
    (no row explains the refusal). Does not commit.
    """
    found = existing()
    if found is None:
        try:
            found, inserted = insert_or_get(db, row, existing)
        except IntegrityError:
            if parent is None:
                raise
            raise not_found(parent) from None
        if inserted:
            return found, True
    require_owner(found.saga_id, saga_id, what)
    return found, False


def require_owner(row_saga_id: str | None, saga_id: str | None, what: str) -> None:
    """Raise ``OwnedByAnotherSaga`` unless the saga ``saga_id`` may act on ``what``.

    It may when it created the row, when the row predates ownership (``row_saga_id`` None)
    or when the caller is not a saga that records ownership (``saga_id`` None).
    """
    if saga_id is None or row_saga_id is None or row_saga_id == saga_id:
        return
    raise BusinessError(
        names.OWNED_BY_ANOTHER_SAGA,
        f"{what} belongs to saga {row_saga_id}; saga {saga_id} leaves it alone",
    )


def is_owner(row_saga_id: str | None, saga_id: str | None) -> bool:
    """Whether :func:`require_owner` would let ``saga_id`` act on the row."""
    return saga_id is None or row_saga_id is None or row_saga_id == saga_id


def not_found(what: str) -> BusinessError:
    return BusinessError(names.ENTITY_NOT_FOUND, f"{what} does not exist")


def invalid_transition(message: str) -> BusinessError:
    return BusinessError(names.INVALID_TRANSITION, message)
