"""Typed dependencies: the process-wide services built once by the app's lifespan."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from faststream.nats import NatsBroker
from sqlalchemy import Engine
from temporalio.client import Client

from sagas.door import Sagas
from settings import Settings


@dataclass(frozen=True)
class Services:
    """Everything a request may use; built once per process in ``api.app.lifespan``."""

    settings: Settings
    engine: Engine
    client: Client
    sagas: Sagas
    # The choreographed saga's broker connection (None without NATS_URL).
    broker: NatsBroker | None = None


async def get_services(request: Request) -> Services:
    """The process's services. ``async`` only so FastAPI calls it on the event loop: a plain
    ``def`` dependency is run in its thread pool, a thread hop on every request for a lookup."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
