"""The real stack for end-to-end tests: Temporal dev server, worker, API over HTTP."""

import asyncio
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from settings import Settings
from store.db import make_engine
from tests.conftest import database_url, reset_schema, temporal_binary
from worker import build_workers
from workflows.order_process import ORDER_STATUS


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
        search_attributes=[ORDER_STATUS],
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
