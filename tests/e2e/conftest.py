"""The real stack for end-to-end tests: Temporal dev server, worker, API over HTTP."""

import asyncio
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

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
from settings import Settings
from store.db import make_engine
from tests.conftest import database_url, reset_schema, temporal_binary
from worker import build_workers
from workflows.order_process import SEARCH_ATTRIBUTES


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
    )
    settings = Settings(
        database_url=database_url(tmp_path_factory.mktemp("e2e")),
        temporal_address=env.client.service_client.config.target_host,
        temporal_ui_url="http://localhost:8233",
        # Short windows so the no-dealer path ends in seconds on a real server.
        dealer_assignment_window_seconds=1.5,
        dealer_retry_initial_seconds=0.5,
        order_create_wait_seconds=10,
    )
    engine = make_engine(settings.database_url)
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
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
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
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await serving


API_KEY = "e2e-operator-key"
OLD_API_KEY = "e2e-operator-key-being-rotated-out"
CUSTOMER_TOKEN_SECRET = "e2e-customer-token-secret-0123456789"


@dataclass
class SecuredApi:
    """A second API with API keys and customer tokens on, over the stack's Temporal and DB."""

    http: httpx.AsyncClient
    settings: Settings

    @staticmethod
    def key(value: str = API_KEY) -> dict[str, str]:
        return {API_KEY_HEADER: value}

    @staticmethod
    def customer(customer_id: str, *, key: str | None = API_KEY) -> dict[str, str]:
        """Headers of a customer's call: the application's API key and the customer's token."""
        token = issue_customer_token(CUSTOMER_TOKEN_SECRET, customer_id)
        headers = {"Authorization": f"Bearer {token}"}
        return {**headers, API_KEY_HEADER: key} if key else headers


@pytest.fixture(scope="session")
async def secured(stack: Stack) -> AsyncIterator[SecuredApi]:
    settings = stack.settings.model_copy(
        update={
            "api_keys": [SecretStr(API_KEY), SecretStr(OLD_API_KEY)],
            "customer_token_secret": SecretStr(CUSTOMER_TOKEN_SECRET),
        }
    )
    async with serve(create_app(settings)) as http:
        yield SecuredApi(http=http, settings=settings)
