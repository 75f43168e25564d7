"""No zombie writes: an activity attempt's transaction ends within its budget, or not at all.

Temporal gives up on an attempt after its start-to-close timeout and may then compensate
(the saga was cancelled meanwhile). If the attempt's transaction could still commit after
that, its write would land after its own undo: a dealer taken after ``cancel_delivery`` said
"nothing to undo". So each attempt's transaction has a budget far shorter than the timeout:
the database cuts off a lock wait or a statement that outlasts it, and a commit later than it
is refused.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.exc import InternalError, OperationalError
from sqlmodel import col

import activities._defn
from activities.orders import OrderActivities
from domain.payloads import OrderRef
from domain.timeouts import STEP_START_TO_CLOSE, STEP_TRANSACTION_BUDGET
from store.db import TransactionBudgetExceededError, session
from store.models import OrderRow
from tests.activities.support import get_row, place_order

pytestmark = pytest.mark.db

BUDGET = timedelta(milliseconds=300)


@contextmanager
def lock_held_on(engine: Engine, order_id: str) -> Iterator[None]:
    """Another transaction holds the order's row (PostgreSQL) or the write lock (SQLite)
    until the block ends."""
    connection = engine.connect()
    transaction = connection.begin()  # SQLite: BEGIN IMMEDIATE takes the write lock
    if engine.dialect.name == "postgresql":
        connection.execute(text("SELECT 1 FROM orders WHERE id = :id FOR UPDATE"), {"id": order_id})
    try:
        yield
    finally:
        transaction.rollback()
        connection.close()


def in_thread(fn, within: float = 20.0):
    """Run ``fn`` in a thread; its result or exception, or fail if it hangs past ``within``."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), "the transaction waited instead of being cut off"
    return outcome


def test_the_budget_is_far_inside_the_steps_start_to_close_timeout():
    assert STEP_TRANSACTION_BUDGET * 2 < STEP_START_TO_CLOSE


def test_a_budgeted_transaction_blocked_by_a_lock_gives_up_within_its_budget(engine):
    order_id = place_order(engine)

    def cancel() -> None:
        with session(engine, budget=BUDGET) as db:
            db.exec(update(OrderRow).where(col(OrderRow.id) == order_id).values(status="CANCELLED"))
            db.commit()

    # The lock is released only after the budgeted transaction has returned: had it waited
    # for the lock, it would still be waiting (and in_thread fails).
    with lock_held_on(engine, order_id):
        outcome = in_thread(cancel)

    assert isinstance(outcome.get("error"), OperationalError), outcome
    assert get_row(engine, OrderRow, order_id).status == "PENDING"


def test_a_commit_after_the_budget_is_refused_and_nothing_is_written(engine):
    order_id = place_order(engine)

    def stall_then_commit() -> None:
        with session(engine, budget=BUDGET) as db:
            db.exec(update(OrderRow).where(col(OrderRow.id) == order_id).values(status="CANCELLED"))
            time.sleep(BUDGET.total_seconds() * 2)  # the attempt stalled (GC pause, slow disk)
            db.commit()

    # Refused by the session (TransactionBudgetExceededError), or already by PostgreSQL,
    # which ends a session idle in its transaction past the budget (InternalError).
    with pytest.raises((TransactionBudgetExceededError, InternalError)):
        stall_then_commit()

    assert get_row(engine, OrderRow, order_id).status == "PENDING"


def test_an_activity_attempt_blocked_past_its_budget_fails_and_writes_nothing(engine, monkeypatch):
    # The real compensation, with the activities' budget shortened for the test.
    monkeypatch.setattr(activities._defn, "STEP_TRANSACTION_BUDGET", BUDGET)
    order_id = place_order(engine)

    with lock_held_on(engine, order_id):
        outcome = in_thread(
            lambda: OrderActivities(engine).cancel_order(OrderRef(order_id=order_id))
        )

    assert isinstance(outcome.get("error"), OperationalError), outcome  # retryable: retried
    assert get_row(engine, OrderRow, order_id).status == "PENDING"
