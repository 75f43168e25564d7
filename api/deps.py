"""Typed dependencies: the process-wide services built once by the app's lifespan."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from temporalio.client import Client

from sagas.orchestration import OrchestratedSagas
from settings import Settings


@dataclass(frozen=True)
class Services:
    """Everything a request may use; built once per process in ``api.app.lifespan``."""

    settings: Settings
    engine: Engine
    client: Client
    sagas: OrchestratedSagas


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
