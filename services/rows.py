"""Row helpers shared by the services: guarded transitions, inserts that do nothing when the
key is taken, saga ownership."""

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from sqlalchemy import Executable, Insert, Table, Update, bindparam, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import Session, SQLModel

from domain import names
from domain.errors import BusinessError
from store.models import DeliveryRow, OrderRow, PaymentRow, utcnow

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

    One guarded ``UPDATE``, applied at most once; with ``saga_id``, only that saga's row (or an
    unclaimed one) moves. Returns whether this call applied it. Does not commit.
    """
    by_saga = saga_id is not None
    if by_saga:
        values["saga_id"] = saga_id
    statement = _transition_statement(
        table, tuple(from_states), to_state, by_saga, tuple(sorted(values))
    )
    params = {f"set_{name}": value for name, value in values.items()}
    params.update(row_id=row_id, now=utcnow(), saga=saga_id)
    # A Core statement, built once: the steps' hottest statement skips the ORM's machinery.
    result = execute_core(db, statement, params)
    changed = bool(result.rowcount == 1)
    if changed:
        expire_held(db, table, row_id)
    return changed


def execute_core(db: Session, statement: Executable, params: dict[str, Any]) -> Any:
    """Run ``statement``, a prebuilt Core statement, in the session's transaction (pending
    rows flushed first) and return its result. The session is not told what it changed:
    expire a row it may hold, as :func:`transition` does. Cheaper than the ORM's path."""
    db.flush()
    return db.connection().execute(statement, params)


def expire_held(db: Session, table: type[SQLModel], row_id: Any) -> None:
    """Expire row ``row_id`` of ``table`` if this session holds it (after a Core UPDATE of
    it, which the session does not see): read again, it shows what the row holds now."""
    held = db.identity_map.get(db.identity_key(table, row_id))
    if held is not None:
        db.expire(held)


@functools.cache
def _transition_statement(
    table: type[SQLModel],
    from_states: tuple[str, ...],
    to_state: str,
    by_saga: bool,
    columns: tuple[str, ...],
) -> Update:
    """The UPDATE of :func:`transition`, with parameters ``row_id``, ``now``, ``saga`` and
    ``set_<column>`` for each of ``columns``; one per shape, built once."""
    c = cast(Table, table.__table__).c  # type: ignore[attr-defined]
    statement = update(c.id.table).where(
        c.id == bindparam("row_id"), c.status.in_([str(state) for state in from_states])
    )
    if by_saga:
        saga = bindparam("saga", type_=c.saga_id.type)
        statement = statement.where(or_(c.saga_id == saga, c.saga_id.is_(None)))
    return statement.values(
        status=str(to_state),
        updated_at=bindparam("now", type_=c.updated_at.type),
        **{name: bindparam(f"set_{name}", type_=c[name].type) for name in columns},
    )


def create_owned(
    db: Session,
    row: OwnedRow,
    existing: Callable[[], OwnedRow | None],
    *,
    saga_id: str | None,
    what: str,
    parent: str | None = None,
) -> tuple[OwnedRow, bool]:
    """Insert ``row``, an entity a saga creates, unless one of its unique keys is taken: then
    return ``existing()`` if it is the same saga's. Returns the row and whether this call
    inserted it. ``OwnedByAnotherSaga`` for another saga's row (or an id another entity holds);
    ``EntityNotFound`` for ``parent`` when a foreign key refuses it. Does not commit.
    """
    try:
        inserted = insert_new(db, row)
    except IntegrityError:  # not a unique key (those do nothing): a foreign key
        if parent is None:
            raise
        raise not_found(parent) from None
    if inserted:
        return row, True
    found = existing()
    if found is None:
        # Its id is another entity's: no retry can change that, so the saga compensates.
        raise BusinessError(names.OWNED_BY_ANOTHER_SAGA, f"{what}: its id is another row's")
    require_owner(found.saga_id, saga_id, what)
    return found, False


def insert_new(db: Session, row: SQLModel) -> bool:
    """``INSERT ... ON CONFLICT DO NOTHING`` of ``row``'s non-None columns, in the session's
    transaction (no savepoint needed). Returns whether it inserted; the inserted ``row`` then
    joins the session with its primary key. Other constraints raise ``IntegrityError``."""
    table = cast(Table, row.__table__)  # type: ignore[attr-defined]
    values = {c.key: v for c in table.columns if (v := getattr(row, c.key)) is not None}
    db.flush()  # pending rows first (a parent added to the session), as autoflush would
    connection = db.connection()
    statement = _insert_new_statement(table, connection.dialect.name)
    # RETURNING says whether it inserted (psycopg's rowcount does not), with the primary key.
    key = connection.execute(statement, values).first()
    if key is None:
        return False
    for column, value in zip(table.primary_key.columns, key, strict=True):
        setattr(row, column.key, value)
    make_transient_to_detached(row)
    db.add(row)
    return True


@functools.cache
def _insert_new_statement(table: Table, dialect: str) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` into ``table`` for ``dialect`` (the two databases
    the services run on), built once."""
    if dialect == "postgresql":
        statement: postgresql.Insert | sqlite.Insert = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:
        raise ValueError(f"no INSERT ... ON CONFLICT DO NOTHING for {dialect}")
    return statement.on_conflict_do_nothing().returning(*table.primary_key.columns)


def require_owner(row_saga_id: str | None, saga_id: str | None, what: str) -> None:
    """Raise ``OwnedByAnotherSaga`` unless ``saga_id`` (None: not a saga) may act on ``what``:
    it created the row, or the row records no saga."""
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
