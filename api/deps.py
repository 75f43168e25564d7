"""Typed dependencies: the process's parts, opened once by the app's lifespan."""

from typing import Annotated

from fastapi import Depends, Request

from bootstrap import Parts

# Everything a request may use (``bootstrap.Parts``): settings, engine, the Temporal client,
# the broker and the door.
Services = Parts


async def get_services(request: Request) -> Services:
    """The process's parts. ``async`` only so FastAPI calls it on the event loop: a plain
    ``def`` dependency is run in its thread pool, a thread hop on every request for a lookup."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
