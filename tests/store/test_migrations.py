"""Schema migrations (Alembic, ``migrations/``) on SQLite and, with DATABASE_URL, PostgreSQL.

Every test gets a database of its own: a new SQLite file, or a throwaway PostgreSQL database
(``migrations_test_<random>``, dropped afterwards), so the shared ``test`` database of the
other tests is never touched.
"""

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Engine, Integer, MetaData, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, select

from store.db import (
    MIGRATIONS_DIR,
    alembic_config,
    lock_for_migrations,
    make_engine,
    migrate,
    migration_config,
    normalise_url,
    session,
)
from store.models import DealerRow, new_dealer

pytestmark = pytest.mark.db

ROOT = Path(__file__).resolve().parents[2]
SERVICE_TABLES = {
    "orders",
    "order_items",
    "payments",
    "refunds",
    "dealers",
    "deliveries",
    "idempotency_keys",
    "payment_decisions",
    "outbox",
    "inbox",
    "dead_letters",
}
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def dialects() -> list[str]:
    url = os.environ.get("DATABASE_URL", "")
    return ["sqlite", "postgresql"] if url.startswith(("postgresql", "postgres:")) else ["sqlite"]


@pytest.fixture(params=dialects())
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'blank.db'}"
        return
    url = make_url(normalise_url(os.environ["DATABASE_URL"]))
    name = f"migrations_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def blank(blank_url: str) -> Iterator[Engine]:
    engine = make_engine(blank_url)
    yield engine
    engine.dispose()


def schema_diff(engine: Engine, metadata: MetaData = SQLModel.metadata) -> list[Any]:
    """What autogenerate would put in a new revision: empty when the models match the schema."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, metadata))


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_upgrade_head_on_an_empty_database_yields_exactly_the_models_schema(blank):
    migrate(blank)

    assert schema_diff(blank) == []  # a model change without a migration fails here
    assert revision_of(blank) == HEAD
    assert tables(blank) == SERVICE_TABLES | {"alembic_version"}
    # What autogenerate does not compare: the CHECK constraint, and that it is enforced.
    checks = inspect(blank).get_check_constraints("dealers")
    assert [c["name"] for c in checks] == ["dealer_capacity"]
    with session(blank) as db:
        db.add(new_dealer("Over", "+0-1", "Tehran", "Tehran", capacity=1))
        db.commit()
        with pytest.raises(IntegrityError):
            db.execute(text("UPDATE dealers SET active_deliveries = 2"))


def test_the_schema_check_sees_a_model_change_without_a_migration(blank):
    migrate(blank)
    changed = MetaData()
    for table in SQLModel.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["dealers"].append_column(Column("rating", Integer, nullable=True))

    diff = schema_diff(blank, changed)

    assert [(d[0], d[3].name) for d in diff] == [("add_column", "rating")]


def test_downgrade_to_base_then_upgrade_head(blank):
    migrate(blank)

    with migration_config(blank) as config:
        command.downgrade(config, "base")
    assert tables(blank) == {"alembic_version"}
    assert revision_of(blank) is None

    migrate(blank)
    assert revision_of(blank) == HEAD
    assert schema_diff(blank) == []


def test_migrating_twice_is_a_no_op(blank):
    migrate(blank)
    with session(blank) as db:
        db.add(new_dealer("Ana", "+0-1", "Tehran", "Tehran", capacity=2))
        db.commit()

    migrate(blank)

    assert revision_of(blank) == HEAD
    assert schema_diff(blank) == []
    with session(blank) as db:
        assert [d.phone for d in db.exec(select(DealerRow)).all()] == ["+0-1"]


def test_migrate_accepts_a_url(blank_url):
    migrate(blank_url)

    engine = make_engine(blank_url)
    try:
        assert revision_of(engine) == HEAD
    finally:
        engine.dispose()


def test_two_threads_migrating_a_fresh_database_at_once(blank):
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            migrate(blank)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    assert revision_of(blank) == HEAD
    assert schema_diff(blank) == []


MIGRATE_WHEN_TOLD = """
import sys, time
from pathlib import Path
from store.db import migrate
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.005)
migrate(url)
"""


def test_processes_migrating_a_fresh_database_at_once(blank_url, blank, tmp_path):
    """The API and the worker start together on an empty database: neither fails."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_WHEN_TOLD, blank_url, str(r), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in ready
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()  # all imported: they migrate at the same moment
        outputs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()

    assert [p.returncode for p in procs] == [0, 0], outputs
    assert revision_of(blank) == HEAD
    assert schema_diff(blank) == []


def test_a_migration_waits_for_one_in_progress(blank):
    """While another connection holds the migration lock, migrate waits, then finishes."""
    finished = threading.Event()

    def run() -> None:
        migrate(blank)
        finished.set()

    thread = threading.Thread(target=run)
    with blank.begin() as holder:
        lock_for_migrations(holder)  # PostgreSQL; on SQLite BEGIN IMMEDIATE holds the lock
        thread.start()
        assert not finished.wait(1.0)
    thread.join(60)

    assert finished.is_set()
    assert revision_of(blank) == HEAD


def test_the_alembic_command_line_migrates_the_database_given_with_x_url(blank_url, blank):
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={blank_url}", "upgrade", "head"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert revision_of(blank) == HEAD
    assert schema_diff(blank) == []


def test_the_migrations_folder_is_found_by_absolute_path():
    assert MIGRATIONS_DIR.is_absolute()
    assert (MIGRATIONS_DIR / "env.py").is_file()
