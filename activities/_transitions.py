"""Guarded state transitions shared by the service activities.

A transition is one ``UPDATE ... WHERE id = :id AND status IN (:from)``: it applies at most
once however often it runs, and a concurrent transition of the same row loses cleanly.
"""

from collections.abc import Iterable
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, SQLModel

from store.models import utcnow


def transition(
    session: Session,
    table: type[SQLModel],
    row_id: Any,
    from_states: Iterable[str],
    to_state: str,
    **values: Any,
) -> bool:
    """Move row ``row_id`` of ``table`` to ``to_state`` if it is in ``from_states``.

    Returns whether this call applied the transition. Does not commit.
    """
    columns: Any = table
    statement = (
        update(table)
        .where(columns.id == row_id, columns.status.in_(list(from_states)))
        .values(status=to_state, updated_at=utcnow(), **values)
    )
    result: Any = session.exec(statement)
    return bool(result.rowcount == 1)
