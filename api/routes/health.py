"""Liveness and readiness."""

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import queries
from api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is down"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when both the database and Temporal answer."""
    checks: dict[str, str] = {}
    try:
        await run_in_threadpool(queries.ping, services.engine)
        checks["database"] = "ok"
    except Exception as err:  # any failure means not ready; say which
        checks["database"] = f"error: {type(err).__name__}"
    try:
        async with asyncio.timeout(3):
            await services.client.service_client.check_health()
        checks["temporal"] = "ok"
    except Exception as err:
        checks["temporal"] = f"error: {type(err).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)
