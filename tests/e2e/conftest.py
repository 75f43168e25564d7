"""The real stack for end-to-end tests: Temporal dev server, worker, API over HTTP."""

import asyncio
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.auth import API_KEY_HEADER, issue_customer_token
from domain.names import SEARCH_ATTRIBUTES
from settings import Settings
from store.db import make_engine
from tests.conftest import database_url, reset_schema, temporal_binary
from worker import build_workers

# uvicorn closes an idle keep-alive connection after 5 s, and httpx keeps one for 5 s too: a
# request sent on a connection at the moment the server closes it fails with ReadError. The
# client lets its idle connections go first.
LIMITS = httpx.Limits(keepalive_expiry=2)


@dataclass
class Stack:
    """Handles on every running part."""

    http: httpx.AsyncClient
    client: Client
    engine: Engine
    settings: Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=temporal_binary("temporal"),
        search_attributes=list(SEARCH_ATTRIBUTES),
        # A closed workflow is deleted once the queues' ack levels pass its close, which they
        # report every 30 s by default: every 1 s here, so a deletion (what retention does)
        # takes seconds in tests/e2e/test_idempotency.py.
        dev_server_extra_args=[
            "--dynamic-config-value",
            'history.visibilityProcessorUpdateAckInterval="1s"',
            "--dynamic-config-value",
            'history.transferProcessorUpdateAckInterval="1s"',
        ],
    )
    settings = Settings(
        database_url=database_url(tmp_path_factory.mktemp("e2e")),
        temporal_address=env.client.service_client.config.target_host,
        temporal_ui_url="http://localhost:8233",
        # Short windows so the no-dealer path ends in seconds on a real server.
        dealer_assignment_window_seconds=1.5,
        dealer_retry_initial_seconds=0.5,
        order_create_wait_seconds=10,
        # The open API of most tests; tests/e2e/test_auth.py runs a secured one beside it.
        auth_mode="dev",
    )
    engine = make_engine(settings.database_url_value)
    reset_schema(engine)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    async with AsyncExitStack() as stack:
        stack.push_async_callback(env.shutdown)
        executor = stack.enter_context(ThreadPoolExecutor(16))
        for worker in build_workers(env.client, engine, executor):
            await stack.enter_async_context(worker)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.05)
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=LIMITS)
        )
        yield Stack(http=http, client=env.client, engine=engine, settings=settings)
        server.should_exit = True
        await serving
    engine.dispose()


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app`` under uvicorn on a free port; an HTTP client for it, with no credentials."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=LIMITS
        ) as http:
            yield http
    finally:
        server.should_exit = True
        await serving


OPERATOR_KEY = "e2e-operator-key-0123456789"
OLD_OPERATOR_KEY = "e2e-operator-key-being-rotated-out"
CUSTOMER_TOKEN_SECRET = "e2e-customer-token-secret-0123456789abcdef"
OLD_CUSTOMER_TOKEN_SECRET = "e2e-customer-token-secret-being-rotated-out"
TOKEN_TTL = timedelta(minutes=10)


@dataclass
class SecuredApi:
    """A second API with auth required (operator keys and customer tokens), over the stack's
    Temporal and database."""

    http: httpx.AsyncClient
    settings: Settings

    @staticmethod
    def operator(value: str = OPERATOR_KEY) -> dict[str, str]:
        """Headers of an operator's call."""
        return {API_KEY_HEADER: value}

    @staticmethod
    def customer(
        customer_id: str,
        *,
        secret: str = CUSTOMER_TOKEN_SECRET,
        ttl: timedelta = TOKEN_TTL,
        now: datetime | None = None,
    ) -> dict[str, str]:
        """Headers of a customer's own call: their bearer token."""
        token = issue_customer_token(secret, customer_id, ttl, now=now)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
async def secured(stack: Stack) -> AsyncIterator[SecuredApi]:
    settings = stack.settings.model_copy(
        update={
            "auth_mode": "required",
            "operator_api_keys": [SecretStr(OPERATOR_KEY), SecretStr(OLD_OPERATOR_KEY)],
            "customer_token_secrets": [
                SecretStr(CUSTOMER_TOKEN_SECRET),
                SecretStr(OLD_CUSTOMER_TOKEN_SECRET),
            ],
        }
    )
    async with serve(create_app(settings)) as http:
        yield SecuredApi(http=http, settings=settings)
