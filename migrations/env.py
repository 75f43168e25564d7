"""Alembic environment of the service database.

The connection comes, in order of preference, from
``config.attributes["connection"]`` (``store.db.migrate`` passes the application's engine's
connection, inside the transaction that holds the migration lock), from ``config.attributes
["url"]`` or ``alembic -x url=...``, or from ``settings.Settings().database_url``.
"""

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

from store import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from store.db import lock_for_migrations, make_engine, normalise_url

config = context.config
target_metadata = SQLModel.metadata


def database_url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        from settings import Settings

        url = Settings().database_url_value
    return normalise_url(str(url))


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render SQLModel's column types as the plain SQLAlchemy types they store.

    ``AutoString(n)`` is ``VARCHAR(n)`` and ``UTCDateTime`` a ``DateTime(timezone=True)`` in the
    database, so revisions need not import sqlmodel; any other sqlmodel type is rendered as is,
    with its import.
    """
    if type_ != "type":
        return False
    if isinstance(obj, AutoString):
        length = getattr(obj.impl, "length", None)
        return f"sa.String(length={length!r})" if length else "sa.String()"
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type(obj).__module__.startswith("sqlmodel"):
        autogen_context.imports.add("import sqlmodel")
    return False


def configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=render_item,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """``alembic upgrade head --sql``: print the SQL instead of running it."""
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        # The caller owns the connection and its transaction (and has taken the lock).
        configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    engine = make_engine(database_url())
    try:
        with engine.connect() as connection:
            configure(connection)
            with context.begin_transaction():
                # Another process migrating the same database waits here until it is done.
                lock_for_migrations(connection)
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
