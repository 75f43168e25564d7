"""Engine factory and schema migrations (Alembic). Build one engine per process."""

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel, create_engine

from store import models  # noqa: F401  (registers the tables on SQLModel.metadata)

# Execution option of read_session's connections (see make_engine's "begin" listener).
READ_ONLY = "order_saga_read_only"


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create the engine for ``url``.

    SQLite gets WAL (readers never block the writer), a busy timeout, foreign keys, and
    ``BEGIN IMMEDIATE`` transactions: a transaction takes the write lock up front, so two
    read-then-write transactions never deadlock on a lock upgrade, and every guarded
    read-modify-write (dealer capacity, state transitions) is serialised.
    """
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A read-only session (read_session) needs no write lock: a deferred BEGIN reads a WAL
        # snapshot and neither waits for nor holds up the writers.
        read_only = connection.get_execution_options().get(READ_ONLY)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _enable_wal(cursor: Any, *, patience: float = 30.0) -> None:
    """Switch the database file to WAL (persistent: later connections find it already set).

    Switching a fresh file needs an exclusive lock, and SQLite answers "database is locked"
    straight away, without its busy handler, when another process opens the file at the same
    moment (the API and the worker starting together). Retry until it is set or ``patience``
    seconds have passed.
    """
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
    """An Alembic config for ``migrations/`` (found by absolute path, whatever the cwd).

    With ``connection`` the migrations run on it, inside the caller's transaction; with ``url``
    on a new engine; with neither on ``settings.Settings().database_url``.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    if url is not None:
        config.attributes["url"] = url
    return config


def lock_for_migrations(connection: Connection) -> None:
    """Wait until no other process migrates this database; held until the transaction ends.

    PostgreSQL: a transaction-level advisory lock. SQLite: nothing to do, the engine's
    ``BEGIN IMMEDIATE`` has already taken the database's write lock.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


@contextmanager
def migration_config(engine: Engine) -> Iterator[Config]:
    """An Alembic config bound to one transaction of ``engine`` that holds the migration lock.

    Run any ``alembic.command`` with it; the transaction commits when the block ends (DDL is
    transactional on PostgreSQL and SQLite, so a failed migration leaves nothing behind).
    """
    with _migrating_here, engine.begin() as connection:
        lock_for_migrations(connection)
        yield alembic_config(connection=connection)


def migrate(target: Engine | str, revision: str = "head") -> None:
    """``alembic upgrade head`` on ``target`` (an engine, or a URL); a no-op when up to date.

    Safe to run from several processes at once (the API and the worker both call it at
    startup): the first migrates, the others wait for it and then find nothing to do.
    """
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


def session(engine: Engine) -> Session:
    """A new session; objects stay readable after commit (payloads are built from them)."""
    return Session(engine, expire_on_commit=False)


def read_session(engine: Engine) -> Session:
    """A session for reads only. On SQLite it does not take the write lock that ``session``'s
    transactions take up front, so API reads and polls never queue behind the activities."""
    return Session(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)
