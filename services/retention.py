"""Deletion of the rows kept only for a while after their order ended (business records stay):

- the choreographed saga's event log: the outbox (published rows), the inboxes and the dead
  letters already replayed, ``event_log`` after the order ended (an inbox row guards only
  while its event can still be redelivered). Unpublished rows and pending dead letters stay;
- Idempotency-Keys, ``idempotency_keys`` after the order ended (or the key's first use, if the
  order was never written). A later replay still finds its order: its id derives from the key.
"""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Delete, delete, or_, select, tuple_
from sqlmodel import Session, col

from domain.status import OrderStatus
from store.models import DeadLetterRow, IdempotencyKeyRow, InboxRow, OrderRow, OutboxRow

ENDED = (OrderStatus.DELIVERED, OrderStatus.CANCELLED)


def _kept_orders(cutoff: datetime) -> Any:
    """The ids of orders whose rows are still kept: not ended, or ended after ``cutoff``."""
    return select(col(OrderRow.id)).where(
        or_(col(OrderRow.status).not_in(ENDED), col(OrderRow.updated_at) >= cutoff)
    )


def _batch(table: Any, key: list[Any], where: list[ColumnElement[bool]], batch: int) -> Delete:
    """``DELETE`` of at most ``batch`` rows of ``table`` matching ``where``, by ``key``."""
    chosen = select(*key).where(*where).limit(batch)
    target = key[0] if len(key) == 1 else tuple_(*key)
    return delete(table).where(target.in_(chosen))


def delete_expired(
    db: Session,
    now: datetime,
    *,
    event_log: timedelta | None,
    idempotency_keys: timedelta | None,
    batch: int = 1000,
) -> dict[str, int]:
    """Delete up to ``batch`` expired rows of each table (None: kept for good). Returns how
    many of each it deleted. Does not commit."""
    deleted: dict[str, int] = {}
    if event_log is not None:
        cutoff = now - event_log
        kept = _kept_orders(cutoff)
        statements = {
            "outbox": _batch(
                OutboxRow,
                [col(OutboxRow.id)],
                [
                    col(OutboxRow.published_at).is_not(None),
                    col(OutboxRow.created_at) < cutoff,
                    col(OutboxRow.order_id).not_in(kept),
                ],
                batch,
            ),
            "inbox": _batch(
                InboxRow,
                [col(InboxRow.consumer), col(InboxRow.event_id)],
                [col(InboxRow.consumed_at) < cutoff, col(InboxRow.order_id).not_in(kept)],
                batch,
            ),
            "dead_letters": _batch(
                DeadLetterRow,
                [col(DeadLetterRow.id)],
                [col(DeadLetterRow.replayed_at) < cutoff, col(DeadLetterRow.order_id).not_in(kept)],
                batch,
            ),
        }
        for table, statement in statements.items():
            deleted[table] = _count(db.exec(statement))
    if idempotency_keys is not None:
        cutoff = now - idempotency_keys
        statement = _batch(
            IdempotencyKeyRow,
            [col(IdempotencyKeyRow.customer_id), col(IdempotencyKeyRow.key)],
            [
                col(IdempotencyKeyRow.created_at) < cutoff,
                col(IdempotencyKeyRow.order_id).not_in(_kept_orders(cutoff)),
            ],
            batch,
        )
        deleted["idempotency_keys"] = _count(db.exec(statement))
    return deleted


def _count(result: Any) -> int:
    return int(result.rowcount or 0)
