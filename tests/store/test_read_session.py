"""Reads do not queue behind writers on SQLite: read_session takes no write lock; writers
wait for it in turn."""

import gc
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select, update

from store.db import make_engine, migrate, read_session, session
from store.models import DealerRow, new_dealer


@pytest.fixture
def one_dealer(tmp_path: Path) -> Iterator[tuple[Path, Engine]]:
    """A SQLite file with one dealer (Ana, capacity 2), and an engine on it."""
    path = tmp_path / "orders.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        migrate(engine)
        with session(engine) as db:
            db.add(new_dealer("Ana", "+1-1", "Tehran", "Tehran", 2))
            db.commit()
        yield path, engine
    finally:
        engine.dispose()


def test_a_read_session_reads_while_another_connection_holds_the_write_lock(one_dealer):
    path, engine = one_dealer
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA busy_timeout=0")
    try:
        writer.execute("BEGIN IMMEDIATE")  # what every session() transaction takes first
        writer.execute("UPDATE dealers SET capacity = 3")
        with read_session(engine) as db:
            dealers = db.exec(select(DealerRow)).all()
        # The committed snapshot, read without waiting for the writer.
        assert [(d.name, d.capacity) for d in dealers] == [("Ana", 2)]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_read_session_still_sees_what_sessions_committed(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'orders.db'}")
    try:
        migrate(engine)
        with read_session(engine) as db:
            assert db.exec(select(DealerRow)).all() == []
        with session(engine) as db:
            db.add(new_dealer("Ana", "+1-1", "Tehran", "Tehran", 2))
            db.commit()
        with read_session(engine) as db:
            assert [d.name for d in db.exec(select(DealerRow)).all()] == ["Ana"]
    finally:
        engine.dispose()


def test_writers_waiting_for_the_write_lock_take_it_in_turn_once_released(one_dealer):
    """store.db polls for SQLite's write lock instead of its busy handler, one thread of the
    process at a time: writers that find the lock taken wait, none writes before the holder
    releases it, then each commits in turn, none lost."""
    path, engine = one_dealer
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE dealers SET capacity = 3")
    seen_by_writers: list[int] = []

    def write() -> None:
        with session(engine) as db:  # waits here, in BEGIN IMMEDIATE
            seen_by_writers.append(db.exec(select(DealerRow)).one().capacity)
            db.exec(update(DealerRow).values(capacity=DealerRow.capacity + 1))
            db.commit()

    writers = [threading.Thread(target=write) for _ in range(3)]
    for writer in writers:
        writer.start()
    time.sleep(0.2)  # they try for the lock meanwhile
    assert all(writer.is_alive() for writer in writers)
    assert seen_by_writers == []
    holder.execute("COMMIT")
    holder.close()
    for writer in writers:
        writer.join(10)
    assert not any(writer.is_alive() for writer in writers)
    # Each read inside its own transaction, after the holder's commit and the writer before
    # it: one after the other.
    assert sorted(seen_by_writers) == [3, 4, 5]
    with read_session(engine) as db:
        assert db.exec(select(DealerRow)).one().capacity == 6


def test_an_engine_is_freed_once_dropped_after_budgeted_and_read_sessions(tmp_path):
    # session() and read_session() keep an engine's option-carrying copies for reuse; they
    # must not keep the engine itself (with its pool and connections) alive once dropped.
    engine = make_engine(f"sqlite:///{tmp_path / 'orders.db'}")
    migrate(engine)
    with session(engine, budget=timedelta(seconds=1)) as db:
        db.exec(select(DealerRow)).all()
        db.commit()
    with read_session(engine) as db:
        db.exec(select(DealerRow)).all()
    engine.dispose()
    freed = weakref.ref(engine)
    del engine, db

    gc.collect()

    assert freed() is None
