"""Typed dependencies: the process's parts, opened once by the app's lifespan."""

from typing import Annotated

from fastapi import Depends, Request

from bootstrap import Parts

# Everything a request may use (``bootstrap.Parts``).
Services = Parts


async def get_services(request: Request) -> Services:
    """The process's parts (``async`` so FastAPI does not hop to a thread for a lookup)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
