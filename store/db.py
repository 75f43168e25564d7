"""Engine factory and schema migrations (Alembic). Build one engine per process."""

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel, create_engine

from store import models  # noqa: F401  (registers the tables on SQLModel.metadata)

# Execution option of read_session's connections (see make_engine's "begin" listener).
READ_ONLY = "order_saga_read_only"
# Execution option of a budgeted session's connections: the transaction's budget in ms.
BUDGET_MS = "order_saga_budget_ms"
# How long a transaction without a budget waits for SQLite's write lock.
SQLITE_BUSY_TIMEOUT_MS = 30_000


class TransactionBudgetExceededError(RuntimeError):
    """A budgeted transaction ran past its budget: refused at commit (retryable)."""


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def make_engine(
    url: str, *, pool_size: int = 10, pool_timeout: float = 10.0, echo: bool = False
) -> Engine:
    """The engine for ``url``: ``pool_size`` connections (twice that in a burst); waiting
    longer than ``pool_timeout`` seconds for one raises ``sqlalchemy.exc.TimeoutError``.

    SQLite gets WAL, foreign keys and ``BEGIN IMMEDIATE`` (the write lock up front, so
    read-then-write transactions never deadlock on a lock upgrade).
    """
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(
            url,
            echo=echo,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=pool_timeout,
        )

        @event.listens_for(engine, "begin")
        def _on_begin_postgresql(connection: Any) -> None:
            # The database itself cuts off what would outlast the budget.
            budget = connection.get_execution_options().get(BUDGET_MS)
            if budget:
                for setting in (
                    "statement_timeout",
                    "lock_timeout",
                    "idle_in_transaction_session_timeout",
                ):
                    connection.exec_driver_sql(f"SET LOCAL {setting} = {int(budget)}")

        return engine

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        connect_args={"check_same_thread": False, "timeout": 30},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    # This process's writers take turns for the write lock, so an API transaction competes
    # with one of the worker's, not with all of its threads.
    next_writer = threading.Lock()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A read-only session needs no write lock: a deferred BEGIN reads a WAL snapshot.
        options = connection.get_execution_options()
        # Set on every BEGIN: a pooled connection serves sessions of other budgets.
        busy_ms = int(options.get(BUDGET_MS) or SQLITE_BUSY_TIMEOUT_MS)
        if options.get(READ_ONLY):
            # On the driver's connection, as _begin_immediate does: SQLAlchemy's execution
            # machinery would cost more than the statements.
            dbapi_connection = connection.connection.dbapi_connection
            try:
                dbapi_connection.execute(f"PRAGMA busy_timeout={busy_ms}")
                dbapi_connection.execute("BEGIN")
            except sqlite3.Error as err:
                raise DBAPIError.instance("BEGIN", None, err, sqlite3.Error) from err
        else:
            _begin_immediate(connection.connection.dbapi_connection, busy_ms, next_writer)

    return engine


# The pauses between two tries for SQLite's write lock: short, as write transactions are.
LOCK_POLL_FIRST = 0.0002
LOCK_POLL_MOST = 0.002


def _begin_immediate(dbapi_connection: Any, busy_ms: int, turn: threading.Lock) -> None:
    """``BEGIN IMMEDIATE`` once it is this thread's ``turn``, polling for the write lock for
    up to ``busy_ms`` (SQLite's own busy handler sleeps long after the lock is free). Raises
    ``sqlalchemy.exc.OperationalError`` ("database is locked") when the time runs out.
    """
    deadline = time.monotonic() + busy_ms / 1000
    pause = LOCK_POLL_FIRST
    try:
        dbapi_connection.execute("PRAGMA busy_timeout=0")
        if not turn.acquire(timeout=busy_ms / 1000):
            raise sqlite3.OperationalError("database is locked")
        try:
            while True:
                try:
                    dbapi_connection.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as err:
                    left = deadline - time.monotonic()
                    if "locked" not in str(err) or left <= 0:
                        raise
                time.sleep(min(pause, left))
                pause = min(pause * 2, LOCK_POLL_MOST)
        finally:
            turn.release()
    except sqlite3.Error as err:
        raise DBAPIError.instance("BEGIN IMMEDIATE", None, err, sqlite3.Error) from err
    finally:
        dbapi_connection.execute(f"PRAGMA busy_timeout={busy_ms}")


def _enable_wal(cursor: Any, *, patience: float = 30.0) -> None:
    """Switch the database file to WAL, retrying for up to ``patience`` seconds: SQLite says
    "database is locked" at once, without its busy handler, while another process opens it."""
    deadline = time.monotonic() + patience
    delay = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Key of the PostgreSQL advisory lock that serialises migrations ("order-saga" in hex).
MIGRATION_LOCK_KEY = 0x6F726465722D7361
# Alembic's ``context`` and ``op`` are process-wide proxies: one migration at a time per process.
_migrating_here = threading.Lock()


def alembic_config(*, connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for ``migrations/``, run on ``connection`` (in the caller's
    transaction), else on ``url``, else on ``settings.Settings().database_url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    if url is not None:
        config.attributes["url"] = url
    return config


def lock_for_migrations(connection: Connection) -> None:
    """Wait until no other process migrates this database; held until the transaction ends
    (on SQLite, ``BEGIN IMMEDIATE`` already holds the write lock)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


@contextmanager
def migration_config(engine: Engine) -> Iterator[Config]:
    """An Alembic config bound to one transaction of ``engine`` that holds the migration lock,
    committed when the block ends (a failed migration leaves nothing behind)."""
    with _migrating_here, engine.begin() as connection:
        lock_for_migrations(connection)
        yield alembic_config(connection=connection)


def migrate(target: Engine | str, revision: str = "head") -> None:
    """``alembic upgrade head`` on ``target`` (an engine, or a URL); a no-op when up to date,
    and safe from several processes at once (the others wait)."""
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with migration_config(engine) as config:
            command.upgrade(config, revision)
    finally:
        if engine is not target:
            engine.dispose()


def drop_schema(engine: Engine) -> None:
    """Drop every service table and Alembic's version table (a database to start afresh)."""
    with _migrating_here, engine.begin() as connection:
        lock_for_migrations(connection)
        SQLModel.metadata.drop_all(connection)
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))


def session(engine: Engine, *, budget: timedelta | None = None) -> Session:
    """A new session whose objects stay readable after commit. With ``budget``, each
    transaction must end within it: the database cuts off longer waits, and a later commit
    raises :class:`TransactionBudgetExceededError`.
    """
    if budget is None:
        return Session(engine, expire_on_commit=False)
    budget_ms = max(1, int(budget.total_seconds() * 1000))
    return _BudgetedSession(
        _with_option(engine, BUDGET_MS, budget_ms),
        time.monotonic() + budget.total_seconds(),
        budget,
    )


class _BudgetedSession(Session):
    """A session whose transactions must commit before ``deadline`` (``time.monotonic()``)."""

    def __init__(self, engine: Engine, deadline: float, budget: timedelta) -> None:
        super().__init__(engine, expire_on_commit=False)
        self.deadline = deadline
        self.budget = budget


# One listener for the class: a listener per session would build each its own event dispatch.
@event.listens_for(_BudgetedSession, "before_commit")
def _refuse_late_commit(db: _BudgetedSession) -> None:
    if time.monotonic() > db.deadline:
        raise TransactionBudgetExceededError(
            f"the transaction outlasted its budget of {db.budget}; rolled back"
        )


# An engine's optioned copies live on the engine: a copy holds its engine, so a cache keyed
# by engines elsewhere would keep every engine alive.
_OPTIONED = "_order_saga_optioned"
_optioned_lock = threading.Lock()


def _with_option(engine: Engine, key: str, value: Any) -> Engine:
    """``engine.execution_options(key=value)`` (the ``begin`` events read it), built once per
    engine and option rather than once per session."""
    with _optioned_lock:
        copies: dict[tuple[str, Any], Engine] = engine.__dict__.setdefault(_OPTIONED, {})
        optioned = copies.get((key, value))
        if optioned is None:
            optioned = copies[(key, value)] = engine.execution_options(**{key: value})
        return optioned


@contextmanager
def transaction(engine: Engine, *, budget: timedelta | None = None) -> Iterator[Session]:
    """A unit of work: a :func:`session` whose transaction commits when the block ends, and
    rolls back if it raises."""
    with session(engine, budget=budget) as db:
        yield db
        db.commit()


def read_session(engine: Engine) -> Session:
    """A session for reads only. On SQLite it does not take the write lock that ``session``'s
    transactions take up front, so API reads and polls never queue behind the activities."""
    return Session(_with_option(engine, READ_ONLY, True), expire_on_commit=False)
