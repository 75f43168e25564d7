"""Liveness and readiness."""

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError

from api.deps import ServicesDep
from choreography.runtime import is_connected
from sagas import views
from sagas.temporal import check_namespace, temporal_misconfiguration

router = APIRouter(tags=["health"])
CHECK_TIMEOUT = 3.0


@router.get("/healthz", operation_id="healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    responses={503: {"description": "a dependency is down or misconfigured (which, and why)"}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when the database answers a read of the orders table (schema in place, file
    readable), Temporal knows this API's namespace and lets it in, and (with NATS_URL) the
    broker is connected."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await run_in_threadpool(views.ping, services.engine)
        checks["database"] = "ok"
    except Exception as err:  # any failure means not ready; say which
        checks["database"] = f"error: {type(err).__name__}"
    if services.client is not None:  # the orchestrated saga's Temporal
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await check_namespace(services.client)
            checks["temporal"] = "ok"
        except RPCError as err:
            checks["temporal"] = f"error: {temporal_misconfiguration(err) or err.message}"
        except Exception as err:
            checks["temporal"] = f"error: {type(err).__name__}"
    if services.broker is not None:  # the choreographed saga's broker
        checks["broker"] = "ok" if is_connected(services.broker) else "error: NATS not connected"
    ready = all(v == "ok" for v in checks.values())
    headers = {} if ready else {"Retry-After": "5"}
    return JSONResponse(
        {"ready": ready, **checks}, status_code=200 if ready else 503, headers=headers
    )
